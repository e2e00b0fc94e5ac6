"""The worker's rules, in process, against the real PostgreSQL and Redis.

Failure injection here is deterministic: these tests fail if the worker acknowledges before
the result is committed, if the backend sends the message before the job row is committed,
or if a done job can be processed twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from aima_common import jobs as jobs_mod
from aima_common import streams
from aima_common.config import Settings, load_settings
from aima_common.db import MIGRATIONS, Database, migrate
from aima_common.jobs import get_job, insert_job
from aima_testkit import assert_no_internals, image_bytes, stream_job_ids, upload
from aima_worker import worker as worker_mod
from aima_worker.analysis import NumpyAnalyser
from aima_worker.worker import Worker


@pytest.fixture
def make_worker(settings: Settings, env: dict[str, str]) -> Iterator[Any]:
    made: list[Database] = []

    def make(name: str = "w1", **overrides: str) -> Worker:
        s = load_settings({**env, "AIMA_WORKER_NAME": name, **overrides})
        db = Database(s.database_url)
        made.append(db)
        r = streams.connect_redis(s.redis_url)
        streams.ensure_group(r, s.stream, s.group)
        return Worker(s, db, r, NumpyAnalyser())

    yield make
    for db in made:
        db.close()


def drain(w: Worker, rounds: int = 50) -> None:
    """Run fetch/process rounds until a round finds nothing."""
    for _ in range(rounds):
        batch = w._fetch()
        if not batch:
            return
        w._process_batch(batch)


def status_of(db: psycopg.Connection[Any], job_id: str) -> tuple[Any, ...]:
    row = db.execute("SELECT status, attempts, error FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return tuple(row)


def runs_of(db: psycopg.Connection[Any], job_id: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in db.execute(
        "SELECT attempt, worker, outcome FROM job_runs WHERE job_id = %s ORDER BY id", (job_id,)
    )]


def pending(rds: redis.Redis) -> int:
    info: Any = rds.xpending("aima:jobs", "aima-workers")
    return int(info["pending"])


def test_jobs_are_analysed_stored_and_acked(
    client: Any, make_worker: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    png = upload(client, image_bytes("PNG", size=(32, 24), seed=1)).json()["id"]
    mp3 = upload(client, b"ID3\x04" + b"\x00" * 64, "a.mp3", "audio/mpeg").json()["id"]
    drain(make_worker("w1"))
    job = client.get(f"/api/jobs/{png}").json()
    assert job["status"] == "done" and job["device"] == "cpu" and job["worker"] == "w1"
    assert job["attempts"] == 1 and job["error"] is None
    assert job["result"]["supported"] is True and job["result"]["width"] == 32
    assert set(job["timings"]) >= {"decode_ms", "analyse_ms", "queue_wait_ms", "total_ms"}
    assert job["started_at"] and job["finished_at"]
    other = client.get(f"/api/jobs/{mp3}").json()
    assert other["status"] == "done" and other["result"]["supported"] is False
    assert "audio/mpeg" in other["result"]["reason"]
    assert runs_of(db, png) == [(1, "w1", "done")]
    assert pending(rds) == 0 and rds.xlen("aima:jobs") == 0  # acked and deleted


def test_no_ack_when_the_result_cannot_be_stored(
    client: Any, make_worker: Any, db: psycopg.Connection[Any], rds: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = upload(client, image_bytes(seed=2)).json()["id"]
    w = make_worker("w1", AIMA_CLAIM_IDLE_MS="100")

    def db_gone(_value: Any) -> Any:
        raise psycopg.OperationalError("database connection lost while storing")

    monkeypatch.setattr(jobs_mod, "jsonb", db_gone)
    batch = w._fetch()
    with pytest.raises(psycopg.OperationalError):
        w._process_batch(batch)
    # the result was not stored, so the message must still be pending
    assert pending(rds) == 1, "message acknowledged before its result was stored"
    assert status_of(db, job_id)[:2] == ("running", 1)
    monkeypatch.undo()
    time.sleep(0.15)
    drain(make_worker("w2", AIMA_CLAIM_IDLE_MS="100"))
    assert status_of(db, job_id) == ("done", 2, None)
    assert runs_of(db, job_id) == [(1, "w1", "error"), (2, "w2", "done")]
    assert pending(rds) == 0


def test_done_job_is_never_processed_again(
    client: Any, make_worker: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    job_id = upload(client, image_bytes(seed=3)).json()["id"]
    w = make_worker("w1")
    drain(w)
    for _ in range(3):  # duplicates: a re-sent outbox message, a replayed stream entry
        streams.enqueue(rds, "aima:jobs", job_id)
    drain(w)
    assert status_of(db, job_id) == ("done", 1, None)
    assert runs_of(db, job_id) == [(1, "w1", "done")]
    assert pending(rds) == 0


def test_malformed_messages_are_recorded_and_acked(
    client: Any, make_worker: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    w = make_worker("w1")
    rds.xadd("aima:jobs", {"foo": "bar"})
    rds.xadd("aima:jobs", {"job_id": "not-a-uuid"})
    rds.xadd("aima:jobs", {"job_id": str(uuid.uuid4())})
    good = upload(client, image_bytes(seed=4)).json()["id"]
    drain(w)
    reasons = [r[0] for r in db.execute("SELECT reason FROM dead_letters ORDER BY id")]
    assert len(reasons) == 3
    assert "no valid 'job_id'" in reasons[0] and "does not exist" in reasons[2]
    assert status_of(db, good)[0] == "done"
    assert pending(rds) == 0



def test_binary_and_huge_messages_are_dead_lettered_without_a_crash(
    client: Any, make_worker: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    """Bytes that are not UTF-8 (and NUL, which jsonb refuses) must not crash the reader:
    the message would be re-read and crash the worker again on every restart."""
    w = make_worker("w1")
    rds.xadd("aima:jobs", {"job_id": b"\x00\xff\xfe"})
    rds.xadd("aima:jobs", {b"\xff": b"\xfe", "job_id": "x" * 100_000})
    good = upload(client, image_bytes(seed=5)).json()["id"]
    drain(w)
    rows = db.execute("SELECT reason, fields::text FROM dead_letters ORDER BY id").fetchall()
    assert len(rows) == 2 and all("no valid 'job_id'" in r[0] for r in rows)
    assert all(len(r[1]) < 4000 for r in rows), "a huge message is stored whole"
    assert status_of(db, good)[0] == "done"
    assert pending(rds) == 0


def _insert_raw_job(db: psycopg.Connection[Any], media: Path, data: bytes, ctype: str) -> str:
    job_id = uuid.uuid4()
    (media / f"{job_id}.png").write_bytes(data)
    db.execute(
        "INSERT INTO jobs (id, filename, content_type, size, sha256, storage_name)"
        " VALUES (%s, 'x.png', %s, %s, %s, %s)",
        (job_id, ctype, len(data), "0" * 64, f"{job_id}.png"),
    )
    return str(job_id)


def test_failing_job_goes_to_failed_after_max_attempts(
    make_worker: Any, db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str]
) -> None:
    # a corrupt file that slipped past the backend (e.g. damaged on the volume later)
    broken = b"\x89PNG\r\n\x1a\nbroken"
    job_id = _insert_raw_job(db, Path(env["AIMA_MEDIA_DIR"]), broken, "image/png")
    streams.enqueue(rds, "aima:jobs", job_id)
    w = make_worker("w1", AIMA_MAX_ATTEMPTS="3", AIMA_CLAIM_IDLE_MS="100")
    w._claim_every = 0.05
    deadline = time.monotonic() + 10
    while status_of(db, job_id)[0] != "failed" and time.monotonic() < deadline:
        drain(w)
        time.sleep(0.05)
    status, attempts, error = status_of(db, job_id)
    assert (status, attempts) == ("failed", 3)
    assert "failed after 3 attempt(s)" in error and "cannot decode PNG" in error
    assert_no_internals(error)  # the API shows it: no decoder text naming the file's path
    assert [r[2] for r in runs_of(db, job_id)] == ["error", "error", "error"]
    # the operator's record keeps the decoder's own words
    detail = db.execute("SELECT error FROM job_runs WHERE job_id = %s LIMIT 1",
                        (job_id,)).fetchone()
    assert detail is not None and "caused by" in detail[0]
    assert pending(rds) == 0
    drain(w)  # nothing loops afterwards
    assert status_of(db, job_id)[1] == 3


@pytest.mark.parametrize("fault", ["missing-file", "internal"])
def test_failed_attempt_shows_clients_a_reason_not_the_exception(
    client: Any, make_worker: Any, db: psycopg.Connection[Any], env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, fault: str,
) -> None:
    job_id = upload(client, image_bytes(seed=6)).json()["id"]
    if fault == "missing-file":
        for p in Path(env["AIMA_MEDIA_DIR"]).glob(f"{job_id}.*"):
            p.unlink()
    else:
        def broken(_self: Any, _decoded: Any) -> Any:
            raise RuntimeError("CUDA error: device-side assert in /opt/venv/lib/x.py")

        monkeypatch.setattr(NumpyAnalyser, "analyse", broken)
    drain(make_worker("w1", AIMA_MAX_ATTEMPTS="1"))
    status, _attempts, error = status_of(db, job_id)
    assert status == "failed"
    expected = worker_mod.MISSING_FILE if fault == "missing-file" else worker_mod.INTERNAL
    assert error == f"failed after 1 attempt(s): {expected}"
    assert_no_internals(error)
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["error"] == error
    detail = db.execute("SELECT error FROM job_runs WHERE job_id = %s", (job_id,)).fetchone()
    assert detail is not None
    assert ("FileNotFoundError" if fault == "missing-file" else "CUDA error") in detail[0]


def test_job_that_keeps_killing_workers_is_dead_lettered(
    client: Any, make_worker: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    job_id = upload(client, image_bytes(seed=5)).json()["id"]
    # three workers died while holding it (crash, OOM kill): attempts used up, state running
    db.execute("UPDATE jobs SET status = 'running', attempts = 3 WHERE id = %s", (job_id,))
    drain(make_worker("w1", AIMA_MAX_ATTEMPTS="3"))
    status, attempts, error = status_of(db, job_id)
    assert (status, attempts) == ("failed", 3)
    assert error.startswith("gave up after 3 attempt(s)")
    assert pending(rds) == 0


def test_release_on_shutdown_hands_unstarted_messages_back(
    client: Any, make_worker: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    ids = [upload(client, image_bytes(seed=10 + i)).json()["id"] for i in range(4)]
    w = make_worker("w1")
    batch = w._fetch()
    assert len(batch) == 1  # one message at a time: nothing prefetched
    assert pending(rds) == 1
    w.stop.set()
    w._process_batch(batch)  # stopping: not started, released
    assert pending(rds) == 0 and rds.xlen("aima:jobs") == 4
    assert all(status_of(db, i) == ("queued", 0, None) for i in ids)
    drain(make_worker("w2"))
    assert all(status_of(db, i)[:2] == ("done", 1) for i in ids)


def test_message_reclaimed_from_our_batch_is_skipped(
    client: Any, make_worker: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    job_id = upload(client, image_bytes(seed=6)).json()["id"]
    slow, fast = make_worker("slow"), make_worker("fast", AIMA_CLAIM_IDLE_MS="100")
    batch = slow._fetch()
    time.sleep(0.15)
    drain(fast)  # takes the idle message over and finishes it
    slow._process_batch(batch)  # must notice it is no longer its message
    assert status_of(db, job_id) == ("done", 1, None)
    assert runs_of(db, job_id) == [(1, "fast", "done")]


# ---------------------------------------------------------------- backend outbox
def test_outbox_sends_jobs_whose_message_was_never_added(
    env: dict[str, str], db: psycopg.Connection[Any], rds: redis.Redis, make_worker: Any
) -> None:
    from aima_backend.app import create_app
    from fastapi.testclient import TestClient

    dead_redis = load_settings({**env, "AIMA_REDIS_URL": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(dead_redis)) as c:
        resp = upload(c, image_bytes(seed=9))
        assert resp.status_code == 201  # the row is durable; sending is deferred
        assert c.get("/api/health").status_code == 503
    job_id = resp.json()["id"]
    assert db.execute("SELECT enqueued_at FROM jobs WHERE id = %s", (job_id,)).fetchone() == (None,)
    assert rds.exists("aima:jobs") == 0
    with TestClient(create_app(load_settings(env))):  # a backend start runs the outbox pass
        assert stream_job_ids(rds) == [job_id]
    assert db.execute(
        "SELECT enqueued_at IS NOT NULL FROM jobs WHERE id = %s", (job_id,)
    ).fetchone() == (True,)
    drain(make_worker("w1"))
    assert status_of(db, job_id)[0] == "done"


def test_outbox_resends_everything_when_the_stream_was_lost(
    client: Any, rds: redis.Redis, db: psycopg.Connection[Any], make_worker: Any
) -> None:
    ids = {upload(client, image_bytes(seed=20 + i)).json()["id"] for i in range(3)}
    rds.flushall()  # Redis lost its data (no AOF, volume purged)
    backend = client.app.state.backend
    assert backend.recover_once() == 3
    assert set(stream_job_ids(rds)) == ids
    assert backend.recover_once() == 0
    drain(make_worker("w1"))
    assert {status_of(db, i)[0] for i in ids} == {"done"}


def test_outbox_resends_everything_when_redis_lost_its_data_and_a_worker_made_a_new_stream(
    client: Any, rds: redis.Redis, db: psycopg.Connection[Any], make_worker: Any
) -> None:
    """The stream exists again before the outbox looks (a worker re-created its group, an upload
    added to it): the counter that went down still tells the loss. No outbox pass ran between
    the uploads and the loss: each upload recorded the counter."""
    backend = client.app.state.backend
    old = {upload(client, image_bytes(seed=40 + i)).json()["id"] for i in range(3)}
    rds.flushall()  # Redis lost its data
    streams.ensure_group(rds, "aima:jobs", "aima-workers")  # a worker starts before the pass
    new = upload(client, image_bytes(seed=49)).json()["id"]
    assert stream_job_ids(rds) == [new]
    assert backend.recover_once() == 4  # every queued job, the new one again (harmless)
    assert set(stream_job_ids(rds)) == old | {new}
    assert backend.recover_once() == 0  # the new stream's counter is the base now
    drain(make_worker("w1"))
    for job_id in old | {new}:
        assert status_of(db, job_id)[0] == "done"
        runs = db.execute(
            "SELECT count(*) FROM job_runs WHERE job_id = %s AND outcome = 'done'", (job_id,)
        ).fetchone()
        assert runs == (1,), job_id  # done exactly once, though sent twice


def test_outbox_sends_nothing_again_while_the_queue_is_intact(
    client: Any, rds: redis.Redis, make_worker: Any
) -> None:
    """Processed messages are deleted from the stream; its counter does not go down, so no pass
    mistakes an emptied stream for a lost one."""
    backend = client.app.state.backend
    for i in range(3):
        upload(client, image_bytes(seed=60 + i))
    assert backend.recover_once() == 0
    drain(make_worker("w1"))
    assert stream_job_ids(rds) == []
    assert [backend.recover_once() for _ in range(3)] == [0, 0, 0]


# ---------------------------------------------------------------- schema
def test_migrations_are_idempotent_and_safe_concurrently(servers: Any) -> None:
    with psycopg.connect(servers.database_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS aima_migr")
        admin.execute("CREATE DATABASE aima_migr")
    url = servers.database_url.rsplit("/", 1)[0] + "/aima_migr"
    results: list[list[int]] = []

    def run() -> None:
        db = Database(url)
        with db.connection() as conn:
            results.append(migrate(conn))
        db.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [version for version, _sql in MIGRATIONS]
    assert sorted(results, key=len) == [[], [], [], every]  # all applied by exactly one
    run()
    assert results[-1] == []


def test_text_is_str_even_in_a_sql_ascii_database(servers: Any) -> None:
    with psycopg.connect(servers.database_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS aima_ascii")
        admin.execute("CREATE DATABASE aima_ascii ENCODING 'SQL_ASCII' TEMPLATE template0")
    db = Database(servers.database_url.rsplit("/", 1)[0] + "/aima_ascii")
    try:
        with db.connection() as conn:
            migrate(conn)
            job_id = uuid.uuid4()
            insert_job(conn, job_id, "caf\u00e9.png", "image/png", 1, "0" * 64, f"{job_id}.png")
            row = get_job(conn, job_id)
        assert row is not None
        assert row["content_type"] == "image/png" and row["filename"] == "caf\u00e9.png"
    finally:
        db.close()
