"""The backend's storage rules, in process, against the real PostgreSQL and Redis: the message
goes out only after the row is committed, a failed insert leaves nothing, orphaned files are
swept, and a commit whose answer is lost is checked before the client is answered.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from aima_common import streams
from aima_testkit import image_bytes, upload


def test_message_is_sent_only_after_the_row_is_committed(
    client: Any, servers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aima_backend import service as service_mod

    seen: list[bool] = []
    real = streams.enqueue_counted

    def spy(r: redis.Redis, stream: str, job_id: Any) -> int:
        with psycopg.connect(servers.database_url) as other:  # sees committed rows only
            row = other.execute("SELECT 1 FROM jobs WHERE id = %s", (job_id,)).fetchone()
        seen.append(row is not None)
        return real(r, stream, job_id)

    monkeypatch.setattr(service_mod.streams, "enqueue_counted", spy)
    assert upload(client, image_bytes(seed=7)).status_code == 201
    assert seen == [True]


def test_failed_insert_sends_nothing_and_keeps_no_file(
    client: Any, rds: redis.Redis, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    db: psycopg.Connection[Any],
) -> None:
    from aima_backend import service as service_mod

    def insert_fails(*_a: Any, **_k: Any) -> Any:
        raise psycopg.OperationalError("database went away")

    monkeypatch.setattr(service_mod, "insert_job", insert_fails)
    resp = upload(client, image_bytes(seed=8))
    assert resp.status_code == 503 and resp.json()["error"] == "database_unavailable"
    assert rds.xlen("aima:jobs") == 0
    assert [p for p in Path(env["AIMA_MEDIA_DIR"]).rglob("*") if p.is_file()] == []
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_orphaned_files_are_swept(client: Any, env: dict[str, str]) -> None:
    from aima_backend.sweeper import sweep_orphans

    media = Path(env["AIMA_MEDIA_DIR"])
    kept = upload(client, image_bytes(seed=30)).json()["id"]
    (media / ".incoming").mkdir(exist_ok=True)
    stale_tmp = media / ".incoming" / "upload-x.part"
    orphan = media / f"{uuid.uuid4()}.png"
    fresh_orphan = media / f"{uuid.uuid4()}.png"
    unrelated = media / "README"
    for p in (stale_tmp, orphan, fresh_orphan, unrelated):
        p.write_bytes(b"x")
    old = time.time() - 7200
    for p in [stale_tmp, orphan, unrelated, *media.glob(f"{kept}.*")]:
        import os

        os.utime(p, (old, old))
    assert sweep_orphans(client.app.state.backend.db, media, 3600) == 2
    assert not stale_tmp.exists() and not orphan.exists()
    assert fresh_orphan.exists() and unrelated.exists() and list(media.glob(f"{kept}.*"))


@pytest.mark.parametrize("stored", [True, False])
def test_a_commit_whose_answer_is_lost_is_checked_before_answering(
    stored: bool, client: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    db: psycopg.Connection[Any],
) -> None:
    """The connection breaks as the COMMIT is sent (the database killed at that moment): the
    row may or may not be stored. The backend asks again and answers the truth: 201 with the
    job when it is stored, 503 and no file when it is not; never a row the client was told
    does not exist."""
    from aima_backend import service as service_mod

    real = service_mod.insert_job

    def insert_then_lose_the_connection(conn: Any, *args: Any) -> Any:
        row = real(conn, *args)
        if stored:
            conn.commit()  # reached the database; its answer is what gets lost
        conn.close()  # the pool's COMMIT now fails
        return row

    monkeypatch.setattr(service_mod, "insert_job", insert_then_lose_the_connection)
    resp = upload(client, image_bytes(seed=11))
    count = db.execute("SELECT count(*) FROM jobs").fetchone()
    files = [p for p in Path(env["AIMA_MEDIA_DIR"]).glob("*") if p.is_file()]
    if stored:
        assert resp.status_code == 201, resp.text
        assert count == (1,) and len(files) == 1
        assert db.execute("SELECT id::text FROM jobs").fetchone() == (resp.json()["id"],)
    else:
        assert resp.status_code == 503 and resp.json()["error"] == "database_unavailable"
        assert count == (0,) and files == []
