#!/usr/bin/python3
"""AIMA's GPU worker controller (aima_worker_mode: auto): starts the worker when jobs wait and
stops it gracefully when it has been idle for aima_worker_idle_timeout_s.

Runs on the host as a systemd service that the aima_stack role installs, with the host's own
python3 (standard library only; Python >= 3.10, the oldest a supported host ships). It uses the
same Compose commands as the lifecycle tags: `docker compose --profile gpu up --detach --no-deps
--wait aima-gpu-worker` (gpu_on) and `docker compose --profile gpu stop aima-gpu-worker` (gpu_off:
SIGTERM, the job in hand finishes or goes back to the queue). It never names another service.

How it reads the queue: `docker exec <backend container> python3 -c <GET /api/health on the
backend's own loopback>` (the container's own user, no secret at all: the health answer carries
the job counts from the database). Nothing is mounted into a container, no secret is on a command
line, and the backend is not internet-facing (only the proxy is). Counting jobs in the database
(queued + running) rather than stream entries also covers a job left `running` by a killed worker.

Decisions (decide(), pure; tests/aima_stack/test_gpu_controller.py):
- jobs waiting (queued or running) and no worker running -> start it (after a failed start, only
  after a back-off that doubles up to START_BACKOFF_MAX_S);
- no job waiting for idle_timeout_s -> stop it. The idle clock starts at the later of the last
  activity seen (a job waiting or finished) and the worker's own start, so every run lasts at
  least idle_timeout_s: that is the minimum run time, the hysteresis against flapping. A stop
  is re-checked under the lock with a fresh reading first;
- queue state unknown (backend or Docker not answering) -> hold: nothing is started or stopped;
- paused (`--tags gpu_off` in auto mode) -> hold until `--tags gpu_on` removes the pause.

It keeps its state in a JSON file (what it last did and when, the worker's running time per UTC
day and in total); `--status` prints it for `--tags status`.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

START_BACKOFF_MAX_S = 300.0
DAYS_KEPT = 62
HEALTH_CODE = (
    "import urllib.request as u, sys; "
    "sys.stdout.write(u.urlopen('http://127.0.0.1:8000/api/health', timeout=5).read().decode())"
)


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Config:
    stack_dir: str
    project: str
    worker_service: str
    worker_container: str
    backend_container: str
    idle_timeout_s: float
    poll_interval_s: float
    wait_timeout_s: float
    stop_timeout_s: float
    state_dir: str

    @classmethod
    def load(cls, path: str) -> Config:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Reading:
    """The backend's job counts: queued, running, and processed (done + failed)."""

    queued: int
    running: int
    processed: int

    @property
    def outstanding(self) -> int:
        return self.queued + self.running


@dataclass(frozen=True)
class Worker:
    """The worker's container as `docker inspect` shows it (exists=False: no container)."""

    exists: bool
    status: str = "absent"
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass
class Memory:
    """What the controller remembers between polls and across its own restarts."""

    last_activity: float | None = None
    last_processed: int | None = None
    start_failures: int = 0
    next_start_at: float = 0.0
    last_action: dict[str, Any] = field(default_factory=dict)
    run_start: float | None = None
    run_seen: float | None = None
    days: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Memory:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Decision:
    action: str  # "start", "stop" or "none"
    reason: str


# ------------------------------------------------------------------- pure logic
def observe(memory: Memory, reading: Reading | None, now: float) -> None:
    """Activity = a job waiting or running, or one finished since the last reading."""
    if reading is None:
        return
    finished = memory.last_processed is not None and reading.processed != memory.last_processed
    if reading.outstanding > 0 or finished:
        memory.last_activity = now
    memory.last_processed = reading.processed


def decide(cfg: Config, memory: Memory, reading: Reading | None, worker: Worker | None,
           paused: bool, now: float) -> Decision:
    if paused:
        return Decision("none", "paused by --tags gpu_off (--tags gpu_on resumes)")
    if reading is None or worker is None:
        return Decision("none", "queue or worker state unknown: holding")
    if worker.status in ("restarting", "paused", "removing"):
        return Decision("none", f"worker is {worker.status}: leaving it to Docker")
    if reading.outstanding > 0 and not worker.running:
        if now < memory.next_start_at:
            wait = memory.next_start_at - now
            return Decision("none", f"start back-off, next try in {wait:.0f} s")
        return Decision("start", f"{reading.queued} queued and {reading.running} running jobs, "
                                 f"worker {worker.status}")
    if worker.running and reading.outstanding == 0:
        since = max(memory.last_activity or 0.0, worker.started_at or 0.0)
        idle = now - since
        if idle >= cfg.idle_timeout_s:
            return Decision("stop", f"idle for {idle:.0f} s (aima_worker_idle_timeout_s="
                                    f"{cfg.idle_timeout_s:.0f})")
        return Decision("none", f"idle for {idle:.0f} s, stops after {cfg.idle_timeout_s:.0f} s")
    return Decision("none", "working" if worker.running else "no job waiting")


def start_failed(memory: Memory, cfg: Config, now: float) -> float:
    """Record a failed start; the back-off before the next try (doubling, capped)."""
    memory.start_failures += 1
    delay = min(cfg.poll_interval_s * 2 ** memory.start_failures, START_BACKOFF_MAX_S)
    memory.next_start_at = now + delay
    return delay


def start_succeeded(memory: Memory, now: float) -> None:
    memory.start_failures = 0
    memory.next_start_at = 0.0
    memory.last_activity = now


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def split_by_day(start: float, end: float) -> dict[str, float]:
    """Seconds of [start, end) per UTC day."""
    result: dict[str, float] = {}
    while start < end:
        midnight = (int(start) // 86400 + 1) * 86400
        stop = min(end, float(midnight))
        result[day_of(start)] = result.get(day_of(start), 0.0) + stop - start
        start = stop
    return result


def close_run(memory: Memory, end: float) -> None:
    if memory.run_start is not None and end > memory.run_start:
        for day, seconds in split_by_day(memory.run_start, end).items():
            memory.days[day] = memory.days.get(day, 0.0) + seconds
        memory.total_s += end - memory.run_start
        for day in sorted(memory.days)[:-DAYS_KEPT]:
            del memory.days[day]
    memory.run_start = memory.run_seen = None


def account(memory: Memory, worker: Worker | None, now: float) -> None:
    """Book the worker's running time: a run is closed (its time added) once it has ended."""
    if worker is None:
        return
    same = worker.started_at == memory.run_start
    if memory.run_start is not None and not (worker.running and same):
        ended_here = (same and worker.finished_at is not None
                      and worker.finished_at >= memory.run_start)
        last_seen = memory.run_seen or memory.run_start
        close_run(memory, worker.finished_at if ended_here and worker.finished_at else last_seen)
    if worker.running and worker.started_at is not None:
        memory.run_start = worker.started_at
        memory.run_seen = now


def running_time(memory: Memory, now: float) -> tuple[float, float]:
    """(today, total) seconds, the run in progress included."""
    today = memory.days.get(day_of(now), 0.0)
    total = memory.total_s
    if memory.run_start is not None:
        total += now - memory.run_start
        today += split_by_day(memory.run_start, now).get(day_of(now), 0.0)
    return today, total


def parse_docker_time(text: str) -> float | None:
    """Docker's RFC 3339 UTC time ('2026-11-25T19:31:30.123456789Z'); None for its zero time."""
    if not text or text.startswith("0001-"):
        return None
    whole, _, rest = text.rstrip("Z").partition(".")
    fraction = float("0." + "".join(ch for ch in rest if ch.isdigit())[:6] or "0")
    return calendar.timegm(time.strptime(whole[:19], "%Y-%m-%dT%H:%M:%S")) + fraction


def parse_health(text: str) -> Reading:
    jobs = json.loads(text)["jobs"]
    return Reading(int(jobs["queued"]), int(jobs["running"]),
                   int(jobs.get("done", 0)) + int(jobs.get("failed", 0)))


def iso(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else "never"


def human(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min {seconds % 60:02d} s"


# --------------------------------------------------------------------------- I/O
def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def compose(cfg: Config, *args: str) -> list[str]:
    return ["docker", "compose", "--ansi", "never", "--project-directory", cfg.stack_dir,
            "--profile", "gpu", *args]


def read_queue(cfg: Config) -> tuple[Reading | None, str]:
    try:
        proc = run(["docker", "exec", cfg.backend_container, "python3", "-c", HEALTH_CODE], 20)
        if proc.returncode != 0:
            return None, f"backend health probe rc={proc.returncode}: {proc.stderr.strip()[-200:]}"
        return parse_health(proc.stdout), ""
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
        return None, f"backend health probe failed: {exc}"


def read_worker(cfg: Config) -> Worker | None:
    try:
        proc = run(["docker", "container", "inspect", cfg.worker_container], 20)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        # "No such container" is a known state; anything else (no daemon) is not.
        return Worker(exists=False) if "No such" in proc.stderr else None
    try:
        state = json.loads(proc.stdout)[0]["State"]
        return Worker(True, str(state["Status"]), parse_docker_time(state.get("StartedAt", "")),
                      parse_docker_time(state.get("FinishedAt", "")), int(state.get("ExitCode", 0)))
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class Controller:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.state_dir)
        self.state_file = self.dir / "state.json"
        self.pause_file = self.dir / "paused"
        self.memory = self.load()
        self.reading: Reading | None = None
        self.queue_error = ""
        self.worker: Worker | None = None
        self.decision = Decision("none", "starting")
        self.stopping = False

    def load(self) -> Memory:
        try:
            return Memory.from_dict(json.loads(self.state_file.read_text())["memory"])
        except (OSError, ValueError, KeyError, TypeError):
            return Memory()

    def save(self, now: float) -> None:
        today, total = running_time(self.memory, now)
        data = {
            "updated_at": iso(now), "pid": os.getpid(), "paused": self.pause_file.exists(),
            "idle_timeout_s": self.cfg.idle_timeout_s,
            "queue": asdict(self.reading) if self.reading else None,
            "queue_error": self.queue_error,
            "worker": asdict(self.worker) if self.worker else None,
            "decision": asdict(self.decision),
            "today_s": round(today, 1), "total_s": round(total, 1), "memory": asdict(self.memory),
        }
        with tempfile.NamedTemporaryFile("w", dir=self.dir, delete=False, suffix=".tmp") as tmp:
            json.dump(data, tmp, indent=1, sort_keys=True)
        os.replace(tmp.name, self.state_file)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while the controller acts; gpu_off waits for it (flock) after pausing."""
        with open(self.dir / "lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def look(self) -> None:
        self.reading, self.queue_error = read_queue(self.cfg)
        self.worker = read_worker(self.cfg)

    def tick(self) -> None:
        self.look()
        now = time.time()
        account(self.memory, self.worker, now)
        observe(self.memory, self.reading, now)
        self.decision = decide(self.cfg, self.memory, self.reading, self.worker,
                               self.pause_file.exists(), now)
        if self.decision.action != "none":
            with self.lock():
                # Again under the lock, with a fresh reading: gpu_off may have paused meanwhile.
                self.look()
                now = time.time()
                observe(self.memory, self.reading, now)
                self.decision = decide(self.cfg, self.memory, self.reading, self.worker,
                                       self.pause_file.exists(), now)
                if self.decision.action != "none":
                    self.act(self.decision, now)
                    self.worker = read_worker(self.cfg)
                    account(self.memory, self.worker, time.time())
        self.save(time.time())

    def act(self, decision: Decision, now: float) -> None:
        log(f"{decision.action}: {decision.reason}")
        if decision.action == "start":
            argv = compose(self.cfg, "up", "--detach", "--no-deps", "--no-build",
                           "--pull", "missing", "--wait",
                           "--wait-timeout", str(int(self.cfg.wait_timeout_s)),
                           self.cfg.worker_service)
            timeout = self.cfg.wait_timeout_s + 60
        else:
            argv = compose(self.cfg, "stop", self.cfg.worker_service)
            timeout = self.cfg.stop_timeout_s + 60
        try:
            proc = run(argv, timeout)
            ok, detail = proc.returncode == 0, proc.stderr.strip()[-300:]
        except (OSError, subprocess.SubprocessError) as exc:
            ok, detail = False, str(exc)
        result = "ok"
        if decision.action == "start":
            if ok:
                start_succeeded(self.memory, time.time())
            else:
                delay = start_failed(self.memory, self.cfg, time.time())
                result = f"failed, next try in {delay:.0f} s"
        else:
            worker = read_worker(self.cfg)
            code = worker.exit_code if worker else None
            result = f"exit code {code}" if ok else "failed"
        if not ok:
            log(f"{decision.action} failed: {detail}")
        self.memory.last_action = {"action": decision.action, "reason": decision.reason,
                                   "at": iso(now), "result": result}
        log(f"{decision.action}: {result}")

    def loop(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        log(f"controlling {self.cfg.worker_service} of {self.cfg.project}: idle timeout "
            f"{self.cfg.idle_timeout_s:.0f} s, poll every {self.cfg.poll_interval_s:.0f} s")
        while not self.stopping:
            try:
                self.tick()
            except Exception as exc:  # a bad tick must not end the service
                log(f"tick failed: {type(exc).__name__}: {exc}")
            deadline = time.monotonic() + self.cfg.poll_interval_s
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.2)
        log("stopped by signal")
        return 0

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.stopping = True


def log(message: str) -> None:
    print(message, flush=True)


def status_lines(state: dict[str, Any], now: float) -> list[str]:
    """The controller's part of `--tags status`."""
    memory = Memory.from_dict(state.get("memory", {}))
    today, total = running_time(memory, now)
    action = memory.last_action
    queue = state.get("queue")
    lines = [
        "GPU controller: " + ("PAUSED by gpu_off (gpu_on resumes)" if state.get("paused")
                              else "watching the queue") + f", last poll {state.get('updated_at')}",
        "  last action: " + (f"{action['action']} at {action['at']} ({action['reason']}): "
                             f"{action['result']}" if action else "none yet"),
        "  now: " + state.get("decision", {}).get("reason", "?"),
        "  queue: " + (f"{queue['queued']} queued, {queue['running']} running" if queue
                       else f"unknown ({state.get('queue_error', '')})"),
        f"  worker running time: today (UTC) {human(today)}, total {human(total)}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--status", action="store_true", help="print the state and exit")
    args = parser.parse_args(argv)
    cfg = Config.load(args.config)
    if args.status:
        try:
            state = json.loads((Path(cfg.state_dir) / "state.json").read_text())
        except (OSError, ValueError):
            print("GPU controller: no state yet (it has not polled)")
            return 0
        print("\n".join(status_lines(state, time.time())))
        return 0
    return Controller(cfg).loop()


if __name__ == "__main__":
    sys.exit(main())
