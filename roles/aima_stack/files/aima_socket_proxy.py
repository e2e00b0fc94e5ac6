#!/usr/bin/env python3
"""A read-only, filtered Docker API for Traefik's service discovery (aima_proxy_engine=traefik).

Traefik discovers the services from their labels through the Docker API. The Docker socket
itself is root on the host: whoever can POST to it can start a privileged container. So the
internet-facing proxy never gets the socket. This small proxy holds it instead, in its own
container, on an internal network shared with Traefik alone, and forwards only what discovery
reads:

* methods GET and HEAD, no request body, no protocol upgrade (no attach, no exec);
* the paths of ALLOWED_PATHS: ping, version, events, the container list, one container's
  inspect data and one network's. Everything else, including every write, gets 403.

One request per connection: the request sent to the socket carries `Connection: close`, so a
second request can never ride on a connection whose first request was allowed. Standard library
only: it runs on any Python 3.11+ (the role starts it with the backend image's interpreter).

Settings (environment): AIMA_SOCKET_PROXY_LISTEN (host:port, default 0.0.0.0:2375),
AIMA_DOCKER_SOCKET (default /var/run/docker.sock), AIMA_SOCKET_PROXY_MAX_CONNECTIONS (64).
`--check` asks the running proxy for /_ping (the container's health check).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import sys
import urllib.parse
from dataclasses import dataclass

# /v1.41/containers/json and /containers/json alike; ids and names as Docker allows them.
_VERSION = r"(?:/v[0-9]{1,2}\.[0-9]{1,3})?"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
ALLOWED_PATHS = re.compile(
    rf"^{_VERSION}/(?:_ping|version|events|containers/json|containers/{_NAME}/json"
    rf"|networks/{_NAME})$"
)
ALLOWED_METHODS = frozenset({"GET", "HEAD"})
HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT_S = 10.0
# Hop-by-hop headers (RFC 9110 section 7.6.1) are the proxy's own business, never forwarded.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade"}
)


class Refused(Exception):
    """A request this proxy does not forward; str() is the reason (in the 403/400 body)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path


def parse_head(head: bytes) -> Request:
    """The request line and headers of one HTTP/1.x request head (ending in a blank line)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError as exc:
        raise Refused(400, "request head is not ASCII") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise Refused(400, "malformed request line")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise Refused(400, "malformed header line")
        headers.append((name, value.strip()))
    return Request(parts[0], parts[1], parts[2], headers)


def check(request: Request) -> None:
    """Raise Refused unless discovery needs this request; the only policy of this proxy."""
    if request.method not in ALLOWED_METHODS:
        raise Refused(403, f"method {request.method} is not allowed (read-only)")
    if not request.target.startswith("/"):
        raise Refused(400, "only origin-form request targets")
    path = request.path
    # Percent-escapes and dot segments could make Docker see another path than the one checked.
    if "%" in path or "/." in path or "//" in path:
        raise Refused(403, "encoded or dot path segments are not allowed")
    if not ALLOWED_PATHS.match(path):
        raise Refused(403, f"{path} is not an endpoint discovery needs")
    names = {name.lower() for name, _ in request.headers}
    if "upgrade" in names:
        raise Refused(403, "protocol upgrades are not allowed")
    for name, value in request.headers:
        lowered = name.lower()
        if lowered == "transfer-encoding" or (lowered == "content-length" and value != "0"):
            raise Refused(403, "request bodies are not allowed")


def upstream_head(request: Request) -> bytes:
    """The head sent to the Docker socket: hop-by-hop headers dropped, one request only."""
    kept = [(n, v) for n, v in request.headers if n.lower() not in HOP_BY_HOP]
    lines = [f"{request.method} {request.target} HTTP/1.1"]
    lines += [f"{n}: {v}" for n, v in kept]
    if not any(n.lower() == "host" for n, _ in kept):
        lines.append("Host: docker")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def refusal(status: int, reason: str) -> bytes:
    body = json.dumps({"message": f"aima socket proxy: {reason}"}).encode()
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway",
              503: "Service Unavailable"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


@dataclass(frozen=True)
class Settings:
    listen_host: str
    listen_port: int
    docker_socket: str
    max_connections: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        host, _, port = env.get("AIMA_SOCKET_PROXY_LISTEN", "0.0.0.0:2375").rpartition(":")
        return cls(host or "0.0.0.0", int(port), env.get("AIMA_DOCKER_SOCKET",
                   "/var/run/docker.sock"), int(env.get("AIMA_SOCKET_PROXY_MAX_CONNECTIONS", "64")))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Returns when the client hangs up (it may send nothing more: one request only)."""
    while await reader.read(4096):
        pass


async def serve_one(settings: Settings, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            request = parse_head(head)
            check(request)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
            writer.write(refusal(400, "incomplete or oversized request head"))
            return
        except Refused as exc:
            log(f"refused {peer}: {exc}")
            writer.write(refusal(exc.status, str(exc)))
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(settings.docker_socket)
        except OSError as exc:
            log(f"docker socket unreachable: {exc}")
            writer.write(refusal(502, "the Docker socket does not answer"))
            return
        try:
            up_writer.write(upstream_head(request))
            await up_writer.drain()
            relay = asyncio.create_task(_pipe(up_reader, writer))
            hangup = asyncio.create_task(_until_closed(reader))
            await asyncio.wait({relay, hangup}, return_when=asyncio.FIRST_COMPLETED)
            for task in (relay, hangup):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        finally:
            up_writer.close()
    except OSError:
        pass  # the client went away; nothing to tell anyone
    finally:
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


async def serve(settings: Settings) -> None:
    slots = asyncio.Semaphore(settings.max_connections)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if slots.locked():
            writer.write(refusal(503, "too many connections"))
            writer.close()
            return
        async with slots:
            await serve_one(settings, reader, writer)

    server = await asyncio.start_server(handle, settings.listen_host, settings.listen_port,
                                        limit=HEAD_LIMIT)
    log(f"aima socket proxy on {settings.listen_host}:{settings.listen_port} -> "
        f"{settings.docker_socket} (GET/HEAD of discovery's endpoints only)")
    async with server:
        await server.serve_forever()


def health_check(settings: Settings) -> int:
    """0 when the proxy answers /_ping with 200 through the socket."""
    host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "") else settings.listen_host
    try:
        with socket.create_connection((host, settings.listen_port), timeout=5) as conn:
            conn.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            status_line = conn.makefile("rb").readline()
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if status_line.split(b" ")[1:2] == [b"200"] else 1


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    if argv[1:] == ["--check"]:
        return health_check(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
