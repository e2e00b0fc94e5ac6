"""ansible-playbook as the operator runs it (from the project's root, its ansible.cfg), with
the PLAY RECAP parsed.

    run = Runner(inventory, project_dir, log_dir=...)("--tags", "gpu_on")
    assert run.rc == 0 and run.changed == 0, run.describe()
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)(?:\s+skipped=(?P<skipped>\d+))?(?:\s+rescued=(?P<rescued>\d+))?"
    r"(?:\s+ignored=(?P<ignored>\d+))?",
    re.M,
)


def parse_recap(text: str) -> dict[str, dict[str, int]]:
    """host -> its counts (ok, changed, unreachable, failed, ...) from the last PLAY RECAP."""
    hosts: dict[str, dict[str, int]] = {}
    for match in RECAP.finditer(text):
        values = match.groupdict()
        host = values.pop("host")
        hosts[host] = {k: int(v) for k, v in values.items() if v is not None}
    return hosts


def total(hosts: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """The counts summed over the hosts."""
    result: dict[str, int] = {}
    for counts in hosts.values():
        for key, value in counts.items():
            result[key] = result.get(key, 0) + value
    return result


@dataclass
class Run:
    args: list[str]
    rc: int
    output: str
    seconds: float
    recap: dict[str, int] = field(default_factory=dict)  # summed over the hosts
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        """Tasks changed (all hosts); -1 when the run printed no recap."""
        return self.recap.get("changed", -1)

    def describe(self) -> str:
        """The command, its recap, the error lines (which long log excerpts in the output can
        push out of the tail), and the output's tail."""
        errors = [line for line in self.output.splitlines()
                  if line.startswith(("[ERROR]", "fatal:", "failed:"))]
        return (f"ansible-playbook {' '.join(self.args)} -> rc={self.rc}, recap={self.recap}\n"
                + "".join(f"{line[:2000]}\n" for line in errors[:10]) + self.output[-6000:])


def ansible_playbook() -> str:
    """ansible-playbook of the running interpreter's environment (the project's .venv)."""
    venv = os.environ.get("VIRTUAL_ENV")
    here = Path(venv) / "bin" if venv else Path(sys.executable).parent
    return str(here / "ansible-playbook")


class Runner:
    """Runs playbooks against one inventory from project_dir; keeps every Run in .runs and,
    with log_dir, writes each one's command and output to log_dir/NN[-label].log."""

    def __init__(self, inventory: Path | str, project_dir: Path | str, *,
                 log_dir: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self.inventory = Path(inventory)
        self.project_dir = Path(project_dir)
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.runs: list[Run] = []

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ANSIBLE_CONFIG=str(self.project_dir / "ansible.cfg"),
            ANSIBLE_ROLES_PATH=str(self.project_dir / "roles"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            PY_COLORS="0",
        )
        env.pop("ANSIBLE_LOG_PATH", None)
        env.update(self.env)
        env.update(extra or {})
        return env

    def log_path(self, label: str = "") -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{len(self.runs) + 1:02d}{'-' + label if label else ''}.log"

    def __call__(self, *args: str, playbook_path: str = "site.yml", timeout: float = 900,
                 label: str = "", env: Mapping[str, str] | None = None,
                 on_start: Callable[[], None] | None = None) -> Run:
        """ansible-playbook -i INVENTORY PLAYBOOK ARGS; on_start is called once the process
        runs (to time something against it)."""
        cmd = [ansible_playbook(), "-i", str(self.inventory), playbook_path, *args]
        log = self.log_path(label)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=self.project_dir, env=self.environment(env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            if on_start is not None:
                on_start()
            text, _ = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        hosts = parse_recap(text)
        run = Run([playbook_path, *args], proc.returncode, text, time.monotonic() - started,
                  total(hosts), hosts)
        self.runs.append(run)
        if log is not None:
            log.write_text(f"$ {' '.join(cmd)}\n{text}")
        return run


def run_playbook(inventory: Path | str, project_dir: Path | str, *args: str,
                 playbook_path: str = "site.yml", timeout: float = 900) -> Run:
    """One run without a Runner to keep."""
    return Runner(inventory, project_dir)(*args, playbook_path=playbook_path, timeout=timeout)


def molecule_playbook(playbook: Path | str, extra_vars: Mapping[str, Any] | None = None, *,
                      env: Mapping[str, str] | None = None, timeout: float = 300) -> Run:
    """A playbook against the running Molecule scenario's inventory, in Molecule's own Ansible
    settings (the verifier's environment): for verifiers that run a play again with other
    variables."""
    args = ["-i", os.environ["MOLECULE_INVENTORY_FILE"]]
    if extra_vars:
        args += ["-e", json.dumps(extra_vars)]
    environment = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    environment.update(env or {})
    started = time.monotonic()
    proc = subprocess.run([ansible_playbook(), *args, str(playbook)], env=environment,
                          capture_output=True, text=True, timeout=timeout, check=False)
    text = proc.stdout + proc.stderr
    hosts = parse_recap(text)
    return Run([str(playbook), *args], proc.returncode, text, time.monotonic() - started,
               total(hosts), hosts)
