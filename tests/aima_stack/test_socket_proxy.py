"""The Traefik engine's socket proxy (roles/aima_stack/files/aima_socket_proxy.py): its policy,
called directly, and the running program between a TCP client and a stand-in Docker socket
(a real Unix socket server that records what reaches it). The Traefik scenario runs it against
a real Docker engine."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PROGRAM = REPO_ROOT / "roles" / "aima_stack" / "files" / "aima_socket_proxy.py"
_SPEC = importlib.util.spec_from_file_location("aima_socket_proxy", PROGRAM)
assert _SPEC and _SPEC.loader
proxy = importlib.util.module_from_spec(_SPEC)
sys.modules["aima_socket_proxy"] = proxy
_SPEC.loader.exec_module(proxy)


def request(method: str, target: str, *headers: tuple[str, str]) -> object:
    return proxy.Request(method, target, "HTTP/1.1", [("Host", "docker"), *headers])


@pytest.mark.parametrize("target", [
    "/_ping", "/version", "/v1.41/version", "/events?filters=%7B%7D", "/containers/json",
    "/v1.51/containers/json?all=1", "/containers/aima-backend-1/json",
    "/v1.41/containers/0123abcd/json", "/networks/aima_app",
])
def test_discovery_reads_pass(target: str) -> None:
    proxy.check(request("GET", target))
    proxy.check(request("HEAD", target))


@pytest.mark.parametrize(("method", "target"), [
    ("POST", "/containers/create"), ("POST", "/v1.41/containers/x/start"),
    ("POST", "/containers/x/stop"), ("DELETE", "/containers/x"), ("PUT", "/containers/x/archive"),
    ("POST", "/containers/x/exec"), ("POST", "/exec/abc/start"), ("POST", "/images/create"),
    ("POST", "/_ping"), ("PATCH", "/version"), ("CONNECT", "/containers/json"),
    ("GET", "/containers/x/logs"), ("GET", "/containers/x/archive?path=/"),
    ("GET", "/containers/x/export"), ("GET", "/images/json"), ("GET", "/volumes"),
    ("GET", "/secrets"), ("GET", "/info"), ("GET", "/containers/json/../create"),
    ("GET", "/containers/%2e%2e/create"), ("GET", "//containers/json"),
    ("GET", "/containers/x/json/extra"), ("GET", "http://docker/containers/json"),
    ("GET", "/v1.41/../containers/create"),
])
def test_everything_else_is_refused(method: str, target: str) -> None:
    with pytest.raises(proxy.Refused) as refused:
        proxy.check(request(method, target))
    assert refused.value.status in (400, 403)


@pytest.mark.parametrize("header", [
    ("Upgrade", "tcp"), ("Transfer-Encoding", "chunked"), ("Content-Length", "12"),
])
def test_bodies_and_upgrades_are_refused(header: tuple[str, str]) -> None:
    with pytest.raises(proxy.Refused):
        proxy.check(request("GET", "/_ping", header))
    proxy.check(request("GET", "/_ping", ("Content-Length", "0")))


@pytest.mark.parametrize("head", [
    b"GET /_ping\r\n\r\n", b"GET /_ping HTTP/2\r\n\r\n", b"GET  /_ping HTTP/1.1\r\n\r\n",
    b"GET /_ping HTTP/1.1\r\nNoColon\r\n\r\n", b"GET /_ping HTTP/1.1\r\n X: y\r\n\r\n",
    "GET /_p\u00efng HTTP/1.1\r\n\r\n".encode(),
])
def test_malformed_heads_are_refused(head: bytes) -> None:
    with pytest.raises(proxy.Refused):
        proxy.parse_head(head)


def test_upstream_head_drops_hop_by_hop_headers_and_closes() -> None:
    req = proxy.parse_head(b"GET /events HTTP/1.1\r\nHost: docker\r\nConnection: keep-alive\r\n"
                           b"Keep-Alive: 5\r\nUser-Agent: traefik\r\n\r\n")
    head = proxy.upstream_head(req).decode()
    assert head.startswith("GET /events HTTP/1.1\r\n")
    assert "Keep-Alive" not in head and "keep-alive" not in head
    assert "User-Agent: traefik" in head
    assert head.endswith("Connection: close\r\n\r\n")


# ------------------------------------------------------------------------- the running program
class FakeDocker:
    """A Unix socket that answers each connection's request like dockerd, and records it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            time.sleep(0.2)  # whatever else the client sent has arrived by now
            conn.settimeout(0.2)
            with contextlib.suppress(OSError):
                data += conn.recv(65536)
            self.requests.append(data)
            if b"/events" in data.split(b"\r\n", 1)[0]:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
                for n in range(3):
                    conn.sendall(b'{"event": %d}\n' % n)
                    time.sleep(0.05)
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[FakeDocker, int]]:
    docker = FakeDocker(tmp_path / "docker.sock")
    port = free_port()
    env = {**os.environ, "AIMA_SOCKET_PROXY_LISTEN": f"127.0.0.1:{port}",
           "AIMA_DOCKER_SOCKET": str(docker.path)}
    process = subprocess.Popen([sys.executable, str(PROGRAM)], env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run([sys.executable, str(PROGRAM), "--check"], env=env,
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the socket proxy did not come up"
            time.sleep(0.1)
        docker.requests.clear()
        yield docker, port
    finally:
        process.terminate()
        process.wait(timeout=10)


def exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data


def test_a_read_is_forwarded_once_with_connection_close(running: tuple[FakeDocker, int]) -> None:
    docker, port = running
    reply = exchange(port, b"GET /v1.41/containers/json HTTP/1.1\r\nHost: docker\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"OK")
    assert len(docker.requests) == 1
    assert docker.requests[0].startswith(b"GET /v1.41/containers/json HTTP/1.1\r\n")
    assert b"Connection: close\r\n" in docker.requests[0]


def test_a_write_never_reaches_the_socket(running: tuple[FakeDocker, int]) -> None:
    docker, port = running
    reply = exchange(port, b"POST /containers/create HTTP/1.1\r\nHost: docker\r\n"
                           b"Content-Length: 2\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.1 403 Forbidden")
    assert b"method POST is not allowed" in reply
    assert docker.requests == []


def test_a_write_pipelined_behind_a_read_is_not_forwarded(
    running: tuple[FakeDocker, int],
) -> None:
    docker, port = running
    reply = exchange(port, b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
                           b"POST /containers/create HTTP/1.1\r\nHost: docker\r\n"
                           b"Content-Length: 2\r\n\r\n{}")
    assert reply.count(b"HTTP/1.1 ") == 1 and reply.startswith(b"HTTP/1.1 200")
    assert len(docker.requests) == 1
    assert b"POST" not in docker.requests[0] and b"{}" not in docker.requests[0]


def test_the_event_stream_passes_through(running: tuple[FakeDocker, int]) -> None:
    _docker, port = running
    reply = exchange(port, b"GET /v1.41/events HTTP/1.1\r\nHost: docker\r\n\r\n")
    assert reply.count(b'{"event": ') == 3, reply


def test_an_oversized_head_is_refused(running: tuple[FakeDocker, int]) -> None:
    docker, port = running
    reply = exchange(port, b"GET /_ping HTTP/1.1\r\nX-Big: " + b"A" * 40_000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    assert docker.requests == []
