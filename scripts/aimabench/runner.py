"""ansible-playbook against the bench's target (aimakit.ansible.Runner), with per-task
timings from the bench's callback plugin (scripts/bench/callback_plugins/)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimakit.ansible import Runner

from aimabench.common import CALLBACKS, REPO_ROOT, BenchError


@dataclass
class PlaybookRun:
    label: str
    wall_s: float
    tasks: list[dict[str, Any]]
    stats: dict[str, int]
    log: Path

    @property
    def changed(self) -> int:
        return int(self.stats.get("changed", 0))

    def by_role(self) -> dict[str, float]:
        roles: dict[str, float] = {}
        for task in self.tasks:
            roles[task["role"]] = roles.get(task["role"], 0.0) + float(task["seconds"])
        roles["(ansible start-up, parsing)"] = max(0.0, self.wall_s - sum(roles.values()))
        return roles

    def changed_tasks(self) -> list[str]:
        return [f"{t['role']} : {t['name']}" for t in self.tasks if t["changed"]]


class TimedRunner:
    """site.yml with tags against one host; each run's log and timings in log_dir."""

    def __init__(self, inventory: Path, host: str, log_dir: Path) -> None:
        self.host = host
        self.inventory = inventory
        self.log_dir = log_dir
        self.runner = Runner(inventory, REPO_ROOT, log_dir=log_dir, env={
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
            "ANSIBLE_CALLBACKS_ENABLED": "aima_bench_timings",
        })

    def __call__(self, label: str, tags: Sequence[str] = (),
                 on_start: Callable[[], None] | None = None,
                 extra: Sequence[str] = (), playbook_path: str = "site.yml") -> PlaybookRun:
        log = self.runner.log_path(label)
        assert log is not None
        timings = log.with_suffix(".json")
        args = (["--tags", ",".join(tags)] if tags else []) + list(extra)
        run = self.runner(*args, playbook_path=playbook_path, label=label, timeout=1800,
                          on_start=on_start, env={"AIMA_BENCH_TIMINGS": str(timings)})
        if run.rc != 0:
            what = f"{playbook_path} {' '.join(tags) or '(no tags)'}"
            raise BenchError(f"{what} failed (rc {run.rc}); log {log}:\n{run.output[-3000:]}")
        data = json.loads(timings.read_text())
        stats = data["stats"].get(self.host, {})
        return PlaybookRun(label, run.seconds, data["tasks"], stats, log)
