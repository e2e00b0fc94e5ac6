"""Media retention: files of jobs finished over AIMA_MEDIA_RETENTION_DAYS ago are removed.

Timestamps are moved back in the database (and the files' own times on disk) to stand for age.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aima_common.config import load_settings
from aima_common.db import Database
from aima_testkit import image_bytes, upload

DAY = 86_400


@pytest.fixture
def database(env: dict[str, str]) -> Iterator[Database]:
    d = Database(load_settings(env).database_url)
    yield d
    d.close()


def _age(db: psycopg.Connection[Any], media: Path, job_id: str, status: str, days: float
         ) -> Path:
    """Make a job ``status``, finished ``days`` ago, its file as old; return the file."""
    db.execute(
        "UPDATE jobs SET status = %s, created_at = now() - make_interval(secs => %s),"
        " finished_at = CASE WHEN %s IN ('done', 'failed')"
        " THEN now() - make_interval(secs => %s) END WHERE id = %s",
        (status, days * DAY + 60, status, days * DAY, job_id),
    )
    row = db.execute("SELECT storage_name FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    path = media / row[0]
    old = time.time() - days * DAY - 60
    os.utime(path, (old, old))
    return path


def test_old_finished_media_is_removed_rows_and_results_kept(
    client: Any, env: dict[str, str], db: psycopg.Connection[Any], database: Database
) -> None:
    from aima_backend.sweeper import remove_expired_media

    media = Path(env["AIMA_MEDIA_DIR"])
    ids = [upload(client, image_bytes(seed=i)).json()["id"] for i in range(6)]
    cases = {  # job -> (status, finished/created days ago, file removed?)
        ids[0]: ("done", 8, True),
        ids[1]: ("failed", 30, True),  # failed includes dead-lettered jobs
        ids[2]: ("done", 6, False),  # too young
        ids[3]: ("queued", 40, False),  # never while queued ...
        ids[4]: ("running", 40, False),  # ... or running
        ids[5]: ("done", 8, False),  # finished long ago, but its file is young (see below)
    }
    paths = {j: _age(db, media, j, status, days) for j, (status, days, _) in cases.items()}
    os.utime(paths[ids[5]], None)  # the file itself is new
    db.execute("UPDATE jobs SET result = '{\"supported\": true}' WHERE id = %s", (ids[0],))

    assert remove_expired_media(database, media, 7) == 2
    for job_id, (_status, _days, gone) in cases.items():
        assert paths[job_id].exists() is not gone, job_id
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["media_removed"] is gone, job_id
    kept = client.get(f"/api/jobs/{ids[0]}").json()
    assert kept["status"] == "done" and kept["result"] == {"supported": True}
    listed = {j["id"]: j["media_removed"] for j in client.get("/api/jobs").json()["items"]}
    assert listed[ids[0]] is True and listed[ids[2]] is False

    # idempotent: a second pass finds nothing, the recorded time stays
    first = db.execute("SELECT media_removed_at FROM jobs WHERE id = %s", (ids[0],)).fetchone()
    assert remove_expired_media(database, media, 7) == 0
    again = db.execute("SELECT media_removed_at FROM jobs WHERE id = %s", (ids[0],)).fetchone()
    assert first == again
    # 0 days = keep forever
    assert remove_expired_media(database, media, 0) == 0
    assert paths[ids[2]].exists()


def test_a_file_already_gone_is_recorded(
    client: Any, env: dict[str, str], db: psycopg.Connection[Any], database: Database
) -> None:
    from aima_backend.sweeper import remove_expired_media

    media = Path(env["AIMA_MEDIA_DIR"])
    job_id = upload(client, image_bytes()).json()["id"]
    _age(db, media, job_id, "done", 10).unlink()
    assert remove_expired_media(database, media, 7) == 1
    assert client.get(f"/api/jobs/{job_id}").json()["media_removed"] is True


def test_the_backend_loop_applies_retention(
    env: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    from aima_backend.app import create_app
    from aima_testkit import wait_until
    from fastapi.testclient import TestClient

    settings = load_settings({**env, "AIMA_MEDIA_RETENTION_DAYS": "1",
                              "AIMA_RECOVERY_INTERVAL_S": "0.2"})
    media = Path(env["AIMA_MEDIA_DIR"])
    with TestClient(create_app(settings)) as c:
        job_id = upload(c, image_bytes()).json()["id"]
        path = _age(db, media, job_id, "done", 2)
        wait_until(lambda: not path.exists(), timeout=10, what="the retention pass")
        assert c.get(f"/api/jobs/{job_id}").json()["media_removed"] is True


def test_migration_2_upgrades_a_version_1_database(
    servers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from aima_common import db as db_mod

    with psycopg.connect(servers.database_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS aima_upgrade")
        admin.execute("CREATE DATABASE aima_upgrade")
    url = servers.database_url.rsplit("/", 1)[0] + "/aima_upgrade"
    d = Database(url)
    try:
        full = db_mod.MIGRATIONS
        monkeypatch.setattr(db_mod, "MIGRATIONS", full[:1])
        with d.connection() as conn:
            assert db_mod.migrate(conn) == [1]
            conn.execute(
                "INSERT INTO jobs (id, filename, content_type, size, sha256, storage_name,"
                " status) VALUES (%s, 'a.png', 'image/png', 1, %s, 'a.png', 'done')",
                (uuid.uuid4(), "0" * 64),
            )
        monkeypatch.setattr(db_mod, "MIGRATIONS", full)
        with d.connection() as conn:
            assert db_mod.migrate(conn) == [version for version, _sql in full[1:]]
            rows = conn.execute("SELECT status, media_removed_at FROM jobs").fetchall()
        assert [(r["status"], r["media_removed_at"]) for r in rows] == [("done", None)]
    finally:
        d.close()
        with psycopg.connect(servers.database_url, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS aima_upgrade WITH (FORCE)")
