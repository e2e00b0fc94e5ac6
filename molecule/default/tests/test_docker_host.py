"""Verify docker_host on the Molecule instance: engine, Compose v2, daemon.json, a container,
then the allow-list for published ports (tests run in file order; the last one empties it).

Over 400 lines on purpose: one stateful instance, and the order of these checks is part of what
they test (the allow-list part changes rules and restarts Docker); split it only with that order
kept."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from aimakit.ansible import molecule_playbook

# What the scenario's variables say daemon.json must hold: the role's defaults (CIS Docker
# Benchmark v1.6.0 section 2, see the README) plus the operator extras set in molecule.yml
# ("experimental": true among them), and nothing contributed (no GPU in the testbed).
EXPECTED_DAEMON = {
    "icc": False,
    "log-level": "info",
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "no-new-privileges": True,
    "live-restore": True,
    "userland-proxy": False,
    "default-address-pools": [{"base": "172.30.0.0/16", "size": 24}],
    "experimental": True,
    "ip6tables": True,
}
TEST_IMAGE = "aima-testbed/debian:trixie"


def test_docker_service_is_running_and_enabled(host):
    service = host.service("docker")
    assert service.is_running
    assert service.is_enabled


def test_compose_v2_plugin_answers(host):
    out = host.check_output("docker compose version --short")
    major = int(out.strip().lstrip("v").split(".")[0])
    assert major >= 2, out


def test_python_docker_sdk_is_importable(host):
    host.run_test("python3 -c 'import docker; print(docker.__version__)'")


def test_daemon_json_holds_exactly_the_merged_variables(host):
    daemon_json = host.file("/etc/docker/daemon.json")
    assert daemon_json.user == "root"
    assert daemon_json.mode == 0o644
    assert json.loads(daemon_json.content_string) == EXPECTED_DAEMON


def test_engine_runs_with_the_rendered_settings(host):
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["LiveRestoreEnabled"] is True
    assert info["LoggingDriver"] == "json-file"
    assert info["ServerVersion"]


@pytest.fixture(scope="module")
def nested_image(host):
    """Copy a testbed image from the controller's engine into the nested engine."""
    instance = host.ansible.get_variables()["inventory_hostname"]
    if not host.run(f"docker image inspect {TEST_IMAGE}").succeeded:
        save = subprocess.Popen(["docker", "save", TEST_IMAGE], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "exec", "-i", instance, "docker", "load"],
            stdin=save.stdout,
            check=True,
            capture_output=True,
        )
        assert save.wait() == 0
    return TEST_IMAGE


def test_nested_container_runs_on_a_bridge_network(host, nested_image):
    out = host.check_output(
        f"docker run --rm --network bridge {nested_image} "
        "sh -c 'echo nested-ok; cat /etc/debian_version'"
    )
    assert out.startswith("nested-ok")


def test_nested_container_logs_are_rotated(host, nested_image):
    cid = host.check_output(f"docker create {nested_image} true")
    try:
        log_config = json.loads(
            host.check_output(f"docker inspect --format '{{{{json .HostConfig.LogConfig}}}}' {cid}")
        )
    finally:
        host.run(f"docker rm {cid}")
    assert log_config == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}


@pytest.mark.skipif(os.environ.get("MOLECULE_SCENARIO_NAME") != "default", reason="default only")
def test_no_nvidia_runtime_without_a_gpu(host):
    info = json.loads(host.check_output("docker info --format '{{json .Runtimes}}'"))
    assert "nvidia" not in info


# --- CIS Docker Benchmark v1.6.0: the daemon's settings (section 2), its files (section 3) ------
# Each test carries the number of the benchmark item it checks on the running engine; the role's
# README has the table of items, settings and decisions.


@pytest.fixture(scope="module")
def docker_info(host):
    return json.loads(host.check_output("docker info --format '{{json .}}'"))


def _answers(host, target: str) -> bool:
    return host.run(f"perl -e '{CLIENT}' {target}").stdout.strip().endswith("200 OK")


def _wait_for_answer(host, target: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(host, target):
        assert time.monotonic() < deadline, f"{target} never answered"
        time.sleep(0.5)


def _container_ip(host, name: str) -> str:
    return host.check_output(
        f"docker inspect --format '{{{{.NetworkSettings.Networks.bridge.IPAddress}}}}' {name}"
    )


def test_cis_2_2_containers_on_the_default_bridge_cannot_reach_each_other(host, nested_image):
    options = json.loads(
        host.check_output("docker network inspect bridge --format '{{json .Options}}'")
    )
    assert options["com.docker.network.bridge.enable_icc"] == "false"
    host.run_test(f"docker run -d --name cis-icc-server {nested_image} perl -e '{SERVER}'")
    try:
        target = f"{_container_ip(host, 'cis-icc-server')}:8080"
        _wait_for_answer(host, target)  # the host reaches it: the server is up
        out = host.check_output(f"docker run --rm {nested_image} perl -e '{CLIENT}' {target}")
        assert out == f"{target} no connection", out
    finally:
        host.run("docker rm -f cis-icc-server")


def test_cis_2_3_the_daemon_logs_at_level_info(host, docker_info):
    assert docker_info["Debug"] is False
    invocation = systemd_value(host, "docker.service", "InvocationID")
    log = host.check_output(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")
    assert "level=info" in log
    assert "level=debug" not in log


def test_cis_2_4_docker_manages_iptables(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config.get("iptables", True) is True
    host.run_test("iptables -w -t nat -S DOCKER")
    host.run_test("iptables -w -S DOCKER-USER")


def test_cis_2_5_no_insecure_registries(docker_info):
    registry = docker_info["RegistryConfig"]
    assert set(registry["InsecureRegistryCIDRs"]) <= {"127.0.0.0/8", "::1/128"}, registry
    assert all(index["Secure"] for index in registry["IndexConfigs"].values()), registry


def test_cis_2_6_the_storage_driver_is_overlay2_not_aufs_or_devicemapper(docker_info):
    assert docker_info["Driver"] == "overlay2"


def test_cis_2_7_the_daemon_listens_on_its_unix_socket_only(host):
    """No TCP socket, hence no TLS to configure (checked before any port is published)."""
    assert systemd_value(host, "docker.socket", "Listen") == "/run/docker.sock (Stream)"
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert "hosts" not in config and "tlsverify" not in config
    listeners = host.check_output("ss -ltnpH")
    assert '"dockerd"' not in listeners, listeners


def test_cis_2_9_user_namespace_remapping_is_off_by_decision(host, docker_info, nested_image):
    """Documented in the README: a container's root is the host's root."""
    assert not [opt for opt in docker_info["SecurityOptions"] if "userns" in opt]
    uid_map = host.check_output(f"docker run --rm {nested_image} cat /proc/self/uid_map")
    assert uid_map.split() == ["0", "0", "4294967295"], uid_map


# As uid 65534, run a setuid-root copy of `id -u`: 0 if the setuid bit took effect.
SETUID_PROBE = (
    "cp /usr/bin/id /tmp/id-suid && chmod 4755 /tmp/id-suid && "
    'perl -e "(\\$<, \\$>) = (65534, 65534); exec q(/tmp/id-suid), q(-u)"'
)


def test_cis_2_14_containers_cannot_gain_privileges(host, docker_info, nested_image):
    assert "name=no-new-privileges" in docker_info["SecurityOptions"]
    status = host.check_output(f"docker run --rm {nested_image} cat /proc/self/status")
    assert "NoNewPrivs:\t1" in status.splitlines(), status
    assert host.check_output(f"docker run --rm {nested_image} sh -c '{SETUID_PROBE}'") == "65534"
    # Control: a container that opts out gets root through the setuid bit.
    opt_out = "--security-opt no-new-privileges=false"
    out = host.check_output(f"docker run --rm {opt_out} {nested_image} sh -c '{SETUID_PROBE}'")
    assert out == "0", out


def test_cis_2_15_live_restore_keeps_a_container_running_across_a_restart(
    host, docker_info, nested_image
):
    assert docker_info["LiveRestoreEnabled"] is True
    host.run_test(f"docker run -d --name cis-live-restore {nested_image} sleep 600")
    try:
        state = "docker inspect --format '{{.State.Pid}} {{.State.StartedAt}}' cis-live-restore"
        before = host.check_output(state)
        host.run_test("systemctl reset-failed docker.service")
        host.run_test("systemctl restart docker.service")
        assert host.check_output(state) == before
        assert host.check_output("docker ps -q --filter name=cis-live-restore")
    finally:
        host.run("docker rm -f cis-live-restore")


COUNT_DOCKER_PROXIES = (
    "python3 -c \"import os; print(sum(1 for p in os.listdir('/proc') if p.isdigit() and "
    "open(f'/proc/{p}/comm').read().strip() == 'docker-proxy'))\""
)


def test_cis_2_16_published_ports_go_through_iptables_without_docker_proxy(host, nested_image):
    host.run_test(
        f"docker run -d --name cis-no-proxy -p 18082:8080 {nested_image} perl -e '{SERVER}'"
    )
    try:
        address = _container_ip(host, "cis-no-proxy")
        # 127.0.0.1 reaches it through NAT (route_localnet on docker0), not a proxy process.
        _wait_for_answer(host, "127.0.0.1:18082")
        assert host.check_output(COUNT_DOCKER_PROXIES) == "0"
        nat = host.check_output("iptables -w -t nat -S DOCKER")
        assert f"--dport 18082 -j DNAT --to-destination {address}:8080" in nat, nat
    finally:
        host.run("docker rm -f cis-no-proxy")


def test_cis_2_17_containers_run_with_the_default_seccomp_profile(host, docker_info, nested_image):
    assert "name=seccomp,profile=builtin" in docker_info["SecurityOptions"]
    status = host.check_output(f"docker run --rm {nested_image} cat /proc/self/status")
    assert "Seccomp:\t2" in status.splitlines(), status


def test_cis_2_18_experimental_follows_daemon_json(docker_info):
    """The role's default is false (tests/docker_host); this scenario turns it on for Docker 26's
    IPv6 NAT (molecule.yml), which proves the override reaches the engine."""
    assert docker_info["ExperimentalBuild"] is EXPECTED_DAEMON["experimental"]


@pytest.mark.parametrize(
    ("items", "unit"), [("3.1, 3.2", "docker.service"), ("3.3, 3.4", "docker.socket")]
)
def test_cis_3_1_to_3_4_unit_files_are_root_owned_and_not_writable_by_others(host, items, unit):
    unit_file = host.file(systemd_value(host, unit, "FragmentPath"))
    assert (unit_file.user, unit_file.group) == ("root", "root"), items
    assert unit_file.mode & ~0o644 == 0, (items, oct(unit_file.mode))


def test_cis_3_5_3_6_etc_docker_is_root_owned_mode_755(host):
    folder = host.file("/etc/docker")
    assert (folder.user, folder.group, folder.mode) == ("root", "root", 0o755)


def test_cis_3_15_3_16_the_docker_socket_is_root_docker_mode_660(host):
    sock = host.file("/run/docker.sock")
    assert sock.is_socket
    assert (sock.user, sock.group, sock.mode) == ("root", "docker", 0o660)


def test_cis_3_17_3_18_daemon_json_is_root_owned_mode_644(host):
    daemon_json = host.file("/etc/docker/daemon.json")
    assert (daemon_json.user, daemon_json.group, daemon_json.mode) == ("root", "root", 0o644)


# --- The allow-list for published ports (docker_host_allowed_sources in molecule.yml) ---------
# Two network namespaces behind veth pairs play the outside world: "allowed" (10.99.1.2,
# fd00:99:1::2) and "refused" (10.99.2.2, fd00:99:2::2); the instance's end of each pair is .1,
# and each client probes that address, as a client probes a server's public address.

CHAIN = "AIMA-ALLOWLIST"
UNIT = "docker-allowlist.service"
SCRIPT = "/usr/local/sbin/docker-allowlist"
CONFIG = "/etc/docker/allowlist.json"
CHAIN_RULES = {
    "iptables": [
        f"-A {CHAIN} -i docker0 -j RETURN",
        f"-A {CHAIN} -i br-+ -j RETURN",
        f"-A {CHAIN} -s 10.99.1.0/24 -j RETURN",
        f"-A {CHAIN} -s 10.99.3.7/32 -j RETURN",
        f"-A {CHAIN} -m conntrack --ctstate DNAT --ctdir ORIGINAL -j DROP",
    ],
    "ip6tables": [
        f"-A {CHAIN} -i docker0 -j RETURN",
        f"-A {CHAIN} -i br-+ -j RETURN",
        f"-A {CHAIN} -s fd00:99:1::/64 -j RETURN",
        f"-A {CHAIN} -m conntrack --ctstate DNAT --ctdir ORIGINAL -j DROP",
    ],
}
NAMESPACES = {"allowed": 1, "refused": 2}
# Published by a container on an IPv6-enabled network (NATed over IPv4 and IPv6) ...
DUAL_PORT = 18080
# ... and by one on the default bridge (IPv4 only: IPv6 clients go through docker-proxy).
V4ONLY_PORT = 18081
# A listener inside the refused namespace, for the containers' own outgoing connections.
LISTENER_PORT = 8099
PROBE = "/run/allowlist-probe.py"
ANSWER = "answer"
NO_CONNECTION = "no connection"
REFUSED_ONLY_BY_THE_LIST = {
    "allowed": {"IPv4": ANSWER, "IPv6": ANSWER},
    "refused": {"IPv4": NO_CONNECTION, "IPv6": NO_CONNECTION},
}
EVERYONE = {ns: {"IPv4": ANSWER, "IPv6": ANSWER} for ns in NAMESPACES}
SCENARIO_DIR = Path(
    os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).resolve().parents[1])
)

# An HTTP/1.0 answer to every connection, over IPv4 and IPv6 (perl-base is in every Debian).
SERVER = (
    'use IO::Socket::IP; my $s = IO::Socket::IP->new(LocalHost => "::", LocalPort => 8080, '
    "Listen => 16, ReuseAddr => 1, V6Only => 0) or die $@; while (my $c = $s->accept) { "
    'while (my $l = <$c>) { last if $l =~ /^\\r?\\n$/ } print $c "HTTP/1.0 200 OK\\r\\n'
    'Content-Type: text/plain\\r\\n\\r\\nallowlist-probe\\n"; close $c }'
)
# A client for inside a container: "target status-line" or "target no connection" per target.
CLIENT = (
    "use IO::Socket::IP; for my $t (@ARGV) { my ($h, $p) = $t =~ /^\\[?(.+?)\\]?:(\\d+)$/; "
    "my $s = IO::Socket::IP->new(PeerHost => $h, PeerPort => $p, Timeout => 3); "
    'if (!$s) { print "$t no connection\\n"; next } '
    'print $s "GET / HTTP/1.0\\r\\nHost: probe\\r\\n\\r\\n"; my $l = <$s> // ""; '
    '$l =~ s/\\r?\\n$//; print "$t $l\\n" }'
)
# The probe run inside a namespace: one connection per target, all at once, 2 s to connect.
PROBE_SOURCE = """
import concurrent.futures, json, socket, sys

def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.0\\r\\nHost: probe\\r\\n\\r\\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
    except OSError as exc:
        return f"no connection ({type(exc).__name__})"
    ok = reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"allowlist-probe\\n")
    return "answer" if ok else f"unexpected reply {reply[:80]!r}"

with concurrent.futures.ThreadPoolExecutor() as pool:
    print(json.dumps(dict(zip(sys.argv[1:], pool.map(probe, sys.argv[1:])))))
"""


def _script(host, text: str) -> str:
    """Run a bash script on the instance (no quoting through docker exec)."""
    encoded = base64.b64encode(text.encode()).decode()
    return host.check_output(f"echo {encoded} | base64 -d | bash -e")


def _lab_setup(image: str) -> str:
    namespaces = "\n".join(
        f"""
ip netns add {ns}
ip link add {ns}-h type veth peer name {ns}-n
ip link set {ns}-n netns {ns}
ip addr add 10.99.{n}.1/24 dev {ns}-h
ip -6 addr add fd00:99:{n}::1/64 dev {ns}-h nodad
ip link set {ns}-h up
ip netns exec {ns} ip link set lo up
ip netns exec {ns} ip addr add 10.99.{n}.2/24 dev {ns}-n
ip netns exec {ns} ip -6 addr add fd00:99:{n}::2/64 dev {ns}-n nodad
ip netns exec {ns} ip link set {ns}-n up
ip netns exec {ns} ip route add default via 10.99.{n}.1
ip netns exec {ns} ip -6 route add default via fd00:99:{n}::1"""
        for ns, n in NAMESPACES.items()
    )
    return f"""{_LAB_TEARDOWN}
{namespaces}
echo {base64.b64encode(PROBE_SOURCE.encode()).decode()} | base64 -d > {PROBE}
mkdir -p /run/allowlist-www
systemd-run --quiet --unit allowlist-listener ip netns exec refused \\
  python3 -m http.server {LISTENER_PORT} --bind :: --directory /run/allowlist-www
docker network create --ipv6 --subnet fd00:99:ff::/64 allowlist-v6 >/dev/null
docker run -d --name allowlist-dual --network allowlist-v6 -p {DUAL_PORT}:8080 \\
  {image} perl -e '{SERVER}' >/dev/null
docker run -d --name allowlist-v4only -p {V4ONLY_PORT}:8080 {image} perl -e '{SERVER}' >/dev/null
"""


_LAB_TEARDOWN = f"""
docker rm -f allowlist-dual allowlist-v4only >/dev/null 2>&1 || true
docker network rm allowlist-v6 >/dev/null 2>&1 || true
systemctl stop allowlist-listener 2>/dev/null || true
for ns in {" ".join(NAMESPACES)}; do
  ip netns del $ns 2>/dev/null || true
  ip link del $ns-h 2>/dev/null || true
done
rm -rf {PROBE} /run/allowlist-www
"""


def probe_all(host, port: int) -> dict[str, dict[str, str]]:
    """Connect from both namespaces, over IPv4 and IPv6, to the instance's address facing each."""
    commands = []
    for ns, n in NAMESPACES.items():
        targets = f"10.99.{n}.1:{port} [fd00:99:{n}::1]:{port}"
        commands.append(f"ip netns exec {ns} python3 {PROBE} {targets} > /run/probe-{ns}.json &")
    _script(host, "\n".join([*commands, "wait"]))
    results = {}
    for ns in NAMESPACES:
        raw = json.loads(host.file(f"/run/probe-{ns}.json").content_string)
        by_family = {("IPv6" if "[" in target else "IPv4"): v for target, v in raw.items()}
        results[ns] = {
            family: (NO_CONNECTION if verdict.startswith(NO_CONNECTION) else verdict)
            for family, verdict in by_family.items()
        }
    return results


def wait_for_published_ports(host, timeout: float = 40) -> None:
    """Until the allowed namespace gets answers on both ports (and over IPv6: a new container's
    IPv6 address is tentative for a moment)."""
    targets = f"10.99.1.1:{DUAL_PORT} [fd00:99:1::1]:{DUAL_PORT} 10.99.1.1:{V4ONLY_PORT}"
    deadline = time.monotonic() + timeout
    while True:
        out = host.run(f"ip netns exec allowed python3 {PROBE} {targets}").stdout
        if out and all(v == ANSWER for v in json.loads(out).values()):
            return
        assert time.monotonic() < deadline, f"published ports did not come back: {out}"
        time.sleep(1)


def iptables_state(host) -> dict[str, dict[str, list[str]]]:
    state = {}
    for tool in ("iptables", "ip6tables"):
        lines = host.check_output(f"{tool} -w -S").splitlines()
        state[tool] = {
            chain: [line for line in lines if line.startswith(f"-A {chain} ")]
            for chain in (CHAIN, "DOCKER-USER", "FORWARD")
        }
        state[tool]["chains"] = [line for line in lines if line.startswith("-N ")]
    return state


def assert_rules_in_place(host) -> None:
    for tool, chains in iptables_state(host).items():
        assert chains[CHAIN] == CHAIN_RULES[tool], tool
        # The jump comes first in DOCKER-USER; Docker's own RETURN stays below it.
        assert chains["DOCKER-USER"][0] == f"-A DOCKER-USER -j {CHAIN}", (tool, chains)
        assert chains["DOCKER-USER"].count(f"-A DOCKER-USER -j {CHAIN}") == 1, (tool, chains)
        assert "-A FORWARD -j DOCKER-USER" in chains["FORWARD"], (tool, chains)


def systemd_value(host, unit: str, prop: str) -> str:
    return host.check_output(f"systemctl show {unit} --property {prop} --value")


def restart_docker(host, action: str = "restart") -> None:
    # The testbed restarts Docker more often than docker.service's start limit (3 in 60 s) allows.
    host.run_test("systemctl reset-failed docker.service")
    host.run_test(f"systemctl {action} docker.service")
    wait_for_published_ports(host)


def assert_unit_ran_before_dockerd(host) -> None:
    finished = int(systemd_value(host, UNIT, "ActiveEnterTimestampMonotonic"))
    dockerd = int(systemd_value(host, "docker.service", "ExecMainStartTimestampMonotonic"))
    assert 0 < finished <= dockerd, (finished, dockerd)


@pytest.fixture(scope="module")
def lab(host, nested_image):
    _script(host, _lab_setup(nested_image))
    wait_for_published_ports(host)
    yield
    _script(host, _LAB_TEARDOWN)


def test_allowlist_script_config_and_unit_are_installed(host):
    script = host.file(SCRIPT)
    assert (script.user, script.mode) == ("root", 0o755)
    config = host.file(CONFIG)
    assert (config.user, config.mode) == ("root", 0o644)
    assert json.loads(config.content_string)["sources"] == [
        "10.99.1.0/24",
        "10.99.3.7",
        "fd00:99:1::/64",
    ]
    unit = host.service(UNIT)
    assert unit.is_enabled and unit.is_running
    # Required by Docker (fail closed) and ordered before it; restarted with it (PartOf).
    assert UNIT in systemd_value(host, "docker.service", "Requires").split()
    assert "docker.service" in systemd_value(host, UNIT, "Before").split()
    assert systemd_value(host, UNIT, "PartOf") == "docker.service"


def test_allowlist_rules_are_in_iptables_and_ip6tables(host):
    assert_rules_in_place(host)


def test_published_ports_answer_only_the_allowed_sources(host, lab):
    assert probe_all(host, DUAL_PORT) == REFUSED_ONLY_BY_THE_LIST


def test_containers_outgoing_and_mutual_traffic_is_untouched(host, lab, nested_image):
    """From a container: to another container, and out to the refused namespace's listener."""
    targets = [
        "allowlist-dual:8080",
        f"10.99.2.2:{LISTENER_PORT}",
        f"[fd00:99:2::2]:{LISTENER_PORT}",
    ]
    out = host.check_output(
        f"docker run --rm --network allowlist-v6 {nested_image} perl -e '{CLIENT}' "
        + " ".join(targets)
    )
    assert sorted(out.splitlines()) == sorted(f"{t} HTTP/1.0 200 OK" for t in targets), out


def test_cis_2_16_ipv6_to_an_ipv4_only_container_is_not_proxied(host, lab):
    """With "userland-proxy": false no docker-proxy serves IPv6 clients of a container without
    an IPv6 address (with it, they got in past the allow-list, seen as the bridge's gateway:
    the README's limit): no IPv6 client gets an answer; IPv4 is filtered as everywhere."""
    assert probe_all(host, V4ONLY_PORT) == {
        "allowed": {"IPv4": ANSWER, "IPv6": NO_CONNECTION},
        "refused": {"IPv4": NO_CONNECTION, "IPv6": NO_CONNECTION},
    }
    assert host.check_output(COUNT_DOCKER_PROXIES) == "0"


def test_docker_restart_runs_the_unit_again_before_dockerd(host, lab):
    invocation = systemd_value(host, UNIT, "InvocationID")
    restart_docker(host)
    assert systemd_value(host, UNIT, "InvocationID") != invocation
    assert_unit_ran_before_dockerd(host)
    assert_rules_in_place(host)
    assert probe_all(host, DUAL_PORT) == REFUSED_ONLY_BY_THE_LIST


def test_the_unit_recreates_everything_from_nothing_before_docker_starts(host, lab):
    """As after a reboot: no chain, no DOCKER-USER, no FORWARD jump when the unit starts."""
    host.run_test("systemctl stop docker.service")
    assert not host.service(UNIT).is_running  # PartOf: stopped with Docker, rules kept
    wipe = [
        f"{tool} -w -D FORWARD -j DOCKER-USER; {tool} -w -F DOCKER-USER; {tool} -w -F {CHAIN}; "
        f"{tool} -w -X {CHAIN}; {tool} -w -X DOCKER-USER"
        for tool in ("iptables", "ip6tables")
    ]
    _script(host, "\n".join(wipe))
    for tool, chains in iptables_state(host).items():
        assert not [c for c in chains["chains"] if CHAIN in c or "DOCKER-USER" in c], tool
    # Without the chain, the containers (kept by live-restore) are open to everyone.
    assert probe_all(host, DUAL_PORT) == EVERYONE
    restart_docker(host, "start")
    assert_unit_ran_before_dockerd(host)
    assert_rules_in_place(host)
    assert probe_all(host, DUAL_PORT) == REFUSED_ONLY_BY_THE_LIST


def _playbook(playbook: Path, extra_vars: dict) -> tuple[str, int, int]:
    run = molecule_playbook(playbook, extra_vars)
    assert run.rc == 0 and run.recap, run.output
    return run.output, run.recap["changed"], run.recap["failed"]


def test_a_changed_list_is_applied_right_away_without_restarting_docker(host, lab):
    docker_invocation = systemd_value(host, "docker.service", "InvocationID")
    sources = ["10.99.1.0/24", "10.99.2.0/24", "fd00:99:1::/64"]
    out, changed, _ = _playbook(
        SCENARIO_DIR / "allowlist.yml", {"docker_host_allowed_sources": sources}
    )
    assert changed == 2, out  # the config file and the rules
    assert f"-A {CHAIN} -s 10.99.2.0/24 -j RETURN" in host.check_output(f"iptables -w -S {CHAIN}")
    assert systemd_value(host, "docker.service", "InvocationID") == docker_invocation
    # Per family: the refused namespace's IPv4 network is allowed now, its IPv6 one is not.
    assert probe_all(host, DUAL_PORT)["refused"] == {"IPv4": ANSWER, "IPv6": NO_CONNECTION}


def test_an_empty_list_removes_everything_and_allows_everyone(host, lab):
    empty = {"docker_host_allowed_sources": []}
    out, changed, failed = _playbook(SCENARIO_DIR / "allowlist.yml", empty)
    assert failed == 0 and changed > 0, out
    assert "TASK [docker_host : Delete the chain and its jump from DOCKER-USER]" in out, out
    out, changed, failed = _playbook(SCENARIO_DIR / "allowlist.yml", empty)
    assert failed == 0 and changed == 0, out  # the removal is idempotent too
    for tool in ("iptables", "ip6tables"):
        assert CHAIN not in host.check_output(f"{tool} -w -S"), tool
    for path in (SCRIPT, CONFIG, f"/etc/systemd/system/{UNIT}"):
        assert not host.file(path).exists, path
    assert systemd_value(host, UNIT, "LoadState") == "not-found"
    assert UNIT not in systemd_value(host, "docker.service", "Requires")
    # Docker and its containers kept running.
    assert host.service("docker").is_running
    running = host.check_output("docker ps --format '{{.Names}}'").split()
    assert {"allowlist-dual", "allowlist-v4only"} <= set(running), running
    assert probe_all(host, DUAL_PORT) == EVERYONE
