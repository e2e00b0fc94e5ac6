"""Ansible callback for scripts/bench.py: per-task wall times, roles and the changed tasks.

Enabled only by the benchmark (ANSIBLE_CALLBACK_PLUGINS + ANSIBLE_CALLBACKS_ENABLED); writes
one JSON document to the file named by AIMA_BENCH_TIMINGS when the playbook ends:
``{"tasks": [{"name", "role", "play", "start", "seconds", "changed"}], "stats": {host: {...}}}``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: aima_bench_timings
type: aggregate
short_description: per-task timings for scripts/bench.py
description: Writes per-task wall times, role names and changed tasks to $AIMA_BENCH_TIMINGS.
requirements: [enable in the configuration]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "aima_bench_timings"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._tasks: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None
        self._play = ""

    def _close(self) -> None:
        if self._current is not None:
            self._current["seconds"] = time.monotonic() - self._current.pop("_t0")
            self._tasks.append(self._current)
            self._current = None

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._close()
        self._play = play.get_name()

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._close()
        role = task._role.get_name(include_role_fqcn=False) if task._role else "(play)"
        self._current = {
            "name": task.name or task.get_name(include_role_fqcn=False),
            "role": role,
            "play": self._play,
            "start": time.time(),
            "_t0": time.monotonic(),
            "changed": False,
        }

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self.v2_playbook_on_task_start(task, False)

    def _result(self, result: Any) -> None:
        if self._current is not None and result._result.get("changed", False):
            self._current["changed"] = True

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result(result)

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self._result(result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._close()
        path = os.environ.get("AIMA_BENCH_TIMINGS")
        if not path:
            return
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"tasks": self._tasks, "stats": summary}, fh, indent=1)
