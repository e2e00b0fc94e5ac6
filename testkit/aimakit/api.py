"""The AIMA API through the reverse proxy: HTTPS verified against the proxy's internal root CA,
with the generated login (HTTP basic authentication).

Api.for_container() builds a client for a target container on this machine (a Molecule
instance, the demo's or the bench's target): its address from `docker inspect`, the CA and the
login read on it with `docker exec`. request() uses http.client; send() writes a hand-made
request on a raw socket (bodies a well-behaved client would never send).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aimakit.media import multipart

STACK_DIR = "/opt/aima"
CREDENTIALS = f"{STACK_DIR}/credentials"
# The root CA of the proxy's certificate (HTTPS without aima_domain), seen from the host: Caddy's
# internal CA lives in its volume proxy-data; for Traefik the role keeps one in <stack_dir>/tls.
ROOT_CA = "/var/lib/docker/volumes/aima_proxy-data/_data/caddy/pki/authorities/local/root.crt"
ROOT_CAS = {"caddy": ROOT_CA, "traefik": f"{STACK_DIR}/tls/ca/root.crt"}
FINISHED = frozenset({"done", "failed", "dead"})


class ApiError(AssertionError):
    """An answer the caller did not expect (status, body)."""


def basic(user: str, password: str) -> str:
    """The value of an Authorization header for HTTP basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ------------------------------------------------------------------------- a target container
def read_file(container: str, path: str) -> str:
    """A file on a container of this machine's engine (docker exec cat)."""
    return subprocess.run(["docker", "exec", container, "cat", path], capture_output=True,
                          text=True, check=True).stdout


def env_values(text: str) -> dict[str, str]:
    """KEY=value lines (an .env or the credentials file); comments and blanks skipped."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def proxy_engine_of(container: str, project: str = "aima") -> str:
    """caddy or traefik: the engine of the stack's reverse proxy on the container."""
    proc = subprocess.run(["docker", "exec", container, "docker", "inspect", "--format",
                           "{{json .Config.Cmd}}", f"{project}-reverse-proxy-1"],
                          capture_output=True, text=True, check=True)
    return "traefik" if "traefik" in proc.stdout else "caddy"


def root_ca_of(container: str) -> str:
    """PEM of the root CA that the stack's proxy certificate on the container chains to."""
    return read_file(container, ROOT_CAS[proxy_engine_of(container)])


def login_of(container: str, credentials: str = CREDENTIALS) -> tuple[str, str]:
    """The proxy login that site.yml generated on the container (its credentials file)."""
    values = env_values(read_file(container, credentials))
    return values["AIMA_LOGIN_USER"], values["AIMA_LOGIN_PASSWORD"]


def address_of(container: str) -> str:
    """The container's first IPv4 address on this machine's engine."""
    proc = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
         container], capture_output=True, text=True, check=True)
    return proc.stdout.split()[0]


# ------------------------------------------------------------------------- answers
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    status_line: str = ""

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


# ------------------------------------------------------------------------- the client
class _TlsConnection(http.client.HTTPSConnection):
    """http.client over Api.connect(): to host:port, the certificate checked for tls_name."""

    def __init__(self, api: Api, timeout: float) -> None:
        super().__init__(api.host, api.port, timeout=timeout, context=api.context)
        self._api = api

    def connect(self) -> None:
        self.sock = self._api.connect(self.timeout)


class Api:
    """HTTPS to host:port, the certificate verified against the CA (PEM text) for tls_name
    (default: host; an address is checked against the certificate's IP names), with the login;
    or plain HTTP (ca=None), e.g. to port 80, which only redirects. keep_alive keeps one
    connection per thread (the benchmark's load); otherwise every request has its own."""

    def __init__(
        self,
        host: str,
        port: int = 443,
        *,
        ca: str | None = None,
        auth: tuple[str, str] | None = None,
        tls_name: str | None = None,
        keep_alive: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.ca = ca
        self.auth = auth
        self.tls_name = tls_name or host
        self.keep_alive = keep_alive
        self._local = threading.local()
        self.context: ssl.SSLContext | None = None
        if ca is not None:
            self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca)
            self.context.check_hostname = True
            self.context.verify_mode = ssl.CERT_REQUIRED

    @classmethod
    def for_container(cls, container: str, *, host: str | None = None, port: int = 443,
                      tls_name: str | None = None, keep_alive: bool = False) -> Api:
        """The API of the stack on a container of this machine's engine: by default its own
        address and port 443; host/port for a published port (e.g. 127.0.0.1:8443). The
        certificate is checked for tls_name (default: the address connected to), which must
        be among the names the proxy's certificate carries (aima_tls_hosts)."""
        address = host or address_of(container)
        return cls(address, port, ca=root_ca_of(container), auth=login_of(container),
                   tls_name=tls_name, keep_alive=keep_alive)

    def _copy(self, **changes: Any) -> Api:
        kwargs: dict[str, Any] = {"ca": self.ca, "auth": self.auth, "tls_name": self.tls_name,
                                  "keep_alive": self.keep_alive}
        kwargs.update(changes)
        port = kwargs.pop("port", self.port)
        return Api(self.host, port, **kwargs)

    def anonymous(self) -> Api:
        return self._copy(auth=None)

    def as_user(self, user: str, password: str) -> Api:
        return self._copy(auth=(user, password))

    def plain_http(self, port: int = 80) -> Api:
        """The same client on the plain-HTTP port (the login is sent too, as a careless client
        would)."""
        return self._copy(port=port, ca=None)

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        result = dict(headers or {})
        if self.auth and not any(k.lower() == "authorization" for k in result):
            result["Authorization"] = basic(*self.auth)
        return result

    def connect(self, timeout: float = 30) -> socket.socket:
        """A connected socket; TLS-wrapped (verified, SNI-less for an address) with a CA."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        if self.context is None:
            return sock
        try:
            return self.context.wrap_socket(sock, server_hostname=self.tls_name)
        except BaseException:
            sock.close()
            raise

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return _TlsConnection(self, timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Reply:
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None) if self.keep_alive else None
            if conn is None:
                conn = self._connection(timeout)
            try:
                conn.request(method, path, body=body, headers=self._headers(headers))
                resp = conn.getresponse()
                data = resp.read()
                reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                              f"HTTP/1.1 {resp.status} {resp.reason}")
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                # a kept connection the server closed meanwhile: one fresh try
                if not self.keep_alive or attempt == 2:
                    raise
                continue
            if self.keep_alive:
                self._local.conn = conn
            else:
                conn.close()
            return reply
        raise AssertionError("unreachable")

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
        timeout: float = 30,
    ) -> Reply:
        """A hand-made HTTP/1.1 request over a raw (TLS-wrapped) socket. The answer is read
        even when the server answers early and closes while the body is still being sent (a
        413)."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self._headers(headers).items())
        head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {len(body)}\r\n"
        raw = b""
        with self.connect(timeout) as s:
            try:
                s.sendall(head.encode("latin-1") + b"\r\n")
                for i in range(0, len(body), 65536):
                    piece = body[i : i + 65536]
                    s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if chunked:
                    s.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # answered early; read what it said
            try:
                while chunk := s.recv(65536):
                    raw += chunk
            except OSError:
                pass
        head_bytes, _, payload = raw.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        if not lines or not lines[0].startswith("HTTP/"):
            return Reply(0, {}, raw)
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if hdrs.get("transfer-encoding") == "chunked":
            payload = _dechunk(payload)
        return Reply(status, hdrs, payload, lines[0])

    # -- the AIMA API
    def upload(self, filename: str, data: bytes, ctype: str = "image/png",
               timeout: float = 30, headers: dict[str, str] | None = None) -> Reply:
        body, content_type = multipart(filename, data, ctype)
        return self.request("POST", "/api/jobs", body,
                            {"Content-Type": content_type, **(headers or {})}, timeout=timeout)

    def submit(self, filename: str, data: bytes, ctype: str = "image/png") -> dict[str, Any]:
        """Upload a file that must be accepted (201); its job."""
        reply = self.upload(filename, data, ctype)
        if reply.status != 201:
            raise ApiError(f"upload of {filename} answered {reply.status}: {reply.body[:500]!r}")
        return dict(reply.json())

    def health(self) -> Reply:
        return self.request("GET", "/api/health", timeout=10)

    def healthy(self) -> bool:
        try:
            reply = self.health()
        except (OSError, http.client.HTTPException):
            return False
        return reply.status == 200 and (reply.json() or {}).get("status") == "ok"

    def job(self, job_id: str) -> dict[str, Any]:
        reply = self.request("GET", f"/api/jobs/{job_id}")
        if reply.status != 200:
            raise ApiError(f"GET /api/jobs/{job_id} answered {reply.status}: {reply.body[:500]!r}")
        return dict(reply.json())

    def wait_job(self, job_id: str, statuses: Iterable[str] = FINISHED, timeout: float = 120,
                 every: float = 1.0) -> dict[str, Any]:
        """The job once its status is one of statuses; after timeout, the job as it is."""
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in wanted or time.monotonic() > deadline:
                return job
            time.sleep(every)
