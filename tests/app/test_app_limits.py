"""Bounded resources: queue cap, per-client upload rate, free-space reserve, memory budget.

Every refusal comes before anything is stored: no row, no message, no file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from aima_common import memory
from aima_common.config import load_settings
from aima_testkit import assert_no_internals, image_bytes, upload
from PIL import Image

MIB = 1 << 20


@pytest.fixture
def make_client(env: dict[str, str]) -> Iterator[Callable[..., Any]]:
    from aima_backend.app import create_app
    from fastapi.testclient import TestClient

    opened: list[Any] = []

    def make(**overrides: str) -> Any:
        c = TestClient(create_app(load_settings({**env, **overrides})))
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def _refused(resp: Any, status: int, error: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["error"] == error and body["detail"], body
    assert_no_internals(resp.text)
    return body


def _stored(db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str]
            ) -> tuple[int, int, int]:
    """(job rows, stream messages, files on the media volume)"""
    row = db.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    files = [p for p in Path(env["AIMA_MEDIA_DIR"]).rglob("*") if p.is_file()]
    return int(row[0]), int(rds.xlen("aima:jobs")), len(files)


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- queue cap
def test_full_queue_is_429_with_retry_after_and_nothing_stored(
    make_client: Any, db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str]
) -> None:
    client = make_client(AIMA_MAX_QUEUED_JOBS="2")
    ids = [upload(client, image_bytes(seed=i)).json()["id"] for i in range(2)]
    resp = upload(client, image_bytes(seed=9))
    body = _refused(resp, 429, "queue_full")
    assert "2 jobs" in body["detail"]
    assert int(resp.headers["retry-after"]) > 0
    assert _stored(db, rds, env) == (2, 2, 2)
    # running jobs count too; done and failed ones do not
    db.execute("UPDATE jobs SET status = 'running' WHERE id = %s", (ids[0],))
    _refused(upload(client, image_bytes(seed=9)), 429, "queue_full")
    db.execute("UPDATE jobs SET status = 'done' WHERE id = %s", (ids[0],))
    assert upload(client, image_bytes(seed=9)).status_code == 201
    db.execute("UPDATE jobs SET status = 'failed' WHERE status = 'queued'")
    assert upload(client, image_bytes(seed=10)).status_code == 201


def test_queue_cap_zero_turns_it_off(make_client: Any) -> None:
    client = make_client(AIMA_MAX_QUEUED_JOBS="0")
    for i in range(3):
        assert upload(client, image_bytes(seed=i)).status_code == 201


# ---------------------------------------------------------------- per-client rate
def test_upload_rate_is_limited_per_forwarded_client(
    make_client: Any, db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str]
) -> None:
    client = make_client(AIMA_UPLOAD_RATE_PER_MINUTE="6", AIMA_UPLOAD_BURST="2")
    one = {"X-Forwarded-For": "203.0.113.5"}
    data = image_bytes(seed=1)
    for _ in range(2):
        resp = client.post("/api/jobs", files={"file": ("a.png", data, "image/png")},
                           headers=one)
        assert resp.status_code == 201, resp.text
    resp = client.post("/api/jobs", files={"file": ("a.png", data, "image/png")}, headers=one)
    _refused(resp, 429, "rate_limited")
    assert 1 <= int(resp.headers["retry-after"]) <= 10  # one upload per 10 s
    assert _stored(db, rds, env) == (2, 2, 2)
    # another client (the first X-Forwarded-For entry counts, not the proxies after it)
    other = {"X-Forwarded-For": "198.51.100.7, 203.0.113.5"}
    resp = client.post("/api/jobs", files={"file": ("a.png", data, "image/png")},
                       headers=other)
    assert resp.status_code == 201, resp.text
    # without the header the peer address is the client: its own bucket
    assert upload(client, data).status_code == 201


def test_rate_limiter_refills_evicts_and_can_be_off() -> None:
    from aima_backend.limits import RateLimiter

    now = [0.0]
    rl = RateLimiter(per_minute=60, burst=3, max_clients=100, clock=lambda: now[0])
    assert [rl.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("a") == pytest.approx(1.0)
    now[0] += 0.5
    assert rl.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert rl.take("a") == 0.0  # one token refilled after 1 s
    now[0] += 3600
    assert [rl.take("a") for _ in range(4)][-1] > 0  # refills up to the burst, not beyond
    for i in range(1000):
        rl.take(f"client-{i}")
    assert len(rl) == 100  # bounded: the least recently seen are dropped
    off = RateLimiter(per_minute=0, burst=1)
    assert all(off.take("a") == 0.0 for _ in range(100)) and len(off) == 0


# ---------------------------------------------------------------- free space
def test_too_little_free_space_is_507_before_anything_is_written(
    make_client: Any, db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str]
) -> None:
    for override in ({"AIMA_MIN_FREE_BYTES": str(1 << 50)}, {"AIMA_MIN_FREE_PERCENT": "90",
                                                             "AIMA_MIN_FREE_BYTES": "0"}):
        free = os.statvfs(env["AIMA_MEDIA_DIR"])
        if "AIMA_MIN_FREE_PERCENT" in override and free.f_bavail / free.f_blocks >= 0.9:
            continue  # an almost empty disk: the percentage case cannot be shown here
        client = make_client(**override)
        body = _refused(upload(client, image_bytes()), 507, "insufficient_storage")
        assert "nearly full" in body["detail"]
        assert _stored(db, rds, env) == (0, 0, 0)
        assert not (Path(env["AIMA_MEDIA_DIR"]) / ".incoming").exists()


def test_reserve_counts_the_declared_upload_and_the_larger_threshold() -> None:
    from aima_backend.limits import storage_shortfall

    gib = 1 << 30

    def fake(_path: Path) -> Any:  # 100 GiB file system, 10 GiB free
        return os.statvfs_result((4096, 4096, 100 * gib // 4096, 0, 10 * gib // 4096,
                                  0, 0, 0, 0, 255))

    where = Path("/nowhere")
    assert storage_shortfall(where, 4 * gib, 2 * gib, 5.0, fake) is None  # keeps 6 >= 5
    assert storage_shortfall(where, 6 * gib, 2 * gib, 5.0, fake) is not None  # 4 < 5 (5 %)
    assert storage_shortfall(where, 3 * gib, 8 * gib, 5.0, fake) is not None  # 7 < 8 bytes
    assert storage_shortfall(where, 10 * gib, 0, 0.0, fake) is None  # both off


# ---------------------------------------------------------------- memory budget
def test_memory_model_covers_a_measured_analysis() -> None:
    """The model's bytes per pixel is at least what the worker's analysis really takes."""
    from memory_probe import measure

    figures = measure(2000, 1500, "RGBA")
    assert figures["growth"] <= memory.analysis_bytes(int(figures["pixels"])) + 8 * MIB


def test_image_over_the_memory_budget_is_refused_at_upload(
    make_client: Any, db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str]
) -> None:
    # the default budget (1 GiB) cannot hold a 7000x7000 analysis (49 Mpx, under the cap)
    client = make_client()
    body = _refused(upload(client, _png(7000, 7000, "1")), 422, "image_too_large")
    assert "49000000 pixels" in body["detail"] and "1024 MiB" in body["detail"]
    # a small budget: 500x500 is too much, 64x48 fits
    small = make_client(AIMA_WORKER_MEMORY_BYTES=str(memory.BASE_BYTES + 4 * MIB))
    body = _refused(upload(small, _png(500, 500)), 422, "image_too_large")
    assert "250000 pixels" in body["detail"] and "260 MiB" in body["detail"]
    assert _stored(db, rds, env) == (0, 0, 0)
    assert upload(small, image_bytes(size=(64, 48))).status_code == 201
    # above the pixel cap it stays invalid_image, as before
    capped = make_client(AIMA_MAX_IMAGE_PIXELS="1000")
    _refused(upload(capped, _png(500, 500)), 422, "invalid_image")


def test_worker_fails_a_job_over_its_budget_at_once_without_retry(
    client: Any, env: dict[str, str], db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    from aima_common import streams
    from aima_common.db import Database
    from aima_worker.analysis import NumpyAnalyser
    from aima_worker.worker import Worker

    job_id = upload(client, _png(500, 500)).json()["id"]  # accepted under the default budget
    s = load_settings({**env, "AIMA_WORKER_NAME": "small",
                       "AIMA_WORKER_MEMORY_BYTES": str(memory.BASE_BYTES + 4 * MIB)})
    database = Database(s.database_url)
    try:
        w = Worker(s, database, streams.connect_redis(s.redis_url), NumpyAnalyser())
        for _ in range(3):
            batch = w._fetch()
            if batch:
                w._process_batch(batch)
    finally:
        database.close()
    row = db.execute("SELECT status, attempts, error FROM jobs WHERE id = %s", (job_id,))
    status, attempts, error = row.fetchone() or (None, None, None)
    assert (status, attempts) == ("failed", 1)
    assert error.startswith("failed after 1 attempt(s): image is 500x500 (250000 pixels)")
    assert "memory budget" in error
    info: Any = rds.xpending("aima:jobs", "aima-workers")
    assert int(info["pending"]) == 0  # acknowledged: never retried
    runs = db.execute("SELECT outcome FROM job_runs WHERE job_id = %s", (job_id,)).fetchall()
    assert runs == [("error",)]


def test_worker_budget_follows_the_containers_actual_memory_limit(tmp_path: Path) -> None:
    """A limit lowered by hand (docker update) shrinks the budget; none leaves it alone."""
    limit_file = tmp_path / "memory.max"
    limit_file.write_text("536870912\n")
    assert memory.cgroup_limit(limit_file) == 512 * MIB
    assert memory.effective_budget(4096 * MIB, limit_file) == 512 * MIB
    assert memory.effective_budget(256 * MIB, limit_file) == 256 * MIB
    limit_file.write_text("max\n")
    assert memory.cgroup_limit(limit_file) is None
    assert memory.effective_budget(4096 * MIB, limit_file) == 4096 * MIB
    absent = tmp_path / "absent"
    assert memory.effective_budget(4096 * MIB, absent, absent) == 4096 * MIB
    # cgroup v1: memory.limit_in_bytes, where "no limit" is a page-rounded 2**63 - 1
    v1 = tmp_path / "memory.limit_in_bytes"
    v1.write_text("805306368\n")
    assert memory.effective_budget(4096 * MIB, absent, v1) == 768 * MIB
    v1.write_text("9223372036854771712\n")
    assert memory.cgroup_limit(absent, v1) is None


def test_an_upload_that_never_finishes_gets_408_and_leaves_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A client that sends its head and part of the body, then nothing: after
    AIMA_UPLOAD_TIMEOUT_S the backend answers 408 and removes the partial file."""
    import socket
    import time
    from urllib.parse import urlsplit

    from aima_testkit import running_backend

    media = Path(env["AIMA_MEDIA_DIR"])
    with running_backend(env, tmp_path / "backend.log", AIMA_UPLOAD_TIMEOUT_S="1.5") as (url, _):
        address = urlsplit(url)
        head = (b"POST /api/jobs HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: multipart/form-data; boundary=b0undary\r\n"
                b"Content-Length: 1000000\r\n\r\n"
                b"--b0undary\r\nContent-Disposition: form-data; name=\"file\";"
                b" filename=\"slow.png\"\r\nContent-Type: image/png\r\n\r\n")
        with socket.create_connection((address.hostname, address.port), timeout=15) as sock:
            started = time.monotonic()
            sock.sendall(head + image_bytes(seed=21)[:500])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and b"}" in answer:
                    break
            held = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b'"upload_timeout"' in answer
    assert 1.4 < held < 10, held
    assert [p for p in media.rglob("*") if p.is_file()] == []
