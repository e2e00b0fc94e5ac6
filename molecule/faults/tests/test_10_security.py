"""Security checks on the freshly converged stack (the worker is checked once it runs)."""

from __future__ import annotations

import ipaddress
import json
import shlex

import faultlib as f
import pytest

PROBE = r"""
import json, socket, sys
results = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    try:
        addr = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except OSError as exc:
        results[target] = "no-name: " + str(exc)
        continue
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(addr)
        results[target] = "open"
    except OSError as exc:
        results[target] = "closed: " + str(exc)
    finally:
        s.close()
print(json.dumps(results))
"""


def internal_targets() -> tuple[str, list[str]]:
    """The internal network's subnet and the database/queue addresses on it."""
    net = json.loads(f.docker("network", "inspect", f"{f.PROJECT}_internal"))[0]
    subnet = net["IPAM"]["Config"][0]["Subnet"]
    targets = []
    for service, port in (("database", 5432), ("message-queue", 6379)):
        nets = f.inspect(f.container(service))["NetworkSettings"]["Networks"]
        targets.append(f"{nets[f'{f.PROJECT}_internal']['IPAddress']}:{port}")
    return subnet, targets


class TestPublishedPorts:
    def test_only_the_proxy_listens_beyond_loopback(self) -> None:
        listeners = []
        for line in f.out("ss -ltnH").splitlines():
            local = line.split()[3]
            addr, _, port = local.rpartition(":")
            listeners.append((addr.strip("[]"), int(port)))
        exposed = sorted(
            {(a, p) for a, p in listeners
             if not (a.startswith("127.") or a in ("::1", "localhost"))}
        )
        assert exposed, f"nothing listens on the instance? {listeners}"
        assert {p for _, p in exposed} == {80}, f"listening beyond loopback: {exposed}"

    def test_only_the_proxy_publishes_ports(self) -> None:
        published = {}
        for c in f.project_containers():
            ports = c["HostConfig"].get("PortBindings") or {}
            if ports:
                published[c["Config"]["Labels"]["com.docker.compose.service"]] = sorted(ports)
        assert published == {"reverse-proxy": ["80/tcp"]}


class TestNetworkIsolation:
    """Probes stay on the instance: a REJECT rule keeps them from leaving through eth0 (other
    hosts may use the same private addresses), so only a path inside the instance could answer."""

    def _fence(self, subnet: str, chain: str, insert: bool) -> None:
        op = "-I" if insert else "-D"
        f.sh(f"iptables -w {op} {chain} -o eth0 -d {subnet} -j REJECT")

    def test_database_and_queue_unreachable_from_the_host(self) -> None:
        subnet, targets = internal_targets()
        self._fence(subnet, "OUTPUT", True)
        try:
            res = json.loads(f.out(
                f"python3 -c {shlex.quote(PROBE)} "
                f"{shlex.quote(json.dumps([*targets, '127.0.0.1:5432', '127.0.0.1:6379']))}"
            ))
        finally:
            self._fence(subnet, "OUTPUT", False)
        addrs = f.out("ip -o -4 addr show").split()
        on_host = [a for a in addrs if "/" in a and ipaddress.ip_interface(a).ip
                   in ipaddress.ip_network(subnet)]
        assert all(v != "open" for v in res.values()), (
            f"reachable from the host: {res}; host addresses on the internal network "
            f"{subnet}: {on_host}"
        )
        assert not on_host, f"the host has an address on the internal network: {on_host}"
        # control: the same probe reaches the proxy
        control = json.loads(f.out(
            f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(['127.0.0.1:80']))}"
        ))
        assert control == {"127.0.0.1:80": "open"}

    def test_database_and_queue_unreachable_from_the_edge_network(self) -> None:
        subnet, targets = internal_targets()
        image = f.inspect(f.container("aima-backend"))["Config"]["Image"]
        names = ["database:5432", "message-queue:6379", f"{f.PROJECT}-database-1:5432"]
        self._fence(subnet, "DOCKER-USER", True)
        try:
            res = json.loads(f.docker(
                "run", "--rm", "--network", f"{f.PROJECT}_edge", "--entrypoint", "python3",
                image, "-c", PROBE, json.dumps([*targets, *names, "aima-backend:8000"]),
            ))
        finally:
            self._fence(subnet, "DOCKER-USER", False)
        control = res.pop("aima-backend:8000")
        assert control == "open", "control probe: the backend must be reachable from edge"
        assert all(v != "open" for v in res.values()), res


class TestSecrets:
    def test_env_file_is_root_only(self) -> None:
        assert f.out(f"stat -c '%a %U %G' {f.STACK_DIR}/.env").split() == ["600", "root", "root"]

    def test_secrets_exist_and_are_strong(self) -> None:
        values = f.secrets()
        assert set(values) >= {"AIMA_DB_PASSWORD", "AIMA_REDIS_PASSWORD"}
        for key, value in values.items():
            assert len(value) >= 16 and value.isalnum(), f"{key} is weak"

    def test_no_secret_in_the_stack_files(self) -> None:
        for key, value in f.secrets().items():
            found = f.out(
                f"grep -rlF --exclude=.env --exclude-dir=images -e {shlex.quote(value)} "
                f"{f.STACK_DIR} || true"
            ).split()
            assert not found, f"{key} appears in {found}"

    def test_no_secret_in_docker_labels_or_command_lines(self) -> None:
        objects = []
        for c in f.project_containers():
            objects.append({"labels": c["Config"].get("Labels"), "cmd": c["Config"].get("Cmd"),
                            "entrypoint": c["Config"].get("Entrypoint"), "args": c.get("Args")})
        for kind in ("image", "network", "volume"):
            names = f.docker(kind, "ls", "-q").split()
            if names:
                objects += [o.get("Labels") or o.get("Config", {}).get("Labels")
                            for o in json.loads(f.docker(kind, "inspect", *names))]
        text = json.dumps(objects)
        for key, value in f.secrets().items():
            assert value not in text, f"{key} appears in docker inspect labels/commands"

    def test_no_secret_on_any_process_command_line(self) -> None:
        text = f.out("ps -eo args")
        for key, value in f.secrets().items():
            assert value not in text, f"{key} is visible in `ps` on the host"

    def test_no_secret_in_the_converge_log(self) -> None:
        log = f.EPHEMERAL / "ansible.log"
        assert log.is_file(), "ANSIBLE_LOG_PATH of molecule.yml did not log the converge"
        text = log.read_text(errors="replace")
        assert "aima_stack : Render .env" in text, "the log does not cover the converge"
        for key, value in f.secrets().items():
            assert value not in text, f"{key} appears in the Ansible log of the converge"


class TestContainers:
    @pytest.mark.parametrize("service", f.SERVICES)
    def test_hardening(self, service: str) -> None:
        f.check_hardening(service)

    def test_no_container_mounts_the_docker_socket(self) -> None:
        for c in f.project_containers():
            for m in c["Mounts"]:
                assert "docker.sock" not in m.get("Source", ""), (c["Name"], m)
                assert m.get("Source") not in ("/run", "/var/run", "/"), (c["Name"], m)

    def test_proxy_security_headers(self, api: f.Api) -> None:
        for path in ("/", "/api/health", "/api/jobs/nope"):
            reply = api.request("GET", path)
            h = reply.headers
            assert h.get("x-content-type-options") == "nosniff", path
            assert h.get("x-frame-options") == "DENY", path
            assert h.get("referrer-policy") == "no-referrer", path
            assert "frame-ancestors 'none'" in h.get("content-security-policy", ""), path
            assert "default-src 'self'" in h.get("content-security-policy", ""), path
            assert "server" not in h, (path, h.get("server"))

