#!/usr/bin/env python3
"""Benchmark AIMA's deployment: provisioning, the GPU switch, the job path and the footprint.

    bench.py [--repeat N] [--quick] [--keep] [--port PORT] [--seconds S] [--clients C]

Builds the testbed images (scripts/testbed/build.py build + save), then, on a fresh Debian 13
target container made like scripts/demo.py makes the demo's (the Molecule recipe in
.config/molecule/config.yml, a nested Docker engine, the images loaded from archives), measures:

1. fresh provision: site.yml from a clean target to a healthy stack, split by role;
2. idempotent re-run: a second site.yml, wall time and changed count;
3. GPU switch: --tags gpu_on / gpu_off against the raw compose commands run in the target,
   alternated in one run, as ratios ours/raw (raw also with a wait until the worker is healthy);
4. time to first result: a job queued while the worker is off, from the start of gpu_on to done;
5. footprint: memory of the base stack at rest and of the worker, image sizes;
6. job path: upload throughput and latency through the proxy, end-to-end job latency with the
   worker on (CPU here), and the per-job overhead outside the analysis (from the job's timings).

Prints a table (median and spread over the runs) and writes .cache/bench/results-<time>.json.
It is not a test: slow figures never fail it; it exits non-zero only when something is broken.
The target (default name aima-bench, its own nested-Docker volume, proxy on 127.0.0.1:PORT) is
removed on exit unless --keep.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import random
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from testbed import target

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
RESULTS_DIR = REPO_ROOT / ".cache" / "bench"
# The bench's own `docker save` archives: the demo's (.cache/images) may be rewritten by a
# concurrent build while the bench runs, which would show up as a changed re-run.
ARCHIVES = RESULTS_DIR / "images"
CALLBACKS = Path(__file__).resolve().parent / "bench" / "callback_plugins"
DEMO_VARS = REPO_ROOT / "inventory" / "demo" / "group_vars" / "aima" / "main.yml"
IMAGES = ("postgres", "redis", "caddy", "backend", "worker")
STACK_DIR = "/opt/aima"
WORKER = "aima-gpu-worker"
BASE_SERVICES = ("reverse-proxy", "aima-backend", "database", "message-queue")
LABEL = "org.aima.bench=true"

TARGETS = {
    "gpu_on_ratio": 2.0,
    "rerun_s": 20.0,
    "base_mem_mib": 300.0,
    "ttfr_s": 10.0,
    "overhead_p50_ms": 20.0,
}


class BenchError(RuntimeError):
    """Something is broken (not merely slow): the benchmark stops with exit code 1."""


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# ----------------------------------------------------------------------------- statistics
def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median": median(values),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "p99": percentile(values, 99),
        "values": [round(v, 4) for v in values],
    }


# ----------------------------------------------------------------------------- processes
def run(cmd: Sequence[str], *, check: bool = True, stdin: str | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=stdin,
                          check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def docker(*args: str, check: bool = True) -> str:
    return run(["docker", *args], check=check).stdout.strip()


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


# ----------------------------------------------------------------------------- the target
class Target:
    """A Debian 13 container with systemd and a nested Docker engine, as scripts/demo.py makes."""

    def __init__(self, name: str, port: int, workdir: Path, inventory: Path) -> None:
        self.name = name
        self.volume = f"{name}-docker"
        self.port = port
        self.workdir = workdir  # playbook logs and timings
        self.inventory = inventory
        self.runs = 0

    # -- container
    def exists(self) -> bool:
        return bool(docker("ps", "-a", "--filter", f"name=^{self.name}$", "--format", "{{.ID}}"))

    def destroy(self) -> None:
        if self.exists():
            labels = docker("inspect", "--format", "{{json .Config.Labels}}", self.name)
            if "org.aima.bench" not in labels:
                raise BenchError(f"a container named {self.name} exists and is not a bench "
                                 "target (no org.aima.bench label): choose another --name")
            docker("rm", "--force", "--volumes", self.name)
        if docker("volume", "ls", "-q", "--filter", f"name=^{self.volume}$"):
            docker("volume", "rm", self.volume)

    def create(self) -> None:
        docker(*target.run_args(self.name, self.volume, self.port, LABEL))
        target.wait_for_boot(self.name)
        target.apply_testbed_settings(self.name)

    def sh(self, script: str, *, stdin: str | None = None, check: bool = True,
           timeout: float | None = 600) -> str:
        proc = run(["docker", "exec", "-i", self.name, "sh", "-c", script], stdin=stdin,
                   check=check, timeout=timeout)
        return proc.stdout.strip()

    # -- inventory
    def write_inventory(self) -> None:
        group_vars = yaml.safe_load(DEMO_VARS.read_text())
        names = [Path(str(p)).name for p in group_vars.get("aima_image_archives", [])]
        group_vars["aima_image_archives"] = [str(ARCHIVES / n) for n in names]
        missing = [n for n in names if not (ARCHIVES / n).is_file()]
        if missing:
            raise BenchError(f"image archives missing in {ARCHIVES}: {missing}")
        host = {"ansible_connection": "community.docker.docker",
                "ansible_python_interpreter": "/usr/bin/python3"}
        (self.inventory.parent / "group_vars" / "aima").mkdir(parents=True, exist_ok=True)
        self.inventory.write_text(yaml.safe_dump({"aima": {"hosts": {self.name: host}}}))
        (self.inventory.parent / "group_vars" / "aima" / "main.yml").write_text(
            yaml.safe_dump(group_vars))

    # -- ansible
    def playbook(self, label: str, tags: Sequence[str] = (),
                 on_start: Callable[[], None] | None = None) -> PlaybookRun:
        self.runs += 1
        log = self.workdir / f"{self.runs:03d}-{label}.log"
        timings = log.with_suffix(".json")
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
                   ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS),
                   ANSIBLE_CALLBACKS_ENABLED="aima_bench_timings",
                   AIMA_BENCH_TIMINGS=str(timings), ANSIBLE_NOCOLOR="1")
        cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory), "site.yml"]
        if tags:
            cmd += ["--tags", ",".join(tags)]
        with log.open("w") as out:
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
            if on_start is not None:
                on_start()
            rc = proc.wait()
            wall = time.monotonic() - t0
        if rc != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise BenchError(f"site.yml {' '.join(tags) or '(no tags)'} failed (rc {rc}); "
                             f"log {log}:\n{tail}")
        data = json.loads(timings.read_text())
        stats = data["stats"].get(self.name, {})
        return PlaybookRun(label, wall, data["tasks"], stats, log)

    # -- docker inside the target
    def memory_mib(self) -> dict[str, float]:
        """Memory per compose service, from one `docker stats --no-stream` in the target."""
        out = self.sh(
            "docker stats --no-stream --format '{{.ID}} {{.MemUsage}}' && echo --- && "
            "docker ps --format '{{.ID}} {{.Label \"com.docker.compose.service\"}}'")
        stats_part, ps_part = out.split("---", 1)
        services = dict(line.split(maxsplit=1) for line in ps_part.split("\n") if " " in line)
        memory: dict[str, float] = {}
        for line in stats_part.strip().splitlines():
            cid, usage = line.split(maxsplit=1)
            memory[services.get(cid, cid).strip()] = parse_size(usage.split("/")[0])
        return memory

    def image_sizes_mib(self) -> dict[str, float]:
        out = self.sh("docker image inspect --format '{{index .RepoTags 0}} {{.Size}}' "
                      "$(docker image ls -q)")
        sizes = {}
        for line in out.splitlines():
            tag, size = line.rsplit(maxsplit=1)
            sizes[tag] = int(size) / 2**20
        return sizes

    def worker_state(self) -> str:
        return self.sh(f"cd {STACK_DIR} && docker compose --profile gpu ps --all "
                       f"--format '{{{{.State}}}}/{{{{.Health}}}}' {WORKER}", check=False)


def parse_size(text: str) -> float:
    """'45.3MiB' -> 45.3 (MiB)."""
    text = text.strip()
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "TiB": 1024.0**2,
             "kB": 1000 / 2**20, "MB": 1e6 / 2**20, "GB": 1e9 / 2**20, "B": 1 / 2**20}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text) / 2**20


# ----------------------------------------------------------------------------- the API
class Api:
    """The backend through the target's published proxy port (one connection per thread)."""

    def __init__(self, port: int, target_name: str) -> None:
        self.port = port
        self.target_name = target_name
        self._local = threading.local()
        self._auth: str | None = None
        # The target's certificate comes from its proxy's own CA; this is loopback on this
        # machine, measured for speed (the suites check the certificate).
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    def _conn(self) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30,
                                               context=self._tls)
            self._local.conn = conn
        return conn

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        if self._auth is None:  # the login exists once site.yml ran
            user, password = target.read_login(self.target_name)
            self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": self._auth, **(extra or {})}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=self._headers(headers))
                response = conn.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else None
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def upload(self, name: str, content: bytes) -> dict[str, Any]:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode()
        body += content + f"\r\n--{boundary}--\r\n".encode()
        status, job = self.request(
            "POST", "/api/jobs", body,
            {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 201:
            raise BenchError(f"upload answered {status}: {job}")
        return dict(job)

    def job(self, job_id: str) -> dict[str, Any]:
        status, job = self.request("GET", f"/api/jobs/{job_id}")
        if status != 200:
            raise BenchError(f"GET /api/jobs/{job_id} answered {status}: {job}")
        return dict(job)

    def health(self) -> tuple[int, Any]:
        return self.request("GET", "/api/health")

    def wait_done(self, job_id: str, timeout: float, every: float = 0.05) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in ("done", "failed"):
                if job["status"] == "failed":
                    raise BenchError(f"job {job_id} failed: {job.get('error')}")
                return job
            if time.monotonic() > deadline:
                raise BenchError(f"job {job_id} not done after {timeout:.0f} s: {job['status']}")
            time.sleep(every)


def png(seed: int, size: int = 64) -> bytes:
    """A small, distinct PNG (noise plus a gradient) made with Pillow."""
    from PIL import Image

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size))
    image.putdata([(rng.randrange(256), (x * 4) % 256, (y * 4) % 256)
                   for y in range(size) for x in range(size)])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ----------------------------------------------------------------------------- the benchmark
@dataclass
class Bench:
    args: argparse.Namespace
    target: Target
    api: Api
    results: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, list[PlaybookRun]] = field(default_factory=dict)

    def record(self, key: str, value: float) -> None:
        self.results.setdefault(key, []).append(value)

    # 1 + 2
    def provision(self) -> None:
        for i in range(self.args.repeat):
            say(f"fresh provision {i + 1}/{self.args.repeat}: new target {self.target.name}")
            self.target.destroy()
            self.target.create()
            fresh = self.target.playbook("provision")
            status, health = self.api.health()
            if status != 200 or health.get("status") != "ok":
                raise BenchError(f"after site.yml the stack is not healthy: {status} {health}")
            self.record("provision_s", fresh.wall_s)
            for role, seconds in fresh.by_role().items():
                self.record(f"provision_role:{role}", seconds)
            self.profiles.setdefault("provision", []).append(fresh)
            say(f"  site.yml {fresh.wall_s:.1f} s; re-run ...")
            again = self.target.playbook("rerun")
            self.record("rerun_s", again.wall_s)
            self.record("rerun_changed", again.changed)
            self.profiles.setdefault("rerun", []).append(again)
            if again.changed:
                self.results.setdefault("rerun_changed_tasks", []).append(again.changed_tasks())
            say(f"  re-run {again.wall_s:.1f} s, changed={again.changed}")

    # 5 (base)
    def footprint(self, key: str, samples: int) -> None:
        for _ in range(samples):
            memory = self.target.memory_mib()
            self.record(f"{key}_base_mib", sum(memory.get(s, 0.0) for s in BASE_SERVICES))
            for service, mib in memory.items():
                self.record(f"{key}_mem:{service}", mib)
            if WORKER in memory:
                self.record(f"{key}_worker_mib", memory[WORKER])
            time.sleep(1)

    # 3 + 4
    def _queue_probe(self, seed: int) -> str:
        return str(self.api.upload(f"probe-{seed}.png", png(seed))["id"])

    def _poll_done(self, job_id: str, t0: float, out: dict[str, float]) -> threading.Thread:
        def poll() -> None:
            try:
                self.api.wait_done(job_id, timeout=300, every=0.1)
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
        run_ = self.target.playbook(
            "gpu_on", ["gpu_on"],
            on_start=lambda: holder.append(self._poll_done(job_id, t0, out)))
        holder[0].join(300)
        if "done" not in out:
            raise BenchError("the probe job was not done after gpu_on")
        self.record("gpu_on_ours_s", run_.wall_s)
        self.record("ttfr_ours_s", out["done"])
        self.profiles.setdefault("gpu_on", []).append(run_)

    def ours_off(self) -> None:
        run_ = self.target.playbook("gpu_off", ["gpu_off"])
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

    def gpu_switch(self) -> None:
        say("GPU switch: warm-up (raw on/off, not recorded)")
        self.raw_on(seed=10_000, record=False)
        self.raw_off(record=False)
        for i in range(self.args.repeat):
            ours_first = i % 2 == 0
            say(f"GPU switch {i + 1}/{self.args.repeat} ({'ours' if ours_first else 'raw'} first)")
            order: list[Callable[[], None]]
            ours = [lambda i=i: self.ours_on(seed=20_000 + i), self.ours_off]
            raw = [lambda i=i: self.raw_on(seed=30_000 + i), self.raw_off]
            order = ours + raw if ours_first else raw + ours
            for step in order:
                step()
        pairs = zip(self.results["gpu_on_ours_s"], self.results["gpu_on_raw_s"],
                    self.results["gpu_on_raw_healthy_s"], strict=True)
        for ours_s, raw_s, healthy_s in pairs:
            self.record("gpu_on_ratio_raw", ours_s / raw_s)
            self.record("gpu_on_ratio_raw_healthy", ours_s / healthy_s)
        for ours_s, raw_s in zip(self.results["gpu_off_ours_s"],
                                 self.results["gpu_off_raw_s"], strict=True):
            self.record("gpu_off_ratio_raw", ours_s / raw_s)

    # 6
    def job_path(self) -> None:
        seconds = self.args.seconds
        say(f"job path: end-to-end with the worker on, sequential jobs for {seconds:.0f} s")
        self.target.playbook("gpu_on", ["gpu_on"])
        time.sleep(3)
        self.footprint("worker_on", samples=3)
        deadline = time.monotonic() + seconds
        seed = 40_000
        while time.monotonic() < deadline:
            seed += 1
            content = png(seed)
            t0 = time.monotonic()
            job = self.api.upload(f"e2e-{seed}.png", content)
            t_up = time.monotonic() - t0
            done = self.api.wait_done(str(job["id"]), timeout=60, every=0.01)
            t_done = time.monotonic() - t0
            timings = done.get("timings") or {}
            analysis = float(timings.get("decode_ms", 0.0)) + float(timings.get("analyse_ms", 0.0))
            server = (iso(done["finished_at"]) - iso(done["created_at"])).total_seconds() * 1000
            self.record("e2e_client_ms", t_done * 1000)
            self.record("e2e_upload_ms", t_up * 1000)
            self.record("e2e_server_ms", server)
            self.record("analysis_ms", analysis)
            self.record("overhead_ms", server - analysis)
            self.record("queue_wait_ms", float(timings.get("queue_wait_ms", 0.0)))
            self.record("worker_total_minus_analysis_ms",
                        float(timings.get("total_ms", 0.0)) - analysis)
        self.target.playbook("gpu_off", ["gpu_off"])

        clients = self.args.clients
        say(f"job path: upload throughput, {clients} clients for {seconds:.0f} s (worker off)")
        payloads = [png(50_000 + i) for i in range(32)]
        latencies: list[list[float]] = [[] for _ in range(clients)]
        errors: list[str] = []
        stop_at = time.monotonic() + seconds

        def client(n: int) -> None:
            k = 0
            while time.monotonic() < stop_at:
                k += 1
                t0 = time.monotonic()
                try:
                    self.api.upload(f"load-{n}-{k}.png", payloads[(n * 7 + k) % len(payloads)])
                except Exception as exc:
                    errors.append(str(exc))
                    return
                latencies[n].append((time.monotonic() - t0) * 1000)

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        if errors:
            raise BenchError(f"uploads failed under load: {errors[:3]}")
        flat = [v for per in latencies for v in per]
        self.results["upload_jobs_per_s"] = [len(flat) / elapsed]
        self.results["upload_ms"] = flat

    def images(self) -> None:
        self.results["image_mib"] = self.target.image_sizes_mib()
        self.results["archive_mib"] = {p.name: p.stat().st_size / 2**20
                                       for p in sorted(ARCHIVES.glob("*.tar"))}


# ----------------------------------------------------------------------------- report
def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(label: str, values: Sequence[float], digits: int = 1, target: str = "",
        verdict: str = "", pct: bool = False) -> str:
    med = median(values)
    spread = (f"{fmt(percentile(values, 50), digits)} / {fmt(percentile(values, 99), digits)}"
              if pct else f"{fmt(min(values) if values else None, digits)}.."
              f"{fmt(max(values) if values else None, digits)}")
    return (f"{label:<46} {fmt(med, digits):>9} {spread:>17} {len(values):>4}  "
            f"{target:<14}{verdict}")


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "?"
    return "MET" if value <= limit else "NOT MET"


def top_tasks(runs: Iterable[PlaybookRun], n: int) -> list[tuple[str, float]]:
    per: dict[str, list[float]] = {}
    for run_ in runs:
        seen: dict[str, float] = {}
        for task in run_.tasks:
            key = f"{task['role']} : {task['name']}"
            seen[key] = seen.get(key, 0.0) + float(task["seconds"])
        for key, seconds in seen.items():
            per.setdefault(key, []).append(seconds)
    ranked = sorted(((k, statistics.median(v)) for k, v in per.items()), key=lambda kv: -kv[1])
    return ranked[:n]


def report(bench: Bench, meta: dict[str, Any]) -> str:
    r = bench.results
    t = TARGETS
    lines = [
        f"AIMA benchmark {meta['date']} on {meta['machine']} "
        f"(repeat {meta['repeat']}{', quick' if meta['quick'] else ''})",
        f"{'figure':<46} {'median':>9} {'spread/p50/p99':>17} {'n':>4}  {'target':<14}verdict",
        "-" * 104,
    ]
    add = lines.append
    add(row("1. fresh provision site.yml (s)", r["provision_s"]))
    for key in sorted(k for k in r if k.startswith("provision_role:")):
        add(row(f"     role {key.split(':', 1)[1]} (s)", r[key]))
    add(row("2. idempotent re-run site.yml (s)", r["rerun_s"], target="<= 20 s",
            verdict=verdict(median(r["rerun_s"]), t["rerun_s"])))
    changed_ok = max(r["rerun_changed"]) == 0
    add(row("   re-run changed count", r["rerun_changed"], digits=0, target="0",
            verdict="MET" if changed_ok else "NOT MET"))
    add(row("3. gpu_on ours (s)", r["gpu_on_ours_s"]))
    add(row("   raw compose up -d --no-deps (s)", r["gpu_on_raw_s"], 2))
    add(row("   raw up -d + wait until healthy (s)", r["gpu_on_raw_healthy_s"], 2))
    add(row("   ratio ours / raw up -d", r["gpu_on_ratio_raw"], 2, "<= 2x",
            verdict(median(r["gpu_on_ratio_raw"]), t["gpu_on_ratio"])))
    add(row("   ratio ours / (raw up -d + healthy)", r["gpu_on_ratio_raw_healthy"], 2, "<= 2x",
            verdict(median(r["gpu_on_ratio_raw_healthy"]), t["gpu_on_ratio"])))
    add(row("   gpu_off ours (s)", r["gpu_off_ours_s"]))
    add(row("   raw compose stop (s)", r["gpu_off_raw_s"], 2))
    add(row("   ratio ours / raw stop", r["gpu_off_ratio_raw"], 2))
    add(row("4. time to first result, gpu_on (s)", r["ttfr_ours_s"], target="<= 10 s",
            verdict=verdict(median(r["ttfr_ours_s"]), t["ttfr_s"])))
    add(row("   same with the raw compose up (s)", r["ttfr_raw_s"]))
    add(row("5. base stack memory at rest (MiB)", r["rest_base_mib"], target="<= 300 MiB",
            verdict=verdict(median(r["rest_base_mib"]), t["base_mem_mib"])))
    for key in sorted(k for k in r if k.startswith("rest_mem:")):
        add(row(f"     {key.split(':', 1)[1]} (MiB)", r[key]))
    add(row("   worker memory, idle (MiB)", r.get("worker_on_worker_mib", [])))
    for tag, mib in sorted(r["image_mib"].items()):
        add(f"   image {tag:<41} {mib:>9.1f} MiB")
    add(row("6. upload throughput (jobs/s)", r["upload_jobs_per_s"]))
    add(row("   upload latency p50/p99 (ms)", r["upload_ms"], pct=True))
    add(row("   end-to-end job latency p50/p99 (ms)", r["e2e_client_ms"], pct=True))
    add(row("   analysis: decode + analyse p50/p99 (ms)", r["analysis_ms"], pct=True))
    add(row("   overhead outside analysis p50/p99 (ms)", r["overhead_ms"], pct=True,
            target="<= 20 ms p50",
            verdict=verdict(percentile(r["overhead_ms"], 50), t["overhead_p50_ms"])))
    add(row("     of which queue pick-up p50/p99 (ms)", r["queue_wait_ms"], pct=True))
    add(row("     of which in-worker, not analysis (ms)", r["worker_total_minus_analysis_ms"],
            pct=True))
    lines += ["", "What dominates (median seconds per task):"]
    for key, title in (("provision", "fresh provision"), ("rerun", "re-run"),
                       ("gpu_on", "gpu_on"), ("gpu_off", "gpu_off")):
        lines.append(f"  {title}:")
        for name, seconds in top_tasks(bench.profiles.get(key, []), 5):
            lines.append(f"    {seconds:7.2f}  {name}")
    if r.get("rerun_changed_tasks"):
        lines.append(f"  re-run changed tasks: {r['rerun_changed_tasks'][-1]}")
    return "\n".join(lines)


def machine() -> str:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return f"{os.cpu_count()} cores, {mem_kib / 2**20:.0f} GiB"


# ----------------------------------------------------------------------------- main
def build_images(build_too: bool) -> None:
    build = [str(VENV_BIN / "python"), "scripts/testbed/build.py"]
    say("building the testbed images and archives (skips those up to date)")
    steps = [[*build, "save", str(ARCHIVES), *IMAGES]]
    if build_too:
        steps.insert(0, [*build, "build"])
    for cmd in steps:
        if subprocess.run(cmd, cwd=REPO_ROOT, check=False).returncode != 0:
            raise BenchError(f"{' '.join(cmd[1:])} failed (output above)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="one provision, one switch pair, 4 s load phases")
    parser.add_argument("--keep", action="store_true", help="keep the target afterwards")
    parser.add_argument("--name", default="aima-bench", help="target container name")
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIMA_BENCH_PORT", 18190)),
                        help="host port on 127.0.0.1 for the target's proxy (default 18190)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    parser.add_argument("--clients", type=int, default=4, help="concurrent upload clients")
    parser.add_argument("--skip-build", action="store_true",
                        help="use the built images as they are (archives are still saved)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.seconds = 1, min(args.seconds, 4.0)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if not (VENV_BIN / "ansible-playbook").exists():
        print("bench: error: .venv is missing; run scripts/bootstrap.py --profile demo",
              file=sys.stderr)
        return 2

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    logs = RESULTS_DIR / f"logs-{stamp}"
    logs.mkdir()
    workdir = Path(tempfile.mkdtemp(prefix="aima-bench-"))  # the inventory
    target = Target(args.name, args.port, logs, workdir / "inventory" / "hosts.yml")
    bench = Bench(args, target, Api(args.port, args.name))
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "repeat": args.repeat, "quick": args.quick, "seconds": args.seconds,
            "clients": args.clients}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    status = 0
    try:
        build_images(build_too=not args.skip_build)
        target.write_inventory()
        started = time.monotonic()
        bench.provision()
        say("footprint of the base stack at rest")
        time.sleep(5)
        bench.footprint("rest", samples=max(3, args.repeat))
        bench.images()
        bench.gpu_switch()
        bench.job_path()
        meta["bench_wall_s"] = time.monotonic() - started
        text = report(bench, meta)
        print("\n" + text, flush=True)
        out = RESULTS_DIR / f"results-{stamp}.json"
        profiles = {k: [{"wall_s": p.wall_s, "stats": p.stats, "tasks": p.tasks} for p in v]
                    for k, v in bench.profiles.items()}
        summaries = {k: summary(v) for k, v in bench.results.items()
                     if isinstance(v, list) and v and isinstance(v[0], int | float)}
        out.write_text(json.dumps({"meta": meta, "summary": summaries, "raw": bench.results,
                                   "profiles": profiles}, indent=1, default=str))
        (RESULTS_DIR / f"table-{stamp}.txt").write_text(text + "\n")
        say(f"results: {out}")
    except BenchError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    finally:
        if args.keep:
            say(f"kept the target {target.name} (proxy on 127.0.0.1:{args.port}); "
                f"its inventory: {target.inventory}")
        else:
            try:
                target.destroy()
                say(f"removed the target {target.name}")
            except BenchError as err:
                print(f"bench: error while cleaning up: {err}", file=sys.stderr)
                status = status or 1
            shutil.rmtree(workdir, ignore_errors=True)
        say(f"logs: {logs}")
    return status


if __name__ == "__main__":
    sys.exit(main())
