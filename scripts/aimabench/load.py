"""The job path: end-to-end job latency with the worker on, the overhead outside the analysis
(from the job's own timings), and upload throughput under concurrent clients."""

from __future__ import annotations

import threading
import time
from datetime import datetime

from aimabench.common import BenchError, say
from aimabench.measure import Bench, payload, wait_done


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def end_to_end(bench: Bench, seconds: float) -> None:
    say(f"job path: end-to-end with the worker on, sequential jobs for {seconds:.0f} s")
    bench.playbook("gpu_on", ["gpu_on"])
    time.sleep(3)
    bench.footprint("worker_on", samples=3)
    deadline = time.monotonic() + seconds
    seed = 40_000
    while time.monotonic() < deadline:
        seed += 1
        content = payload(seed)
        t0 = time.monotonic()
        job = bench.client.submit(f"e2e-{seed}.png", content)
        t_up = time.monotonic() - t0
        done = wait_done(bench.client, str(job["id"]), timeout=60, every=0.01)
        t_done = time.monotonic() - t0
        timings = done.get("timings") or {}
        analysis = float(timings.get("decode_ms", 0.0)) + float(timings.get("analyse_ms", 0.0))
        server = (iso(done["finished_at"]) - iso(done["created_at"])).total_seconds() * 1000
        bench.record("e2e_client_ms", t_done * 1000)
        bench.record("e2e_upload_ms", t_up * 1000)
        bench.record("e2e_server_ms", server)
        bench.record("analysis_ms", analysis)
        bench.record("overhead_ms", server - analysis)
        bench.record("queue_wait_ms", float(timings.get("queue_wait_ms", 0.0)))
        bench.record("worker_total_minus_analysis_ms",
                     float(timings.get("total_ms", 0.0)) - analysis)
    bench.playbook("gpu_off", ["gpu_off"])


def upload_load(bench: Bench, seconds: float, clients: int) -> None:
    say(f"job path: upload throughput, {clients} clients for {seconds:.0f} s (worker off)")
    payloads = [payload(50_000 + i) for i in range(32)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    api = bench.client

    def client(n: int) -> None:
        k = 0
        while time.monotonic() < stop_at:
            k += 1
            t0 = time.monotonic()
            try:
                api.submit(f"load-{n}-{k}.png", payloads[(n * 7 + k) % len(payloads)])
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
    bench.results["upload_jobs_per_s"] = [len(flat) / elapsed]
    bench.results["upload_ms"] = flat


def job_path(bench: Bench) -> None:
    end_to_end(bench, bench.args.seconds)
    upload_load(bench, bench.args.seconds, bench.args.clients)
