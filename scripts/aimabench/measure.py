"""The measurements on one target: provisioning (fresh and re-run), footprint, the GPU switch
against the raw compose commands, and time to first result."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aimakit.api import Api
from aimakit.media import png

from aimabench.common import (
    ARCHIVES,
    BASE_SERVICES,
    REPO_ROOT,
    STACK_DIR,
    WORKER,
    BenchError,
    say,
)
from aimabench.runner import PlaybookRun, TimedRunner
from aimabench.target import BASELINE_ARCHIVES, BenchTarget


def payload(seed: int) -> bytes:
    """The bench's upload: a distinct 64x64 PNG of noise (12 KB, incompressible)."""
    return png(64, 64, seed=seed, noise=True)


def wait_done(api: Api, job_id: str, timeout: float, every: float) -> dict[str, Any]:
    job = api.wait_job(job_id, timeout=timeout, every=every)
    if job["status"] != "done":
        raise BenchError(f"job {job_id} not done after {timeout:.0f} s: {job['status']} "
                         f"{job.get('error') or ''}")
    return job


# roles/aima_stack/tasks/images.yml: the task that moves the archives to the host (copy or
# rsync), the one that loads them, and the rsync install the rsync transfer needs.
# scripts/bench/floor.yml: one raw task, the least any playbook takes (ansible_floor).
FLOOR_PLAYBOOK = REPO_ROOT / "scripts" / "bench" / "floor.yml"
TRANSFER_TASKS = ("Copy the archives of the missing images",
                  "Send the archives of the missing images", "Install rsync on the host")
LOAD_TASKS = ("Load the archives of the missing images",)


def transfer_figures(tasks: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds spent moving the image archives to the host (transfer_s) and loading them
    (load_s) in one playbook run's task timings."""
    def seconds(prefixes: tuple[str, ...]) -> float:
        return sum(float(t["seconds"]) for t in tasks
                   if t["role"] == "aima_stack" and t["name"].startswith(prefixes))
    return {"transfer_s": seconds(TRANSFER_TASKS), "load_s": seconds(LOAD_TASKS)}


def transfer_method(tasks: list[dict[str, Any]]) -> str:
    """How the archives went (copy or rsync: the task that changed something), or none."""
    for task in tasks:
        if task["role"] == "aima_stack" and task["changed"]:
            if task["name"].startswith(TRANSFER_TASKS[0]):
                return "copy"
            if task["name"].startswith(TRANSFER_TASKS[1]):
                return "rsync"
    return "none"


@dataclass
class Bench:
    args: argparse.Namespace
    target: BenchTarget
    playbook: TimedRunner
    api: Api | None = None  # once site.yml made the login
    results: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, list[PlaybookRun]] = field(default_factory=dict)

    @property
    def client(self) -> Api:
        if self.api is None:
            self.api = self.target.api()
        return self.api

    def record(self, key: str, value: float) -> None:
        self.results.setdefault(key, []).append(value)

    # 1 (baseline, SSH only)
    def provision_by_copy(self) -> None:
        """A first site.yml on a fresh target as before issue 16: the archives sent by
        Ansible's copy, one archive per image (their common layers in each), so that the first
        deploy's speed-up is a ratio from one run."""
        say("  baseline: fresh target, site.yml with aima_image_transfer=copy, archives per image")
        self.target.fresh()
        self.api = None
        baseline = self.playbook.inventory.parent / BASELINE_ARCHIVES
        run_ = self.playbook("provision-copy",
                             extra=["-e", "aima_image_transfer=copy", "-e", f"@{baseline}"])
        if transfer_method(run_.tasks) != "copy":
            raise BenchError("the baseline run did not send the archives by copy")
        self.record("provision_copy_s", run_.wall_s)
        self.record("transfer_copy_s", transfer_figures(run_.tasks)["transfer_s"])
        say(f"  baseline site.yml {run_.wall_s:.1f} s")

    # 1 + 2
    def provision(self) -> None:
        for i in range(self.args.repeat):
            if self.target.connection == "ssh" and self.args.copy_baseline:
                self.provision_by_copy()
            say(f"fresh provision {i + 1}/{self.args.repeat}: new target {self.target.name}")
            self.target.fresh()
            self.api = None  # a new target: a new CA, login and address
            fresh = self.playbook("provision")
            reply = self.client.health()
            health = reply.json() or {}
            if reply.status != 200 or health.get("status") != "ok":
                raise BenchError(f"after site.yml the stack is not healthy: {reply.status} "
                                 f"{reply.body[:500]!r}")
            self.record("provision_s", fresh.wall_s)
            for key, value in transfer_figures(fresh.tasks).items():
                self.record(key, value)
            self.results["transfer_method"] = transfer_method(fresh.tasks)
            sent = self.target.sh(f"du -sb {STACK_DIR}/images 2>/dev/null | cut -f1", check=False)
            self.record("transfer_mib", int(sent or 0) / 2**20)
            for role, seconds in fresh.by_role().items():
                self.record(f"provision_role:{role}", seconds)
            self.profiles.setdefault("provision", []).append(fresh)
            if "provision_copy_s" in self.results:
                self.record("provision_ratio_copy", self.results["provision_copy_s"][-1]
                            / fresh.wall_s)
                self.record("transfer_ratio_copy", self.results["transfer_copy_s"][-1]
                            / max(transfer_figures(fresh.tasks)["transfer_s"], 0.001))
            say(f"  site.yml {fresh.wall_s:.1f} s; re-run ...")
            again = self.playbook("rerun")
            self.record("rerun_s", again.wall_s)
            self.record("rerun_changed", again.changed)
            self.profiles.setdefault("rerun", []).append(again)
            if again.changed:
                self.results.setdefault("rerun_changed_tasks", []).append(again.changed_tasks())
            say(f"  re-run {again.wall_s:.1f} s, changed={again.changed}")

    # 5
    def footprint(self, key: str, samples: int) -> None:
        for _ in range(samples):
            memory = self.target.memory_mib()
            self.record(f"{key}_base_mib", sum(memory.get(s, 0.0) for s in BASE_SERVICES))
            for service, mib in memory.items():
                self.record(f"{key}_mem:{service}", mib)
            if WORKER in memory:
                self.record(f"{key}_worker_mib", memory[WORKER])
            time.sleep(1)

    def images(self) -> None:
        self.results["image_mib"] = self.target.image_sizes_mib()
        self.results["archive_mib"] = {p.name: p.stat().st_size / 2**20
                                       for p in sorted(ARCHIVES.glob("*.tar"))}

    # 3 + 4
    def _queue_probe(self, seed: int) -> str:
        return str(self.client.submit(f"probe-{seed}.png", payload(seed))["id"])

    def _poll_done(self, job_id: str, t0: float, out: dict[str, float]) -> threading.Thread:
        def poll() -> None:
            try:
                wait_done(self.client, job_id, timeout=300, every=0.1)
                out["done"] = time.monotonic() - t0
            except Exception as exc:  # reported by the caller
                out["error"] = 1.0
                say(f"  probe job {job_id}: {exc}")

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        return thread

    def ours_on(self, seed: int) -> None:
        job_id = self._queue_probe(seed)
        out: dict[str, float] = {}
        holder: list[threading.Thread] = []
        t0 = time.monotonic()
        run_ = self.playbook("gpu_on", ["gpu_on"],
                             on_start=lambda: holder.append(self._poll_done(job_id, t0, out)))
        holder[0].join(300)
        if "done" not in out:
            raise BenchError("the probe job was not done after gpu_on")
        self.record("gpu_on_ours_s", run_.wall_s)
        self.record("ttfr_ours_s", out["done"])
        self.profiles.setdefault("gpu_on", []).append(run_)

    def ours_off(self) -> None:
        run_ = self.playbook("gpu_off", ["gpu_off"])
        self.record("gpu_off_ours_s", run_.wall_s)
        self.profiles.setdefault("gpu_off", []).append(run_)

    def raw_on(self, seed: int, record: bool = True) -> None:
        job_id = self._queue_probe(seed)
        out: dict[str, float] = {}
        t0 = time.monotonic()
        poller = self._poll_done(job_id, t0, out)
        script = (
            f"cd {STACK_DIR} && s=$(date +%s%N) && "
            f"docker compose --profile gpu up -d --no-deps {WORKER} >/dev/null 2>&1 && "
            "u=$(date +%s%N) && "
            f"cid=$(docker compose --profile gpu ps -q {WORKER}) && n=0 && "
            "until [ \"$(docker inspect -f '{{.State.Health.Status}}' $cid)\" = healthy ]; do "
            "n=$((n+1)); [ $n -gt 3000 ] && exit 7; sleep 0.1; done; "
            "h=$(date +%s%N); echo $s $u $h")
        s, u, h = (int(x) for x in self.target.sh(script).split())
        outer = time.monotonic() - t0
        poller.join(300)
        if "done" not in out:
            raise BenchError("the probe job was not done after the raw compose up")
        if record:
            self.record("gpu_on_raw_s", (u - s) / 1e9)
            self.record("gpu_on_raw_healthy_s", (h - s) / 1e9)
            self.record("gpu_on_raw_outer_s", outer)
            self.record("ttfr_raw_s", out["done"])

    def raw_off(self, record: bool = True) -> None:
        t0 = time.monotonic()
        script = (f"cd {STACK_DIR} && s=$(date +%s%N) && "
                  f"docker compose stop {WORKER} >/dev/null 2>&1 && e=$(date +%s%N) && "
                  "echo $s $e")
        s, e = (int(x) for x in self.target.sh(script).split())
        state = self.target.worker_state()
        if not state.startswith("exited"):
            raise BenchError(f"the raw compose stop left the worker {state}")
        if record:
            self.record("gpu_off_raw_s", (e - s) / 1e9)
            self.record("gpu_off_raw_outer_s", time.monotonic() - t0)

    def ansible_floor(self) -> None:
        """The least any playbook takes here: ansible-playbook's start and one call to the host
        as root (scripts/bench/floor.yml), timed beside gpu_on and gpu_off."""
        run_ = self.playbook("floor", playbook_path=str(FLOOR_PLAYBOOK))
        self.record("ansible_floor_s", run_.wall_s)

    def gpu_switch(self) -> None:
        say("GPU switch: warm-up (raw on/off, not recorded)")
        self.raw_on(seed=10_000, record=False)
        self.raw_off(record=False)
        for i in range(self.args.switch_repeat):
            ours_first = i % 2 == 0
            say(f"GPU switch {i + 1}/{self.args.switch_repeat} "
                f"({'ours' if ours_first else 'raw'} first)")
            ours: list[Callable[[], None]] = [lambda i=i: self.ours_on(seed=20_000 + i),
                                              self.ours_off]
            raw: list[Callable[[], None]] = [lambda i=i: self.raw_on(seed=30_000 + i),
                                             self.raw_off]
            for step in ours + raw if ours_first else raw + ours:
                step()
            self.ansible_floor()
        pairs = zip(self.results["gpu_on_ours_s"], self.results["gpu_on_raw_s"],
                    self.results["gpu_on_raw_healthy_s"], strict=True)
        for ours_s, raw_s, healthy_s in pairs:
            self.record("gpu_on_ratio_raw", ours_s / raw_s)
            self.record("gpu_on_ratio_raw_healthy", ours_s / healthy_s)
        for ours_s, raw_s in zip(self.results["gpu_off_ours_s"],
                                 self.results["gpu_off_raw_s"], strict=True):
            self.record("gpu_off_ratio_raw", ours_s / raw_s)
        # What a playbook that did nothing but the raw command would score: the floor added to it.
        for floor_s, healthy_s, stop_s in zip(self.results["ansible_floor_s"],
                                              self.results["gpu_on_raw_healthy_s"],
                                              self.results["gpu_off_raw_s"], strict=True):
            self.record("gpu_on_ratio_floor", (floor_s + healthy_s) / healthy_s)
            self.record("gpu_off_ratio_floor", (floor_s + stop_s) / stop_s)
