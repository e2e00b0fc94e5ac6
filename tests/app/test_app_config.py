"""Configuration from the environment, and the two healthcheck commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aima_common.config import ConfigError, load_settings, redact_url
from aima_testkit import REPO, free_port, subprocess_env
from aima_worker.healthcheck import check

BASE = {"AIMA_DATABASE_URL": "postgresql://u:p@database:5432/aima",
        "AIMA_REDIS_URL": "redis://:secret@message-queue:6379/0"}


def test_defaults_follow_the_contract() -> None:
    s = load_settings(BASE)
    assert s.http_port == 8000 and s.media_dir == Path("/data/media")
    assert s.max_upload_bytes == 52_428_800
    assert (s.stream, s.group) == ("aima:jobs", "aima-workers")
    assert s.worker_device == "auto" and s.worker_name
    assert (s.claim_idle_ms, s.max_attempts, s.shutdown_grace_s) == (60_000, 3, 20.0)
    assert s.block_ms <= 5000
    assert s.heartbeat_file == Path("/tmp/aima-worker.heartbeat")


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("postgresql://u:filepass@database/aima\n")
    (tmp_path / "rd").write_text("redis://:filepass@message-queue:6379/0")
    s = load_settings({"AIMA_DATABASE_URL_FILE": str(tmp_path / "db"),
                       "AIMA_REDIS_URL_FILE": str(tmp_path / "rd")})
    assert s.database_url == "postgresql://u:filepass@database/aima"
    assert s.redis_url.endswith("@message-queue:6379/0")
    assert "filepass" not in str(s.redacted())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"AIMA_DATABASE_URL": ""}, "AIMA_DATABASE_URL"),
        ({"AIMA_DATABASE_URL_FILE": "/nonexistent/x"}, "AIMA_DATABASE_URL_FILE"),
        ({"AIMA_DATABASE_URL": "mysql://x"}, "postgresql://"),
        ({"AIMA_REDIS_URL": "http://x"}, "redis://"),
        ({"AIMA_WORKER_DEVICE": "tpu"}, "auto, gpu, cpu"),
        ({"AIMA_HTTP_PORT": "70000"}, "AIMA_HTTP_PORT"),
        ({"AIMA_MAX_ATTEMPTS": "0"}, "AIMA_MAX_ATTEMPTS"),
        ({"AIMA_MAX_UPLOAD_BYTES": "lots"}, "not an integer"),
        ({"AIMA_SHUTDOWN_GRACE_S": "soon"}, "not a number"),
        ({"AIMA_BLOCK_MS": "60000"}, "AIMA_BLOCK_MS"),
        ({"AIMA_MEDIA_DIR": "relative/dir"}, "absolute"),
        ({"AIMA_STREAM": "a b"}, "AIMA_STREAM"),
    ],
)
def test_bad_values_name_the_variable(extra: dict[str, str], message: str) -> None:
    env = {**BASE, **extra}
    if "AIMA_DATABASE_URL_FILE" in extra:
        env.pop("AIMA_DATABASE_URL")
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_both_value_and_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("postgresql://x/y")
    with pytest.raises(ConfigError, match="only one"):
        load_settings({**BASE, "AIMA_DATABASE_URL_FILE": str(tmp_path / "db")})


def test_redact_url() -> None:
    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("postgresql://user:pw@db/aima") == "postgresql://user:***@db/aima"
    assert redact_url("redis://host") == "redis://host"


def test_worker_healthcheck_freshness(tmp_path: Path) -> None:
    hb = tmp_path / "hb"
    assert check(str(hb), 30)[0] is False
    hb.write_text("x")
    assert check(str(hb), 30)[0] is True
    old = time.time() - 31
    os.utime(hb, (old, old))
    ok, message = check(str(hb), 30)
    assert not ok and "old" in message


def _run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module], env=env, capture_output=True,
                          text=True, timeout=30, cwd=REPO)


def test_backend_healthcheck_command(live_backend: Any, env: dict[str, str]) -> None:
    port = live_backend.url.rsplit(":", 1)[1]
    ok = _run("aima_backend.healthcheck", subprocess_env(env, AIMA_HTTP_PORT=port))
    assert ok.returncode == 0, ok.stdout
    closed = str(free_port())
    bad = _run("aima_backend.healthcheck", subprocess_env(env, AIMA_HTTP_PORT=closed))
    assert bad.returncode == 1


def test_backend_health_503_names_the_failed_part(env: dict[str, str]) -> None:
    from aima_backend.service import Backend

    down_db = Backend(load_settings({**env, "AIMA_DATABASE_URL": "postgresql://x:y@127.0.0.1:1/z"}))
    status, body = down_db.health()
    assert status == 503 and body["status"] == "degraded"
    assert body["database"] == "unavailable" and body["queue"] == "ok"
    assert body["jobs"] is None
    down_q = Backend(load_settings({**env, "AIMA_REDIS_URL": "redis://127.0.0.1:1/0"}))
    status, body = down_q.health()
    assert status == 503 and body["database"] == "ok" and body["queue"] == "unavailable"
    assert body["workers"] is None
    assert "y@" not in str(body)


# ---------------------------------------------------------------- passwords from files
NO_PW = {"AIMA_DATABASE_URL": "postgresql://aima@database:5432/aima",
         "AIMA_REDIS_URL": "redis://message-queue:6379/0"}


def test_passwords_from_files_join_the_urls(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("p@ss:w/rd%\n")
    (tmp_path / "rd").write_text("r3d!s pw")
    s = load_settings({**NO_PW, "AIMA_DATABASE_PASSWORD_FILE": str(tmp_path / "db"),
                       "AIMA_REDIS_PASSWORD_FILE": str(tmp_path / "rd"),
                       "AIMA_REDIS_USERNAME": "aima-app"})
    assert s.database_url == "postgresql://aima:p%40ss%3Aw%2Frd%25@database:5432/aima"
    assert s.redis_url == "redis://aima-app:r3d%21s%20pw@message-queue:6379/0"
    for text in (str(s.redacted()), repr(s)):
        assert "p%40ss" not in text and "r3d" not in text
    # the Redis password alone: the default user
    s = load_settings({**NO_PW, "AIMA_REDIS_PASSWORD_FILE": str(tmp_path / "rd")})
    assert s.redis_url == "redis://:r3d%21s%20pw@message-queue:6379/0"
    assert s.database_url == NO_PW["AIMA_DATABASE_URL"]


@pytest.mark.parametrize("var", ["AIMA_DATABASE_PASSWORD_FILE", "AIMA_REDIS_PASSWORD_FILE"])
def test_bad_password_files_name_the_variable_not_the_value(tmp_path: Path, var: str) -> None:
    cases = {"missing": tmp_path / "nope", "empty": tmp_path / "empty",
             "unreadable": tmp_path / "dir", "two lines": tmp_path / "two"}
    (tmp_path / "empty").write_text("  \n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "two").write_text("s3cretvalue\nmore\n")
    for why, path in cases.items():
        with pytest.raises(ConfigError, match=var) as info:
            load_settings({**NO_PW, var: str(path)})
        assert "s3cretvalue" not in str(info.value), why


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"AIMA_DATABASE_URL": "postgresql://u:inline@db/aima"}, "only one"),
        ({"AIMA_DATABASE_URL": "postgresql://db/aima"}, "must name the user"),
        ({"AIMA_REDIS_URL": "redis://:inline@mq:6379/0"}, "only one"),
        ({"AIMA_REDIS_URL": "redis://someone@mq:6379/0"}, "only one"),
    ],
)
def test_url_with_password_and_password_file_conflict(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    (tmp_path / "pw").write_text("x")
    env = {**NO_PW, **extra, "AIMA_DATABASE_PASSWORD_FILE": str(tmp_path / "pw"),
           "AIMA_REDIS_PASSWORD_FILE": str(tmp_path / "pw")}
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(env)
    assert "inline" not in str(info.value)


def test_redis_username_needs_a_password_file() -> None:
    with pytest.raises(ConfigError, match="AIMA_REDIS_USERNAME"):
        load_settings({**NO_PW, "AIMA_REDIS_USERNAME": "aima-app"})


def test_new_limits_have_safe_defaults_and_are_checked() -> None:
    s = load_settings(BASE)
    assert s.worker_memory_bytes == 1 << 30
    assert s.max_queued_jobs == 1000
    assert (s.upload_rate_per_minute, s.upload_burst) == (30.0, 10)
    assert (s.min_free_bytes, s.min_free_percent) == (2 << 30, 5.0)
    assert s.media_retention_days == 0
    for var, bad in [("AIMA_WORKER_MEMORY_BYTES", "1000"), ("AIMA_MAX_QUEUED_JOBS", "-1"),
                     ("AIMA_UPLOAD_RATE_PER_MINUTE", "fast"), ("AIMA_MIN_FREE_PERCENT", "95"),
                     ("AIMA_MEDIA_RETENTION_DAYS", "-3"), ("AIMA_UPLOAD_BURST", "0")]:
        with pytest.raises(ConfigError, match=var):
            load_settings({**BASE, var: bad})
