"""Helpers for the fault suite: the instance, its nested Docker, the database, the API, Ansible.

Everything runs against the Molecule instance: commands through `docker exec` (fast, no
Ansible round trip), HTTPS to the instance's own address (the proxy's published port 443; the
certificate verified against the proxy's internal root CA, the login from the host's
credentials file), and ansible-playbook with Molecule's inventory, exactly as an operator runs
site.yml.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import re
import shlex
import socket
import ssl
import struct
import subprocess
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO = os.environ.get("MOLECULE_SCENARIO_NAME", "faults")
INSTANCE = f"aima-molecule-{SCENARIO}"
PROJECT_DIR = Path(
    os.environ.get("MOLECULE_PROJECT_DIRECTORY") or Path(__file__).resolve().parents[3]
)
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
STACK_DIR = "/opt/aima"
CREDENTIALS = f"{STACK_DIR}/credentials"
# The proxy's internal CA (volume proxy-data at /data in the proxy container), seen from the host.
ROOT_CA = "/var/lib/docker/volumes/aima_proxy-data/_data/caddy/pki/authorities/local/root.crt"
MEDIA_HOST_DIR = "/srv/aima-media"  # the tmpfs behind the media volume (prepare.yml)
PROJECT = "aima"
SERVICES = ("reverse-proxy", "aima-backend", "database", "message-queue")
WORKER = "aima-gpu-worker"
PROXY_UID = 10002  # aima_proxy_uid's default
ABANDONED = "worker stopped while processing"


def container(service: str) -> str:
    return f"{PROJECT}-{service}-1"


class CommandError(AssertionError):
    pass


# ------------------------------------------------------------------------- the instance
def sh(
    script: str, *, check: bool = True, timeout: float = 120, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a shell script as root on the instance."""
    proc = subprocess.run(
        ["docker", "exec", "-i", INSTANCE, "sh", "-c", script],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandError(
            f"on the instance: {script!r} -> rc={proc.returncode}\n"
            f"{proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"{proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return proc


def out(script: str, **kwargs: Any) -> str:
    return sh(script, **kwargs).stdout.decode()


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    """The nested engine's docker CLI."""
    return out("docker " + shlex.join(args), check=check, timeout=timeout)


def inspect(name: str) -> dict[str, Any]:
    return json.loads(docker("inspect", name))[0]


def project_containers() -> list[dict[str, Any]]:
    ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").split()
    return json.loads(docker("inspect", *ids)) if ids else []


def state(service: str) -> dict[str, Any]:
    """State of a service's container, or {} when it has none."""
    try:
        data = inspect(container(service))
    except CommandError:
        return {}
    st = data["State"]
    return {
        "id": data["Id"],
        "status": st["Status"],
        "running": st["Running"],
        "health": (st.get("Health") or {}).get("Status", ""),
        "exit_code": st["ExitCode"],
        "started_at": st["StartedAt"],
        "restart_count": data["RestartCount"],
        "pid": st["Pid"],
    }


def instance_ip() -> str:
    proc = subprocess.run(
        ["docker", "inspect", "-f",
         "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", INSTANCE],
        capture_output=True, text=True, check=True,
    )
    return proc.stdout.split()[0]


def wait_for(
    what: str, predicate: Callable[[], Any], timeout: float = 120, interval: float = 1.0
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (CommandError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def healthy_base() -> bool:
    return all(
        state(s).get("running") and state(s).get("health") == "healthy" for s in SERVICES
    )


def _env_file(path: str) -> dict[str, str]:
    values = {}
    for line in out(f"cat {path}").splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def credentials() -> dict[str, str]:
    """The proxy login kept on the host (AIMA_LOGIN_USER, _PASSWORD, _SALT_SEED)."""
    return _env_file(CREDENTIALS)


def login() -> tuple[str, str]:
    creds = credentials()
    return creds["AIMA_LOGIN_USER"], creds["AIMA_LOGIN_PASSWORD"]


def basic(user: str, password: str) -> str:
    """The value of an Authorization header for HTTP basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def secrets() -> dict[str, str]:
    """Every secret value (never printed by the tests): the services' secrets from .env, the
    login's password and salt seed from credentials, and the login as it crosses the wire
    (base64 of user:password, what an Authorization header carries)."""
    values = {key: value for key, value in _env_file(f"{STACK_DIR}/.env").items()
              if value and ("PASSWORD" in key or "SECRET" in key or "TOKEN" in key)}
    creds = credentials()
    for key in ("AIMA_LOGIN_PASSWORD", "AIMA_LOGIN_SALT_SEED"):
        values[key] = creds[key]
    values["AIMA_LOGIN_BASIC_AUTH"] = basic(*login()).split(" ", 1)[1]
    return values


def login_secrets() -> dict[str, str]:
    """The login's part of secrets(): the values no container may ever see."""
    return {k: v for k, v in secrets().items() if k.startswith("AIMA_LOGIN_")}


def root_ca() -> str:
    """PEM of the proxy's internal root CA, read on the instance."""
    return out(f"cat {ROOT_CA}")


def default_gateway() -> str:
    """The instance's default gateway: the controller's address as the instance sees it."""
    match = re.search(r"^default via (\S+)", out("ip -4 route show default"), re.M)
    assert match, "the instance has no default IPv4 route"
    return match.group(1)


def check_hardening(service: str) -> None:
    """The CIS 5.x items that are per container, from inspect data and /proc: non-root, no
    capabilities, no-new-privileges, read-only root
    file system, memory/CPU/PID limits, no privileged mode, no host namespaces."""
    st = state(service)
    assert st.get("running"), f"{service} is not running"
    data = inspect(container(service))
    host = data["HostConfig"]
    assert any(o.startswith("no-new-privileges") and not o.endswith("false")
               for o in host["SecurityOpt"] or []), service  # CIS 5.26
    assert host["Privileged"] is False, service  # CIS 5.5
    assert host["ReadonlyRootfs"] is True, service  # CIS 5.13
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd"), service  # CIS 5.4
    assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"], service  # CIS 5.11
    assert host["NanoCpus"] > 0, service  # CIS 5.12
    assert (host.get("PidsLimit") or 0) > 0, service  # CIS 5.29
    for mode in ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode"):
        assert host.get(mode) != "host", (service, mode)  # CIS 5.10, 5.16, 5.17, 5.21, 5.31
    status = out(f"cat /proc/{st['pid']}/status")
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.M))
    uid = int(fields["Uid"].split()[0])
    assert fields["NoNewPrivs"] == "1", service
    assert int(fields["CapEff"], 16) == 0, (service, fields["CapEff"])
    expected_uid = {"aima-backend": 10001, WORKER: 10001, "reverse-proxy": PROXY_UID}
    if service in expected_uid:
        assert uid == expected_uid[service], f"{service} runs as uid {uid}"
    assert uid != 0, f"{service} runs as root"  # CIS 4.1


# ------------------------------------------------------------------------- the database
def sql(query: str) -> list[dict[str, Any]]:
    """Rows of a query, read with psql inside the database container (local socket)."""
    wrapped = f"SELECT coalesce(json_agg(t), '[]'::json) FROM ({query}) t"
    text = docker(
        "exec", "-u", "postgres", container("database"),
        "psql", "-U", "aima", "-d", "aima", "-AtXq", "-v", "ON_ERROR_STOP=1", "-c", wrapped,
    )
    return json.loads(text)


def sql_exec(statement: str) -> str:
    """Run a data-changing statement as the application's role (the suite's own set-up, e.g.
    back-dating rows for the retention check); returns psql's command tag."""
    return docker(
        "exec", "-u", "postgres", container("database"),
        "psql", "-U", "aima", "-d", "aima", "-AtXq", "-v", "ON_ERROR_STOP=1", "-c", statement,
    ).strip()


def jobs_by_id(ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    id_list = ",".join(f"'{uuid.UUID(i)}'" for i in ids)
    if not id_list:
        return {}
    rows = sql(
        "SELECT j.id::text AS id, j.status, j.attempts, j.sha256, j.size, j.storage_name,"
        " j.filename, j.result, j.error,"
        " (SELECT count(*) FROM job_runs r WHERE r.job_id = j.id AND r.outcome = 'done')"
        " AS done_runs,"
        " (SELECT count(*) FROM job_runs r WHERE r.job_id = j.id) AS runs"
        f" FROM jobs j WHERE j.id IN ({id_list})"
    )
    return {r["id"]: r for r in rows}


# redis-cli in the queue container as the application's ACL user; the password goes from its
# secret file on the instance into redis-cli's environment (`docker exec -e NAME` copies the
# caller's value), so it is on no command line.
REDIS_CLI = (
    f'REDISCLI_AUTH="$(cat {STACK_DIR}/secrets/redis_password)" docker exec -i -e REDISCLI_AUTH '
    f"{container('message-queue')} redis-cli --no-auth-warning --user aima-app"
)


def redis(*args: str) -> str:
    """redis-cli in the queue container, as the application's ACL user."""
    return out(f"{REDIS_CLI} {shlex.join(args)}")


def redis_stdin(value: bytes, *args: str) -> str:
    """redis-cli -x: the last argument is read from stdin (binary values, NUL bytes)."""
    return sh(f"{REDIS_CLI} -x {shlex.join(args)}", stdin=value).stdout.decode()


def pending_count() -> int:
    reply = redis("XPENDING", "aima:jobs", "aima-workers").split("\n")
    return int(reply[0] or 0)


def media_checksums() -> dict[str, str]:
    """sha256 of every stored media file (the tmpfs behind the media volume)."""
    text = out(
        f"cd {MEDIA_HOST_DIR} && find . -maxdepth 1 -type f -printf '%P\\0'"
        " | xargs -0 -r sha256sum"
    )
    result = {}
    for line in text.splitlines():
        digest, name = line.split(maxsplit=1)
        result[name] = digest
    return result


def incoming_files() -> list[str]:
    return out(
        f"find {MEDIA_HOST_DIR}/.incoming -type f 2>/dev/null || true"
    ).split()


# ------------------------------------------------------------------------- media payloads
def png(width: int = 48, height: int = 32, seed: int = 0, noise: bool = False) -> bytes:
    """A valid RGB PNG with content derived from seed (unique bytes per seed); noise makes
    it incompressible (about 3 bytes per pixel)."""
    rows = bytearray()
    rng = random.Random(seed)
    for y in range(height):
        rows.append(0)
        if noise:
            rows += rng.randbytes(width * 3)
            continue
        for x in range(width):
            rows += bytes(((x * 7 + seed) % 256, (y * 13 + seed * 3) % 256, (x * y + seed) % 256))
    return _png_chunks(width, height, zlib.compress(bytes(rows), 6))


def _png_chunks(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def large_png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of width x height pixels that compresses well (a few hundred KB even at
    50 megapixels), made row by row without holding the raw pixels."""
    comp = zlib.compressobj(6)
    parts = []
    for y in range(height):
        shade = bytes(((seed + y) % 256, (y * 7) % 256, (seed * 3 + y // 64) % 256))
        parts.append(comp.compress(b"\x00" + shade * width))
    parts.append(comp.flush())
    return _png_chunks(width, height, b"".join(parts))


def cgroup_value(service: str, v2_name: str, v1_path: str) -> str:
    """A cgroup file of a service's container, read inside it: the cgroup v2 name (e.g.
    memory.peak) or, on a cgroup v1 host, its v1 path (e.g. memory/memory.max_usage_in_bytes)."""
    script = (f"cat /sys/fs/cgroup/{v2_name} 2>/dev/null || cat /sys/fs/cgroup/{v1_path}")
    return docker("exec", container(service), "sh", "-c", script).strip()


def memory_peak(service: str) -> int:
    return int(cgroup_value(service, "memory.peak", "memory/memory.max_usage_in_bytes"))


def pid_limit_hits(service: str) -> int:
    """How often the container's PID limit refused a new process (pids.events: "max N")."""
    return int(cgroup_value(service, "pids.events", "pids/pids.events").split()[1])


def png_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A tiny file that claims 144 Mpx (a decompression bomb)."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * (width * 3)
    idat = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()
    return _png_chunks(width, height, idat)


def wav(seconds: float = 0.1) -> bytes:
    frames = int(8000 * seconds)
    data = bytes((i * 5) % 256 for i in range(frames))
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 8000, 1, 8)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def multipart(
    filename: str | bytes | None,
    data: bytes,
    ctype: str = "image/png",
    *,
    boundary: str = "aimaFaultsBoundary7MA4YWxk",
    extra_part_headers: bytes = b"",
    field_name: str = "file",
) -> tuple[bytes, str]:
    disp = f'form-data; name="{field_name}"'.encode()
    if filename is not None:
        fname = filename if isinstance(filename, bytes) else filename.encode()
        disp += b'; filename="' + fname + b'"'
    part = (b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disp + b"\r\n"
            + (f"Content-Type: {ctype}\r\n".encode() if ctype else b"")
            + extra_part_headers + b"\r\n" + data + b"\r\n")
    body = part + b"--" + boundary.encode() + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------- the API
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


class Api:
    """HTTPS through the proxy's published port on the instance's own address, the certificate
    verified against the proxy's internal root CA (hostname check on the address), with the
    login; or plain HTTP (ca=None), e.g. to port 80, which only redirects."""

    def __init__(
        self,
        host: str,
        port: int = 443,
        *,
        ca: str | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ca = ca
        self.auth = auth
        self.context: ssl.SSLContext | None = None
        if ca is not None:
            self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca)
            self.context.check_hostname = True
            self.context.verify_mode = ssl.CERT_REQUIRED

    @classmethod
    def for_instance(cls) -> Api:
        return cls(instance_ip(), 443, ca=root_ca(), auth=login())

    def anonymous(self) -> Api:
        return Api(self.host, self.port, ca=self.ca, auth=None)

    def as_user(self, user: str, password: str) -> Api:
        return Api(self.host, self.port, ca=self.ca, auth=(user, password))

    def plain_http(self, port: int = 80) -> Api:
        """The same client on the plain-HTTP port (the login is sent too, as a careless client
        would)."""
        return Api(self.host, port, ca=None, auth=self.auth)

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
            return self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Reply:
        conn: http.client.HTTPConnection
        if self.context is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=self._headers(headers))
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                         f"HTTP/1.1 {resp.status} {resp.reason}")
        finally:
            conn.close()

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

    def upload(self, filename: str, data: bytes, ctype: str = "image/png",
               timeout: float = 30, headers: dict[str, str] | None = None) -> Reply:
        body, content_type = multipart(filename, data, ctype)
        return self.request("POST", "/api/jobs", body,
                            {"Content-Type": content_type, **(headers or {})}, timeout=timeout)

    def health(self) -> Reply:
        return self.request("GET", "/api/health", timeout=10)

    def healthy(self) -> bool:
        try:
            reply = self.health()
        except (OSError, http.client.HTTPException):
            return False
        return reply.status == 200 and (reply.json() or {}).get("status") == "ok"


# ------------------------------------------------------------------------- Ansible
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.M,
)


@dataclass
class Run:
    args: list[str]
    rc: int
    output: str
    seconds: float
    recap: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return self.recap.get("changed", -1)

    def describe(self) -> str:
        return f"ansible-playbook {' '.join(self.args)} -> rc={self.rc}, recap={self.recap}\n" + \
            self.output[-6000:]


RUNS: list[Run] = []  # every ansible-playbook run of the suite (grepped for secrets at the end)


def playbook(*args: str, playbook_path: str = "site.yml", timeout: float = 900) -> Run:
    """ansible-playbook as the operator runs it, against Molecule's inventory."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(PROJECT_DIR / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(PROJECT_DIR / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PY_COLORS="0",
    )
    env.pop("ANSIBLE_LOG_PATH", None)
    cmd = [
        str(Path(os.environ.get("VIRTUAL_ENV", PROJECT_DIR / ".venv")) / "bin"
            / "ansible-playbook"),
        "-i", str(EPHEMERAL / "inventory"), playbook_path, *args,
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    text = proc.stdout + proc.stderr
    matches = list(RECAP.finditer(text))
    recap = ({k: int(v) for k, v in matches[-1].groupdict().items() if k != "host"}
             if matches else {})
    run = Run([playbook_path, *args], proc.returncode, text, time.monotonic() - started, recap)
    RUNS.append(run)
    log_dir = EPHEMERAL / "faults-runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{len(RUNS):02d}.log").write_text(f"$ {' '.join(cmd)}\n{text}")
    return run


# ------------------------------------------------------------------------- the tally
@dataclass
class Tally:
    """The figures the README reports."""

    faults: list[str] = field(default_factory=list)
    bad_inputs: list[str] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> sha256 of the upload
    audit: dict[str, int] = field(default_factory=dict)  # filled by the final audit
    # jobs the suite made fail on purpose (over the worker's memory): job id -> sha256
    failed_on_purpose: dict[str, str] = field(default_factory=dict)
    # jobs whose media file retention removed (the row and result stay)
    media_removed: set[str] = field(default_factory=set)
    figures: dict[str, Any] = field(default_factory=dict)  # measurements for the README
    # requests that must be refused (no login, plain HTTP, old TLS, cross-site):
    # name -> (refused, leaked); leaked = an answer that carried any data
    probes: dict[str, tuple[bool, bool]] = field(default_factory=dict)

    def fault(self, name: str) -> None:
        self.faults.append(name)

    def bad(self, name: str) -> None:
        self.bad_inputs.append(name)

    def probe(self, name: str, refused: bool, leaked: bool) -> None:
        assert name not in self.probes, f"probe {name} counted twice"
        self.probes[name] = (refused, leaked)


TALLY = Tally()


def accept(api: Api, name: str, data: bytes, ctype: str = "image/png",
           headers: dict[str, str] | None = None) -> str:
    """Upload a file that must be accepted; remember it for the final audit."""
    reply = api.upload(name, data, ctype, headers=headers)
    assert reply.status == 201, (name, reply.status, reply.body[:500])
    job = reply.json()
    assert job["sha256"] == hashlib.sha256(data).hexdigest()
    TALLY.accepted[job["id"]] = job["sha256"]
    return job["id"]
