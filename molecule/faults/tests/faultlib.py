"""Helpers for the fault suite: the instance, its nested Docker, the database, the API, Ansible.

Everything runs against the Molecule instance: commands through `docker exec` (fast, no
Ansible round trip), HTTPS to the instance's own address (the proxy's published port 443; the
certificate verified against the proxy's internal root CA, the login from the host's
credentials file), and ansible-playbook with Molecule's inventory, exactly as an operator runs
site.yml. The payloads, the HTTPS client and the playbook runner are the shared test kit's
(testkit/aimakit, on the path through pytest.ini); what is particular to this instance is here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimakit import api as kit_api
from aimakit.ansible import Run, Runner
from aimakit.api import Reply, basic
from aimakit.media import large_png, multipart, png, png_bomb, wav

__all__ = ["Reply", "Run", "basic", "large_png", "multipart", "png", "png_bomb", "wav"]

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


# ------------------------------------------------------------------------- cgroups
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


# ------------------------------------------------------------------------- the API
class Api(kit_api.Api):
    """The kit's HTTPS client (aimakit.api), aimed at the instance."""

    @classmethod
    def for_instance(cls) -> Api:
        """The proxy's published port 443 on the instance's own address, the certificate
        verified against the proxy's internal root CA, with the login from credentials."""
        return cls(instance_ip(), 443, ca=root_ca(), auth=login())


# ------------------------------------------------------------------------- Ansible
# Every ansible-playbook run of the suite, as the operator runs it against Molecule's inventory;
# each is logged under faults-runs/ and grepped for secrets at the end (RUNS).
playbook = Runner(EPHEMERAL / "inventory", PROJECT_DIR, log_dir=EPHEMERAL / "faults-runs")
RUNS: list[Run] = playbook.runs


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
