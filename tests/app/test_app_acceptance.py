"""Acceptance: 50 uploads through the real HTTP API, two workers, one SIGKILLed midway:
all 50 jobs end done, each exactly once."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import psycopg
import pytest
import redis
from aima_testkit import image_bytes, wait_until

JOBS = 50


@pytest.mark.slow
def test_fifty_jobs_two_workers_one_killed(
    live_backend: Any, workers: Any, db: psycopg.Connection[Any], rds: redis.Redis
) -> None:
    t0 = time.monotonic()
    formats = [("PNG", "image/png", ".png"), ("JPEG", "image/jpeg", ".jpg"),
               ("WEBP", "image/webp", ".webp")]
    ids: list[str] = []
    with httpx.Client(base_url=live_backend.url, timeout=30) as http:
        for i in range(JOBS):
            fmt, ctype, ext = formats[i % 3]
            data = image_bytes(fmt, size=(96, 64), seed=1000 + i)
            resp = http.post("/api/jobs", files={"file": (f"img-{i}{ext}", data, ctype)})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
        t_uploaded = time.monotonic()

        common = {"AIMA_WORKER_DELAY_MS": "120", "AIMA_CLAIM_IDLE_MS": "1000"}
        a = workers("worker-a", **common)
        b = workers("worker-b", **common)

        def done_count() -> int:
            row = db.execute("SELECT count(*) FROM jobs WHERE status = 'done'").fetchone()
            return int(row[0]) if row else 0

        wait_until(lambda: done_count() >= 12, timeout=60, what="12 jobs done")
        in_hand = wait_until(
            lambda: db.execute(
                "SELECT id FROM jobs WHERE status = 'running' AND worker = 'worker-a'"
            ).fetchone(),
            timeout=30, every=0.01, what="worker-a holding a job",
        )[0]
        a.signal(signal.SIGKILL)
        a.wait()
        t_killed = time.monotonic()
        row = db.execute("SELECT status, worker FROM jobs WHERE id = %s", (in_hand,)).fetchone()
        killed_mid_job = row == ("running", "worker-a")  # not finished in the last instant

        def all_done() -> bool:
            page = http.get("/api/jobs", params={"limit": 200}).json()
            return page["total"] == JOBS and all(j["status"] == "done" for j in page["items"])

        wait_until(all_done, timeout=90, every=0.2, what="all 50 jobs done")
        t_done = time.monotonic()
        jobs = {j["id"]: j for j in http.get("/api/jobs", params={"limit": 200}).json()["items"]}
        health = http.get("/api/health").json()

    # through the API: every job done with a real result
    assert set(jobs) == set(ids)
    for j in jobs.values():
        assert j["status"] == "done" and j["error"] is None and j["device"] == "cpu"
        assert j["result"]["supported"] is True and j["result"]["width"] == 96
        assert len(j["result"]["phash"]) == 16
    assert health["jobs"] == {"queued": 0, "running": 0, "done": JOBS, "failed": 0}

    # in the database: exactly one successful processing per job
    per_job = dict(db.execute(
        "SELECT job_id::text, count(*) FROM job_runs WHERE outcome = 'done' GROUP BY job_id"
    ).fetchall())
    assert per_job == dict.fromkeys(ids, 1)
    if killed_mid_job:  # the job worker-a held when it died was taken over by worker-b
        assert jobs[str(in_hand)]["worker"] == "worker-b" and jobs[str(in_hand)]["attempts"] == 2
        assert "reclaimed" in b.log()
    info: Any = rds.xpending("aima:jobs", "aima-workers")
    assert info["pending"] == 0 and rds.xlen("aima:jobs") == 0
    by_worker = dict(db.execute(
        "SELECT worker, count(*) FROM jobs GROUP BY worker"
    ).fetchall())
    print(
        f"\n50 jobs: upload {t_uploaded - t0:.1f} s, kill after {t_killed - t_uploaded:.1f} s,"
        f" all done {t_done - t_uploaded:.1f} s after upload; done by {by_worker}"
    )
