"""Secrets as files, end to end: a non-superuser PostgreSQL role and a Redis ACL user.

The backend and a worker run as processes with URLs that carry no credentials and the
passwords in files (``AIMA_DATABASE_PASSWORD_FILE``, ``AIMA_REDIS_PASSWORD_FILE`` plus
``AIMA_REDIS_USERNAME``), as the deployment passes them. The role owns only its database (the
migrations run as that role); the ACL user may use stream commands on ``aima:*`` keys only.
Both health checks pass, a job is done, and no log line shows a password.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import redis
from aima_testkit import (
    REPO,
    WorkerProc,
    image_bytes,
    running_backend,
    subprocess_env,
    wait_until,
)
from psycopg import sql

# What the app needs from Redis: stream commands, EXISTS (the outbox checks the stream),
# PING (health) and MULTI/EXEC (ack + delete in one transaction), on its own keys only. (The
# client library's CLIENT SETINFO on connect may be refused: it ignores that answer.)
REDIS_ACL = ["on", "resetkeys", "~aima:*", "resetchannels", "-@all", "+@stream", "+exists",
             "+ping", "+multi", "+exec", "+discard"]


@pytest.fixture
def file_env(servers: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    suffix = secrets.token_hex(4)
    role, database = f"aima_app_{suffix}", f"aima_app_{suffix}"
    db_password = "pg-" + secrets.token_urlsafe(12) + "@:/%"
    redis_user, redis_password = f"aima-app-{suffix}", "rd-" + secrets.token_urlsafe(12)
    admin = urlsplit(servers.database_url)
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}")
            .format(sql.Identifier(role), sql.Literal(db_password))
        )
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}")
                     .format(sql.Identifier(database), sql.Identifier(role)))
    rds = redis.Redis.from_url(servers.redis_url)
    rds.flushall()
    rds.acl_setuser(redis_user, enabled=True, reset=True)
    rds.execute_command("ACL", "SETUSER", redis_user, *REDIS_ACL, f">{redis_password}")
    (tmp_path / "db-password").write_text(db_password + "\n")
    (tmp_path / "redis-password").write_text(redis_password + "\n")
    media = tmp_path / "media"
    media.mkdir()
    redis_admin = urlsplit(servers.redis_url)
    yield {
        "AIMA_DATABASE_URL": f"postgresql://{role}@{admin.hostname}:{admin.port}/{database}",
        "AIMA_DATABASE_PASSWORD_FILE": str(tmp_path / "db-password"),
        "AIMA_REDIS_URL": f"redis://{redis_admin.hostname}:{redis_admin.port}/0",
        "AIMA_REDIS_USERNAME": redis_user,
        "AIMA_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"),
        "AIMA_MEDIA_DIR": str(media),
        "AIMA_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "AIMA_WORKER_DEVICE": "cpu",
        "AIMA_BLOCK_MS": "200",
        "AIMA_OUTBOX_GRACE_S": "0",
        "_DB_PASSWORD": db_password,
        "_REDIS_PASSWORD": redis_password,
    }
    rds.acl_deluser(redis_user)
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                     .format(sql.Identifier(database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _healthcheck(
    module: str, env: dict[str, str], **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module], env=subprocess_env(env, **extra),
                          capture_output=True, text=True, timeout=30, cwd=REPO)


def test_backend_and_worker_run_with_password_files(
    file_env: dict[str, str], tmp_path: Path
) -> None:
    passwords = (file_env.pop("_DB_PASSWORD"), file_env.pop("_REDIS_PASSWORD"))
    worker = WorkerProc(file_env, tmp_path, "acl-worker")
    try:
        with running_backend(file_env, tmp_path / "backend.log") as (url, _proc):
            resp = httpx.post(f"{url}/api/jobs",
                              files={"file": ("a.png", image_bytes(), "image/png")})
            assert resp.status_code == 201, resp.text
            job_id = resp.json()["id"]

            def done() -> bool:
                return httpx.get(f"{url}/api/jobs/{job_id}").json()["status"] == "done"

            wait_until(done, timeout=30, what="the job done by the ACL worker")
            health = httpx.get(f"{url}/api/health").json()
            assert health["status"] == "ok" and health["workers"] == 1
            port = url.rsplit(":", 1)[1]
            backend_check = _healthcheck("aima_backend.healthcheck", file_env,
                                         AIMA_HTTP_PORT=port)
            assert backend_check.returncode == 0, backend_check.stdout
            worker_check = _healthcheck("aima_worker.healthcheck", file_env)
            assert worker_check.returncode == 0, worker_check.stdout
        logs = (tmp_path / "backend.log").read_text() + worker.log()
    finally:
        worker.stop()
    for secret in passwords:
        assert secret not in logs


def test_the_role_is_not_a_superuser_and_the_acl_user_is_confined(
    file_env: dict[str, str]
) -> None:
    from aima_common.config import load_settings

    file_env.pop("_DB_PASSWORD")
    file_env.pop("_REDIS_PASSWORD")
    s = load_settings(file_env)
    with psycopg.connect(s.database_url) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert row.fetchone() == (False,)
    client = redis.Redis.from_url(s.redis_url)
    assert client.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("other:key", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
