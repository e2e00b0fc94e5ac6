#!/usr/bin/env python3
"""Run every Molecule scenario (molecule test -s NAME) and print one summary line.

Scenarios run in a fixed order, cheapest first; `default` is provisioning only. Image
archives the scenarios load into their nested engine are written to .cache/images first.
Pass scenario names to run only those.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ORDER = ("default", "nvidia", "stack")
# Images the stack scenarios load from archives (names as scripts/testbed/build.py knows them).
STACK_IMAGES = ("postgres", "redis", "caddy", "traefik", "backend", "worker")


def scenarios(selected: list[str]) -> list[str]:
    found = {p.parent.name for p in (REPO_ROOT / "molecule").glob("*/molecule.yml")}
    ordered = [name for name in ORDER if name in found] + sorted(found - set(ORDER))
    if selected:
        unknown = sorted(set(selected) - found)
        if unknown:
            raise SystemExit(f"molecule_all: unknown scenario(s) {unknown}; found {ordered}")
        return [name for name in ordered if name in selected]
    return ordered


def main(argv: list[str]) -> int:
    names = scenarios(argv)
    venv_bin = REPO_ROOT / ".venv" / "bin"
    # Archives for the scenarios that deploy the stack from images (no registry here).
    if any(name not in ("default", "nvidia") for name in names):
        subprocess.run(
            [
                str(venv_bin / "python"),
                "scripts/testbed/build.py",
                "save",
                ".cache/images",
                *STACK_IMAGES,
            ],
            cwd=REPO_ROOT,
            check=True,
        )
    results: dict[str, tuple[int, float]] = {}
    for name in names:
        started = time.monotonic()
        print(f"=== molecule test -s {name}", flush=True)
        proc = subprocess.run([str(venv_bin / "molecule"), "test", "-s", name], cwd=REPO_ROOT)
        results[name] = (proc.returncode, time.monotonic() - started)
    print("=== molecule scenarios")
    for name, (code, seconds) in results.items():
        verdict = "passed" if code == 0 else f"FAILED (rc={code})"
        print(f"  {name:<12} {verdict:<16} {seconds:6.0f} s")
    failed = sum(1 for code, _ in results.values() if code != 0)
    print(f"molecule: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
