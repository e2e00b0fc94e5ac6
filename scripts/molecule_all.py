#!/usr/bin/env python3
"""Run every Molecule scenario (molecule test -s NAME) and print one summary line.

Scenarios run in lanes side by side (AIMA_MOLECULE_LANES, default 2; 1 runs them one after the
other): each instance is a container of its own with its own name, and most of a scenario's time
is spent waiting on health checks, jobs and restarts, not on the CPU. The longest scenarios start
first, so that the lanes end close together. Each scenario's output goes to
.cache/molecule-logs/NAME.log and is printed whole when it ends, so that the log reads as if they
ran one by one. Image archives the scenarios load into their nested engine are written to
.cache/images first. Pass scenario names to run only those.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_DIR = REPO_ROOT / ".cache" / "molecule-logs"
# Images the stack scenarios load from archives (names as scripts/testbed/build.py knows them).
STACK_IMAGES = ("postgres", "redis", "caddy", "traefik", "backend", "worker")
# Seconds each scenario took in CI, run alone: the order in which they start (longest first).
# A scenario not listed counts as 300 s.
EXPECTED_S = {"faults": 690, "traefik": 650, "gpu_auto": 420, "backup": 310, "stack": 270,
              "default": 160, "nvidia": 130}


# Colour codes, and the frame Molecule draws around a step's output.
COLOUR = re.compile(r"\x1b\[[0-9;]*m")
FRAME = re.compile(r"^\s*[\u2502\u2514\u250c\u251c]\s?")
# Lines that say why a scenario failed: pytest's assertions and summary, Ansible's failed tasks.
CAUSE = re.compile(
    r"^(E\s|FAILED(?! - RETRYING)|ERROR|fatal:|failed:|CRITICAL|.*FAILED!|.*short test summary)"
)
EXCERPT_LINES = 60
# The container runtime could not start a process (runc's init died first): the testbed's
# engine failed, not the code under test. Seen now and then on this loaded 2-core machine; a
# scenario that failed on it runs once more (reported, with the first try's excerpt).
RUNTIME_FAILURE = re.compile(
    r"OCI runtime (?:exec|create|start) failed|unable to start container process"
)
# Lines that say nothing about the cause: profile_tasks' timings and task timestamps (inside a
# failed pytest assertion they fill the excerpt), wrapped or not.
CHATTER = re.compile(r"(-{3,}\s*[\d.]+s|^-+\s*[\d.]+s|\*{5,}|^\s*\d+:\d+:\d+\.\d+ \*+)\s*$")


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float


def scenarios(selected: list[str]) -> list[str]:
    found = {p.parent.name for p in (REPO_ROOT / "molecule").glob("*/molecule.yml")}
    ordered = sorted(found, key=lambda name: (-EXPECTED_S.get(name, 300), name))
    if selected:
        unknown = sorted(set(selected) - found)
        if unknown:
            raise SystemExit(f"molecule_all: unknown scenario(s) {unknown}; found {ordered}")
        return [name for name in ordered if name in selected]
    return ordered


def lanes() -> int:
    value = os.environ.get("AIMA_MOLECULE_LANES", "2")
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"molecule_all: AIMA_MOLECULE_LANES={value!r} must be a whole number >= 1")
    return int(value)


def start(name: str, molecule: Path) -> Running:
    log = LOG_DIR / f"{name}.log"
    print(f"=== started: molecule test -s {name} (output: {log.relative_to(REPO_ROOT)})",
          flush=True)
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([str(molecule), "test", "-s", name], cwd=REPO_ROOT,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Running(name, proc, log, time.monotonic())


def finish(run: Running, code: int) -> float:
    seconds = time.monotonic() - run.started
    print(f"=== molecule test -s {run.name}: output", flush=True)
    sys.stdout.buffer.write(run.log.read_bytes())
    verdict = "passed" if code == 0 else f"FAILED (rc={code})"
    print(f"=== molecule test -s {run.name}: {verdict} in {seconds:.0f} s", flush=True)
    return seconds


def failure_excerpt(log_text: str, limit: int = EXCERPT_LINES) -> list[str]:
    """The lines of a failed scenario's log that say why, with a few lines after each, in log
    order, at most `limit` (the last ones). CI shows only the end of its output: the cause
    must be printed there, not only inside the scenario's whole log further up."""
    lines = [FRAME.sub("", COLOUR.sub("", line)).rstrip() for line in log_text.splitlines()]
    lines = [line for line in lines if not CHATTER.search(line.removeprefix("E").strip())]
    # A failed run's output quoted in an assertion ends with profile_tasks' list of task names:
    # left out up to pytest's own next line ("E       ...").
    kept, in_recap = [], False
    for line in lines:
        if "TASKS RECAP" in line:
            in_recap = True
        elif in_recap and re.match(r"E {7}\S", line):
            in_recap = False
        if not in_recap:
            kept.append(line)
    lines = kept
    keep: set[int] = set()
    for index, line in enumerate(lines):
        if CAUSE.match(line.lstrip()):
            keep.update(range(index, min(index + 4, len(lines))))
    picked = [lines[i][:300] for i in sorted(keep) if lines[i].strip()]
    return picked[-limit:]


def runtime_failure(log_text: str) -> str | None:
    """The first line of a failed scenario's log where the container runtime failed, if any."""
    for line in log_text.splitlines():
        if RUNTIME_FAILURE.search(line):
            return FRAME.sub("", COLOUR.sub("", line)).strip()[:300]
    return None


def main(argv: list[str]) -> int:
    names = scenarios(argv)
    width = lanes()
    venv_bin = REPO_ROOT / ".venv" / "bin"
    # Archives for the scenarios that deploy the stack from images (no registry here).
    if any(name not in ("default", "nvidia") for name in names):
        subprocess.run(
            [str(venv_bin / "python"), "scripts/testbed/build.py", "save", ".cache/images",
             *STACK_IMAGES],
            cwd=REPO_ROOT,
            check=True,
        )
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    waiting = list(names)
    running: list[Running] = []
    results: dict[str, tuple[int, float]] = {}
    # Scenarios run a second time, with the first try's runtime failure and excerpt.
    retried: dict[str, tuple[str, list[str]]] = {}
    started = time.monotonic()
    try:
        while waiting or running:
            while waiting and len(running) < width:
                running.append(start(waiting.pop(0), venv_bin / "molecule"))
            time.sleep(1)
            for run in list(running):
                code = run.proc.poll()
                if code is not None:
                    running.remove(run)
                    seconds = finish(run, code)
                    # A failed scenario's log only: what it says decides whether it runs again.
                    log_text = run.log.read_text(errors="replace") if code != 0 else ""
                    cause = runtime_failure(log_text)
                    if cause and run.name not in retried:
                        retried[run.name] = (cause, failure_excerpt(log_text))
                        run.log.replace(run.log.with_suffix(".first-try.log"))
                        print(f"=== {run.name} failed on the container runtime ({cause}); "
                              "running it once more", flush=True)
                        waiting.insert(0, run.name)
                        continue
                    results[run.name] = (code, seconds)
    finally:
        for run in running:  # interrupted: stop the ones still running (molecule cleans up)
            run.proc.terminate()
    print(f"=== molecule scenarios ({width} lane(s), {time.monotonic() - started:.0f} s in all)")
    for name in names:
        code, seconds = results[name]
        verdict = "passed" if code == 0 else f"FAILED (rc={code})"
        if name in retried:
            verdict += ", 2nd try"
        print(f"  {name:<12} {verdict:<16} {seconds:6.0f} s")
    for name, (cause, excerpt) in retried.items():
        print(f"=== {name}: the first try failed on the container runtime: {cause}")
        print("\n".join(excerpt[-20:]))
    for name in names:
        if results[name][0] != 0:
            log = os.path.relpath(LOG_DIR / f"{name}.log", REPO_ROOT)
            print(f"=== why {name} failed (from {log}):")
            print("\n".join(failure_excerpt((LOG_DIR / f"{name}.log").read_text(errors="replace"))))
    failed = sum(1 for code, _ in results.values() if code != 0)
    print(f"molecule: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
