"""What the benchmark's modules share: paths, the stack's names, the targets it reports."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
RESULTS_DIR = REPO_ROOT / ".cache" / "bench"
# The bench's own `docker save` archives: the demo's (.cache/images) may be rewritten by a
# concurrent build while the bench runs, which would show up as a changed re-run.
ARCHIVES = RESULTS_DIR / "images"
# The testbed's archives ({name, path}), when the demo's inventory reads them from there.
ARCHIVE_LIST = REPO_ROOT / "scripts" / "testbed" / "archives.yml"
CALLBACKS = REPO_ROOT / "scripts" / "bench" / "callback_plugins"
DEMO_VARS = REPO_ROOT / "inventory" / "demo" / "group_vars" / "aima" / "main.yml"
# Over the demo's variables: the load phases upload far more than a person does, so the abuse
# limits that would answer 429 to them are lifted (the rate limit off, the queue cap raised).
BENCH_VARS = {"aima_upload_rate_per_minute": 0, "aima_max_queued_jobs": 1_000_000}
IMAGES = ("postgres", "redis", "caddy", "traefik", "backend", "worker")
STACK_DIR = "/opt/aima"
WORKER = "aima-gpu-worker"
BASE_SERVICES = ("reverse-proxy", "aima-backend", "database", "message-queue")
LABEL_KEY = "org.aima.bench"

TARGETS = {
    "gpu_on_ratio": 2.0,
    "gpu_off_ratio": 1.5,
    "rerun_s": 15.0,
    "provision_ratio_copy": 3.0,
    "base_mem_mib": 300.0,
    "ttfr_s": 10.0,
    "overhead_p50_ms": 20.0,
}


class BenchError(RuntimeError):
    """Something is broken (not merely slow): the benchmark stops with exit code 1."""


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)
