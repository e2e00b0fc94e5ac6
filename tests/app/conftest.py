"""Test harness for app/: starts a real PostgreSQL and a real Redis on loopback ports.

Both servers are started once per session in temporary directories (PostgreSQL through
``runuser -u postgres`` when running as root, which PostgreSQL refuses) and stopped at the end.
Every test that asks for ``env`` gets an empty database and an empty Redis.
Needs the Debian packages ``postgresql`` and ``redis-server`` (``chromium`` for test_web.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import redis
from aima_testkit import (
    WorkerProc,
    free_port,
    pg_bindir,
    running_backend,
    wait_until,
)

if TYPE_CHECKING:
    from aima_common.config import Settings


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs PyTorch and a usable CUDA device")
    config.addinivalue_line("markers", "chromium: drives Debian's headless chromium")
    config.addinivalue_line("markers", "slow: a multi-process end-to-end case")
    # starlette's TestClient announces a future switch of its HTTP client; not our concern
    config.addinivalue_line(
        "filterwarnings", "ignore:Using `httpx` with `starlette.testclient`"
    )


@dataclass
class Servers:
    database_url: str
    redis_url: str


# ---------------------------------------------------------------- the servers
@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    bindir = pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql")
    base = Path(tempfile.mkdtemp(prefix="aima-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root needs runuser to start PostgreSQL as 'postgres'")
        shutil.chown(base, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_hex(12)
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    if prefix:
        shutil.chown(pwfile, "postgres", "postgres")
    data, port = base / "data", free_port()
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "aima", f"--pwfile={pwfile}",
         "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
        check=True, capture_output=True,
    )
    opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
         "-t", "60", "-o", opts, "start"],
        check=True, capture_output=True,
    )
    admin = f"postgresql://aima:{password}@127.0.0.1:{port}/postgres"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE aima")
        url = f"postgresql://aima:{password}@127.0.0.1:{port}/aima"
        from aima_common.db import migrate

        with psycopg.connect(url) as conn:
            migrate(conn)  # type: ignore[arg-type]
        yield url
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    base = Path(tempfile.mkdtemp(prefix="aima-redis-"))
    port, password = free_port(), secrets.token_hex(12)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(base),
         "--save", "", "--appendonly", "no", "--requirepass", password,
         "--logfile", str(base / "log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        wait_until(lambda: _pings(client), timeout=20, what="redis-server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="session")
def servers(postgres_url: str, redis_url: str) -> Servers:
    return Servers(postgres_url, redis_url)


# ---------------------------------------------------------------- per-test state
@pytest.fixture
def env(servers: Servers, tmp_path: Path) -> dict[str, str]:
    """AIMA_* variables for one test, with an empty database, Redis and media dir."""
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, job_runs, dead_letters")
    redis.Redis.from_url(servers.redis_url).flushall()
    media = tmp_path / "media"
    media.mkdir()
    return {
        "AIMA_DATABASE_URL": servers.database_url,
        "AIMA_REDIS_URL": servers.redis_url,
        "AIMA_MEDIA_DIR": str(media),
        "AIMA_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "AIMA_STREAM": "aima:jobs",
        "AIMA_GROUP": "aima-workers",
        "AIMA_WORKER_DEVICE": "cpu",
        "AIMA_BLOCK_MS": "200",
        "AIMA_OUTBOX_GRACE_S": "0",
        # many tests upload in quick succession from one address; test_app_limits.py turns
        # the per-client rate limit on where it is the subject
        "AIMA_UPLOAD_RATE_PER_MINUTE": "0",
    }


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    from aima_common.config import load_settings

    return load_settings(env)


@pytest.fixture
def db(servers: Servers) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for assertions."""
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def rds(servers: Servers) -> redis.Redis:
    client: redis.Redis = redis.Redis.from_url(servers.redis_url, decode_responses=True)
    return client


@pytest.fixture
def client(settings: Settings) -> Iterator[Any]:
    from aima_backend.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    started: list[WorkerProc] = []

    def start(name: str, **extra: str) -> WorkerProc:
        w = WorkerProc(env, tmp_path, name, **extra)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@dataclass
class LiveBackend:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@pytest.fixture
def live_backend(env: dict[str, str], tmp_path: Path) -> Iterator[LiveBackend]:
    """``python -m aima_backend`` (uvicorn) on a free loopback port."""
    with running_backend(env, tmp_path / "backend.log") as (url, proc):
        yield LiveBackend(url, proc, tmp_path / "backend.log")
