"""The worker as a real process: signals, crashes, restarts (real PostgreSQL and Redis)."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from aima_testkit import REPO, image_bytes, subprocess_env, upload, wait_until


def job_row(db: psycopg.Connection[Any], job_id: str) -> dict[str, Any]:
    cur = db.execute(
        "SELECT status, attempts, worker, error FROM jobs WHERE id = %s", (job_id,)
    )
    row = cur.fetchone()
    assert row is not None
    return dict(zip(["status", "attempts", "worker", "error"], row, strict=True))


def done_runs(db: psycopg.Connection[Any], job_id: str) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT worker FROM job_runs WHERE job_id = %s AND outcome = 'done'", (job_id,)
    )]


def pending(rds: redis.Redis) -> int:
    info: Any = rds.xpending("aima:jobs", "aima-workers")
    return int(info["pending"])


def running_on(db: psycopg.Connection[Any], job_id: str, worker: str) -> bool:
    row = job_row(db, job_id)
    return row["status"] == "running" and row["worker"] == worker


def test_worker_starts_logs_device_heartbeats_and_stops_on_sigterm(
    client: Any, workers: Any, db: psycopg.Connection[Any], rds: redis.Redis,
    env: dict[str, str],
) -> None:
    rds.xadd("aima:jobs", {"garbage": "1"})  # a poison message first: must not crash-loop
    w = workers("w1", AIMA_WORKER_DEVICE="auto")
    w.wait_log(r"aima-worker w1 starting: device=\S+")
    job_id = upload(client, image_bytes(seed=1)).json()["id"]
    wait_until(lambda: job_row(db, job_id)["status"] == "done", what="job done")
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (1,)
    hb = Path(env["AIMA_HEARTBEAT_FILE"])
    assert hb.exists() and time.time() - hb.stat().st_mtime < 5
    check = subprocess.run(
        [sys.executable, "-m", "aima_worker.healthcheck"], env=subprocess_env(env),
        capture_output=True, text=True, cwd=REPO,
    )
    assert check.returncode == 0, check.stdout
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5
    consumers: Any = rds.xinfo_consumers("aima:jobs", "aima-workers")
    assert [c["name"] for c in consumers] == []  # left the group: nothing pending


def test_worker_is_healthy_once_it_joined_the_group_even_on_an_empty_queue(
    workers: Any, rds: redis.Redis, env: dict[str, str],
) -> None:
    """The heartbeat (what the container's health check reads) comes when the worker has
    joined the consumer group, not after its first blocking read on an empty queue."""
    hb = Path(env["AIMA_HEARTBEAT_FILE"])
    hb.unlink(missing_ok=True)
    w = workers("w1", AIMA_BLOCK_MS="5000")  # the longest blocking read there is
    w.wait_log(r"aima-worker w1 starting")
    # Within 4 s of its start: before its first blocking read (5 s) could have returned.
    wait_until(hb.exists, what="the first heartbeat", timeout=4)
    consumers: Any = rds.xinfo_consumers("aima:jobs", "aima-workers")
    assert [c["name"] for c in consumers] == ["w1"]
    check = subprocess.run(
        [sys.executable, "-m", "aima_worker.healthcheck"], env=subprocess_env(env),
        capture_output=True, text=True, cwd=REPO,
    )
    assert check.returncode == 0, check.stdout
    w.signal(signal.SIGTERM)
    assert w.wait(timeout=15) == 0


def test_gpu_mode_without_cuda_exits_with_a_clear_message(env: dict[str, str]) -> None:
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    proc = subprocess.run(
        [sys.executable, "-m", "aima_worker"],
        env=subprocess_env(env, AIMA_WORKER_DEVICE="gpu"),
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert proc.returncode == 3
    assert "AIMA_WORKER_DEVICE=gpu but" in proc.stdout + proc.stderr


def test_bad_configuration_exits_2(env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aima_worker"],
        env=subprocess_env(env, AIMA_MAX_ATTEMPTS="zero"),
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert proc.returncode == 2 and "AIMA_MAX_ATTEMPTS" in proc.stdout


def test_sigkill_mid_job_is_reclaimed_and_done_once(
    client: Any, workers: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    a = workers("a", AIMA_WORKER_DELAY_MS="30000")
    a.wait_log("starting")
    job_id = upload(client, image_bytes(seed=2)).json()["id"]
    wait_until(lambda: running_on(db, job_id, "a"), what="job running on a")
    a.signal(signal.SIGKILL)
    a.wait()
    b = workers("b", AIMA_CLAIM_IDLE_MS="500")
    wait_until(lambda: job_row(db, job_id)["status"] == "done", what="job done by b")
    row = job_row(db, job_id)
    assert (row["worker"], row["attempts"]) == ("b", 2)
    assert done_runs(db, job_id) == ["b"]
    assert pending(rds) == 0
    assert "reclaimed 1 message" in b.log()


def test_sigterm_mid_job_finishes_it_and_exits_0(
    client: Any, workers: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    ids = [upload(client, image_bytes(seed=10 + i)).json()["id"] for i in range(3)]
    # the worker reads one message at a time: the other two are never delivered to it
    a = workers("a", AIMA_WORKER_DELAY_MS="1500", AIMA_SHUTDOWN_GRACE_S="20")
    wait_until(lambda: running_on(db, ids[0], "a"), what="first job running")
    a.signal(signal.SIGTERM)
    assert a.wait(timeout=20) == 0
    assert job_row(db, ids[0])["status"] == "done"  # the job in hand was finished
    assert [job_row(db, i)["status"] for i in ids[1:]] == ["queued", "queued"]
    assert pending(rds) == 0 and rds.xlen("aima:jobs") == 2


def test_sigterm_past_the_grace_period_leaves_the_job_pending(
    client: Any, workers: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    a = workers("a", AIMA_WORKER_DELAY_MS="30000", AIMA_SHUTDOWN_GRACE_S="0.5")
    a.wait_log("starting")
    job_id = upload(client, image_bytes(seed=3)).json()["id"]
    wait_until(lambda: running_on(db, job_id, "a"), what="job running on a")
    t0 = time.monotonic()
    a.signal(signal.SIGTERM)
    assert a.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 3
    assert "leaving job" in a.log()
    assert pending(rds) == 1 and job_row(db, job_id)["status"] == "running"
    workers("b", AIMA_CLAIM_IDLE_MS="300")
    wait_until(lambda: job_row(db, job_id)["status"] == "done", what="job done by b")
    assert job_row(db, job_id)["attempts"] == 2 and done_runs(db, job_id) == ["b"]


def test_restart_under_the_same_name_resumes_its_own_pending_job(
    client: Any, workers: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    a = workers("same", AIMA_WORKER_DELAY_MS="30000")
    a.wait_log("starting")
    job_id = upload(client, image_bytes(seed=4)).json()["id"]
    wait_until(lambda: running_on(db, job_id, "same"), what="job running")
    a.signal(signal.SIGKILL)
    a.wait()
    # a long idle time: only re-reading its own pending history can pick the job up quickly
    again = workers("same", AIMA_CLAIM_IDLE_MS="600000")
    wait_until(lambda: job_row(db, job_id)["status"] == "done", timeout=15, what="job done")
    assert "resuming 1 pending message" in again.log()
    assert job_row(db, job_id)["attempts"] == 2 and done_runs(db, job_id) == ["same"]
    assert pending(rds) == 0
