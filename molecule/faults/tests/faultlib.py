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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimakit import api as kit_api
from aimakit import probes
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
CREDENTIALS = kit_api.CREDENTIALS
# The proxy engine under test (aima_proxy_engine; the traefik scenario sets it) and the root CA
# of its certificate, seen from the host.
ENGINE = os.environ.get("AIMA_PROXY_ENGINE", "caddy")
ROOT_CA = kit_api.ROOT_CAS[ENGINE]
MEDIA_HOST_DIR = "/srv/aima-media"  # the tmpfs behind the media volume (prepare.yml)
PROJECT = "aima"
SERVICES = ("reverse-proxy", "aima-backend", "database", "message-queue") + (
    ("socket-proxy",) if ENGINE == "traefik" else ())
WORKER = "aima-gpu-worker"
PROXY_UID = 10002  # aima_proxy_uid's default
ABANDONED = "worker stopped while processing"


# ------------------------------------------------------------------------- the instance
# The kit's probes (aimakit.probes) on this instance: shell, nested docker, container states,
# psql in the database container, redis-cli as the application's ACL user, media checksums.
INSTANCE_PROBES = probes.Instance(INSTANCE, project=PROJECT, stack_dir=STACK_DIR,
                                  media_dir=MEDIA_HOST_DIR)
CommandError = probes.CommandError
wait_for = probes.wait_for
container = INSTANCE_PROBES.container
sh = INSTANCE_PROBES.sh
out = INSTANCE_PROBES.out
docker = INSTANCE_PROBES.docker
inspect = INSTANCE_PROBES.inspect
project_containers = INSTANCE_PROBES.project_containers
state = INSTANCE_PROBES.state
sql = INSTANCE_PROBES.sql
sql_exec = INSTANCE_PROBES.sql_exec
jobs_by_id = INSTANCE_PROBES.jobs_by_id
redis = INSTANCE_PROBES.redis
redis_stdin = INSTANCE_PROBES.redis_stdin
pending_count = INSTANCE_PROBES.pending_count
media_checksums = INSTANCE_PROBES.media_checksums


def instance_ip() -> str:
    return kit_api.address_of(INSTANCE)


def healthy_base() -> bool:
    return INSTANCE_PROBES.healthy(SERVICES)


def _env_file(path: str) -> dict[str, str]:
    return kit_api.env_values(kit_api.read_file(INSTANCE, path))


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
    return kit_api.read_file(INSTANCE, ROOT_CA)


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
        return cls.for_container(INSTANCE)


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
