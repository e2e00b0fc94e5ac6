"""aima_worker_mode: auto on the bench's target: upload -> result with the worker off (the GPU
controller starts it: cold start) against with it running (warm), and the worker's running time
after the last job until it is stopped against the configured idle timeout. The target is
switched to auto with short timings for this phase and back to manual afterwards."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aimabench.common import WORKER, BenchError, say
from aimabench.measure import payload, wait_done

if TYPE_CHECKING:
    from aimabench.measure import Bench

IDLE_S = 15  # aima_worker_idle_timeout_s for this phase
POLL_S = 1  # aima_worker_poll_interval_s


def _time(text: str) -> float:
    """A job's or Docker's ISO time in epoch seconds (Docker's nanoseconds cut to micro)."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, tail = text.split(".", 1)
        digits = len(tail) - len(tail.lstrip("0123456789"))
        text = f"{head}.{tail[:min(digits, 6)]}{tail[digits:]}"
    return datetime.fromisoformat(text).timestamp()


def switch(bench: Bench, mode: str) -> None:
    run = bench.playbook.runner(
        "-e", f"aima_worker_mode={mode}", "-e", f"aima_worker_idle_timeout_s={IDLE_S}",
        "-e", f"aima_worker_poll_interval_s={POLL_S}", label=f"worker-mode-{mode}", timeout=1800)
    if run.rc != 0:
        raise BenchError(f"site.yml -e aima_worker_mode={mode} failed:\n{run.output[-3000:]}")


def worker_state(bench: Bench) -> dict[str, Any]:
    out = bench.target.sh(f"docker inspect aima-{WORKER}-1 || true", check=False)
    return json.loads(out)[0]["State"] if out.strip().startswith("[") else {}


def wait_stopped(bench: Bench, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = worker_state(bench)
        if not state.get("Running"):
            return state
        time.sleep(0.5)
    raise BenchError(f"the GPU controller did not stop the idle worker within {timeout:.0f} s")


def job_seconds(bench: Bench, seed: int) -> tuple[float, float]:
    """(upload -> result in the job's own times, finished_at) of one probe job."""
    job = bench.client.submit(f"auto-{seed}.png", payload(seed))
    done = wait_done(bench.client, str(job["id"]), timeout=300, every=0.1)
    finished = _time(done["finished_at"])
    return finished - _time(done["created_at"]), finished


def measure(bench: Bench) -> None:
    say(f"worker mode auto (idle timeout {IDLE_S} s, poll {POLL_S} s): cold start, warm, idle stop")
    switch(bench, "auto")
    try:
        for i in range(bench.args.repeat):
            wait_stopped(bench, IDLE_S + 120)
            cold, _ = job_seconds(bench, 40_000 + 2 * i)
            warm, last = job_seconds(bench, 40_001 + 2 * i)
            state = wait_stopped(bench, IDLE_S + 120)
            idle = _time(state["FinishedAt"]) - last
            if state.get("ExitCode") != 0:
                raise BenchError(f"the idle stop ended the worker with {state.get('ExitCode')}")
            bench.record("auto_cold_s", cold)
            bench.record("auto_warm_s", warm)
            bench.record("auto_idle_run_s", idle)
            bench.record("auto_idle_margin_s", idle - IDLE_S)
            say(f"  cold {cold:.2f} s, warm {warm:.2f} s, idle running time {idle:.1f} s")
    finally:
        switch(bench, "manual")
