"""Helpers shared by the tests in tests/app (imported by conftest and the test modules)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app"
# The app's package folders; the venv has them on its path already (bootstrap's .pth file),
# subprocesses started with another interpreter get them through PYTHONPATH.
APP_PATHS = [str(APP), str(APP / "backend"), str(APP / "worker")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float = 20.0, every: float = 0.05,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), seed: int = 0,
                mode: str = "RGB") -> bytes:
    """A small noisy image, different for every seed (aimakit.media.image)."""
    # Imported here: memory_child.py, a plain script, imports this module for app/'s paths only.
    from aimakit import media

    return media.image(fmt, size, seed, mode)


def pg_bindir() -> Path | None:
    def version(p: str) -> tuple[int, ...]:
        m = re.search(r"postgresql/(\d+)", p)
        return (int(m.group(1)),) if m else (0,)

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def upload(client: Any, data: bytes, filename: str = "pic.png",
           content_type: str | None = "image/png") -> Any:
    file: tuple[Any, ...] = (filename, data) if content_type is None else (
        filename, data, content_type)
    return client.post("/api/jobs", files={"file": file})


# what must never reach a client: exception text, stacks, paths, SQL, software versions
INTERNAL_MARKERS = re.compile(
    r"traceback|file \"|errno|/(?:tmp|data|usr|opt|home|root|etc|var|proc)/|\.py\b|\.part\b|"
    r"\b(?:select|insert into|update \w+ set|delete from)\b|psycopg|postgres|redis|uvicorn|"
    r"starlette|fastapi|pydantic|pillow|\bpil\b|python|multipart\.|127\.0\.0\.1|port \d|"
    r"connection (?:refused|failed|reset)|cannot identify|boundary character",
    re.IGNORECASE,
)
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(?:Error|Exception|Warning)\b")


def assert_no_internals(text: str, *secrets: str) -> None:
    """``text`` (a response body or header) names nothing internal and no secret."""
    found = INTERNAL_MARKERS.search(text) or EXCEPTION_NAME.search(text)
    assert found is None, f"internal detail {found.group(0)!r} leaked in: {text[:500]}"
    for secret in secrets:
        assert secret not in text, f"a secret leaked in: {text[:500]}"


# ---------------------------------------------------------------- worker subprocesses
def subprocess_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("AIMA_")}
    out.update(env)
    out.update(extra)
    out["PYTHONPATH"] = os.pathsep.join(APP_PATHS)
    out["PYTHONUNBUFFERED"] = "1"
    return out


class WorkerProc:
    def __init__(self, env: dict[str, str], log_dir: Path, name: str, **extra: str) -> None:
        self.name = name
        self.log_path = log_dir / f"worker-{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aima_worker"],
            env=subprocess_env(env, AIMA_WORKER_NAME=name, **extra),
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 20.0) -> None:
        wait_until(lambda: re.search(pattern, self.log()) or self.proc.poll() is not None,
                   timeout=timeout, what=f"{pattern!r} in the log of {self.name}")
        assert re.search(pattern, self.log()), f"{self.name} exited:\n{self.log()}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()




def stream_job_ids(rds: Any, stream: str = "aima:jobs") -> list[str]:
    """The job ids of the messages now in the stream, oldest first."""
    entries: Any = rds.xrange(stream)
    return [str(fields["job_id"]) for _id, fields in entries]


@contextmanager
def running_backend(
    env: dict[str, str], log_path: Path, **extra: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m aima_backend`` (uvicorn) on a free loopback port until /api/health is 200;
    yields its base URL and process, and stops it (SIGTERM) at the end."""
    import httpx

    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aima_backend"],
            env=subprocess_env(env, AIMA_HTTP_PORT=str(port), AIMA_HTTP_HOST="127.0.0.1",
                               **extra),
            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"backend exited:\n{log_path.read_text()}")
        try:
            return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=30, every=0.1, what="the backend's /api/health")
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
