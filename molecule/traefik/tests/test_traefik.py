"""What only the Traefik engine has: discovery from labels, through a socket proxy that refuses
every write; no API or dashboard anywhere; and switching a running host to Caddy and back.

Runs after the shared files (../faults/tests/test_10_security.py, test_30_bad_api.py and
../stack/tests/test_stack.py, see molecule.yml), on the same instance, in file order.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from pathlib import Path

from aimakit import probes
from aimakit.ansible import Runner
from aimakit.api import Api, proxy_engine_of

PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY",
                                  Path(__file__).resolve().parents[3]))
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
INSTANCE = f"aima-molecule-{os.environ.get('MOLECULE_SCENARIO_NAME', 'traefik')}"
PROJECT = "aima"
STACK_DIR = "/opt/aima"
TARGET = probes.Instance(INSTANCE, project=PROJECT, stack_dir=STACK_DIR)
RUNNER = Runner(EPHEMERAL / "inventory", PROJECT_DIR)
DISCOVERY_NET = f"{PROJECT}_discovery"
BASE = ("reverse-proxy", "aima-backend", "database", "message-queue")
FIGURES: dict[str, object] = {}

# A tiny web server for a discovered service: every path answers 200 with its marker.
MARKER_SERVER = r"""
import http.server, sys
marker = sys.argv[1].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(marker)))
        self.end_headers()
        self.wfile.write(marker)
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
"""

# Raw HTTP/1.1 requests to the socket proxy from a container on the discovery network; prints
# {label: first response line, or the error}. A second request on the same connection must get
# no answer (one request per connection).
SOCKET_CLIENT = r"""
import json, socket, sys
results = {}
for label, raw in json.loads(sys.argv[1]):
    s = socket.create_connection(("socket-proxy", 2375), timeout=10)
    try:
        s.sendall(raw.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        results[label] = {"status": data.split(b"\r\n", 1)[0].decode(),
                          "responses": data.count(b"HTTP/1.1 "), "body": data[-300:].decode()}
    except OSError as exc:
        results[label] = {"status": "error: " + str(exc), "responses": 0, "body": ""}
    finally:
        s.close()
print(json.dumps(results))
"""


# Prints open or closed for a TCP connect to argv[1]:argv[2] (on the instance or in a container).
PORT_PROBE = ("import socket,sys\ns=socket.socket();s.settimeout(3)\n"
              "print('open' if s.connect_ex((sys.argv[1],int(sys.argv[2])))==0 else 'closed')")


def api() -> Api:
    return Api.for_container(INSTANCE)


def backend_image() -> str:
    return TARGET.inspect(TARGET.container("aima-backend"))["Config"]["Image"]


def run_marker(name: str, marker: str, labels: dict[str, str]) -> None:
    args = ["run", "-d", "--name", name, "--network", f"{PROJECT}_app", "--no-healthcheck",
            "--read-only", "--cap-drop", "ALL", "--entrypoint", "python3"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    TARGET.docker(*args, backend_image(), "-c", MARKER_SERVER, marker)


def proxy_fingerprint() -> tuple[str, str]:
    """The proxy's container and its configuration files: unchanged = no reconfiguration."""
    proxy = TARGET.state("reverse-proxy")["id"]
    sums = TARGET.out(f"find {STACK_DIR}/traefik -type f | sort | xargs sha256sum")
    return proxy, sums


def listening_ports(container: str) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket in a container's network namespace."""
    found = set()
    for table in ("tcp", "tcp6"):
        text = TARGET.docker("exec", container, "cat", f"/proc/net/{table}", check=False)
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # LISTEN
                address, port = fields[1].split(":")
                found.add((address, int(port, 16)))
    return found


def hex_ip(dotted: str) -> str:
    return "".join(f"{int(part):02X}" for part in reversed(dotted.split(".")))


# ------------------------------------------------------------------------- discovery
class TestDiscovery:
    MARKER = "discovered-service-7f3a"

    def test_a_labelled_service_becomes_reachable_without_touching_the_proxy(self, host) -> None:
        before = proxy_fingerprint()
        labels = {
            "com.docker.compose.project": PROJECT,
            "traefik.enable": "true",
            "traefik.http.routers.probe.rule": "PathPrefix(`/discovery-probe`)",
            "traefik.http.services.probe.loadbalancer.server.port": "8000",
        }
        run_marker("aima-discovery-probe", self.MARKER, labels)
        # the same labels without traefik.enable, and a container outside the project
        run_marker("aima-discovery-disabled", "not-enabled", {
            **{k: v for k, v in labels.items() if k != "traefik.enable"},
            "traefik.http.routers.off.rule": "PathPrefix(`/discovery-off`)"})
        run_marker("other-project-probe", "other-project", {
            **labels, "com.docker.compose.project": "other",
            "traefik.http.routers.probe.rule": "PathPrefix(`/discovery-other`)"})
        client = api()
        started = time.monotonic()
        reply = probes.wait_for(
            "the labelled service behind Traefik",
            lambda: (r := client.request("GET", "/discovery-probe/x")).status == 200 and r,
            timeout=30, interval=0.5)
        FIGURES["discovery_seconds"] = round(time.monotonic() - started, 2)
        assert reply.body.decode() == self.MARKER
        # discovered routes get what every route gets: the login and the headers
        anonymous = client.anonymous().request("GET", "/discovery-probe/x")
        assert anonymous.status == 401, anonymous.status_line
        assert self.MARKER not in anonymous.body.decode()
        assert reply.headers.get("x-frame-options") == "DENY", reply.headers
        # neither the container without traefik.enable nor another project's is routed: those
        # paths fall through to the backend, which does not know them
        for path in ("/discovery-off/x", "/discovery-other/x"):
            other = client.request("GET", path)
            assert other.status == 404 and other.json()["error"] == "not_found", (path, other.body)
        assert proxy_fingerprint() == before, "the proxy was reconfigured or restarted"

    def test_a_removed_service_is_no_longer_routed(self, host) -> None:
        TARGET.docker("rm", "-f", "aima-discovery-probe", "aima-discovery-disabled",
                      "other-project-probe")
        client = api()
        started = time.monotonic()
        # Until Traefik has seen the event (its provider throttles to one update per 2 s), a
        # request may still go to the removed container's address and hang: short timeouts.
        probes.wait_for("the route to disappear", lambda: client.request(
            "GET", "/discovery-probe/x", timeout=3).status == 404, timeout=60, interval=0.5)
        FIGURES["route_removed_seconds"] = round(time.monotonic() - started, 2)


# ------------------------------------------------------------------------- the socket proxy
class TestSocketProxy:
    def _ask(self, requests: list[tuple[str, str]]) -> dict[str, dict]:
        return json.loads(TARGET.docker(
            "run", "--rm", "--network", DISCOVERY_NET, "--entrypoint", "python3",
            backend_image(), "-c", SOCKET_CLIENT, json.dumps(requests)))

    def test_discovery_reads_and_nothing_else(self, host) -> None:
        """Reads pass; every write, exec, log or archive is refused with 403 and changes nothing
        (the containers and their states before and after are the same)."""
        before = TARGET.docker("ps", "-a", "--format", "{{.ID}} {{.State}}")
        backend = TARGET.container("aima-backend")
        get = "GET {} HTTP/1.1\r\nHost: docker\r\n\r\n"
        post = "POST {} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n" \
               "Content-Length: 2\r\n\r\n{{}}"
        results = self._ask([
            ("ping", get.format("/_ping")),
            ("list", get.format("/v1.41/containers/json")),
            ("inspect", get.format(f"/containers/{backend}/json")),
            ("create", post.format("/containers/create?name=evil")),
            ("start", post.format(f"/v1.41/containers/{backend}/start")),
            ("stop", post.format(f"/containers/{backend}/stop")),
            ("kill", post.format(f"/containers/{backend}/kill")),
            ("exec", post.format(f"/containers/{backend}/exec")),
            ("delete", f"DELETE /containers/{backend}?force=1 HTTP/1.1\r\nHost: docker\r\n\r\n"),
            ("logs", get.format(f"/containers/{backend}/logs?stdout=1")),
            ("archive", get.format(f"/containers/{backend}/archive?path=/run/secrets")),
            ("images", get.format("/images/json")),
            ("volumes", get.format("/volumes")),
            ("secrets", get.format("/secrets")),
            ("dot-segments", get.format("/containers/json/../create")),
            ("encoded", get.format("/containers/%2e%2e/create")),
            ("upgrade", "GET /_ping HTTP/1.1\r\nHost: docker\r\nUpgrade: tcp\r\n"
                        "Connection: Upgrade\r\n\r\n"),
            ("get-with-body", "GET /_ping HTTP/1.1\r\nHost: docker\r\nContent-Length: 2\r\n\r\n{}"),
            # a write smuggled behind an allowed read on the same connection
            ("pipelined", get.format("/_ping") + post.format("/containers/create?name=smuggled")),
        ])
        for label in ("ping", "list", "inspect"):
            assert results[label]["status"] == "HTTP/1.1 200 OK", (label, results[label])
        for label, result in results.items():
            if label not in ("ping", "list", "inspect", "pipelined"):
                assert result["status"] == "HTTP/1.1 403 Forbidden", (label, result)
                assert "aima socket proxy" in result["body"], (label, result)
        assert results["pipelined"]["status"] == "HTTP/1.1 200 OK"
        assert results["pipelined"]["responses"] == 1, results["pipelined"]
        after = TARGET.docker("ps", "-a", "--format", "{{.ID}} {{.State}}")
        assert after == before, (before, after)
        assert "evil" not in TARGET.docker("ps", "-a", "--format", "{{.Names}}")
        assert "smuggled" not in TARGET.docker("ps", "-a", "--format", "{{.Names}}")
        assert TARGET.healthy((*BASE, "socket-proxy"))

    def test_only_traefik_reaches_the_socket_proxy(self, host) -> None:
        """Not from the host, the edge network or the backend's network: it is on the internal
        discovery network alone, with the proxy."""
        sp = TARGET.inspect(TARGET.container("socket-proxy"))
        assert list(sp["NetworkSettings"]["Networks"]) == [DISCOVERY_NET]
        assert TARGET.inspect(DISCOVERY_NET)["Internal"] is True
        address = sp["NetworkSettings"]["Networks"][DISCOVERY_NET]["IPAddress"]
        subnet = TARGET.inspect(DISCOVERY_NET)["IPAM"]["Config"][0]["Subnet"]
        # The probes must stay on the instance: the same private subnet may exist beyond its
        # eth0 (this machine's own networks), and an answer from there would prove nothing.
        fences = [f"{chain} -o eth0 -d {subnet} -j REJECT" for chain in ("OUTPUT", "DOCKER-USER")]
        for fence in fences:
            TARGET.sh(f"iptables -w -I {fence}")
        try:
            seen = {"host": TARGET.out(f"python3 -c {shlex.quote(PORT_PROBE)} {address} 2375")
                    .strip()}
            for network in (f"{PROJECT}_edge", f"{PROJECT}_app"):
                seen[network] = TARGET.docker(
                    "run", "--rm", "--network", network, "--entrypoint", "python3",
                    backend_image(), "-c", PORT_PROBE, address, "2375").strip()
        finally:
            for fence in fences:
                TARGET.sh(f"iptables -w -D {fence}")
        assert set(seen.values()) == {"closed"}, seen
        # control: from the proxy, the one member that should, it is reachable
        from_proxy = TARGET.docker("exec", TARGET.container("reverse-proxy"), "wget", "-q",
                                   "-O", "-", "http://socket-proxy:2375/_ping")
        assert from_proxy.strip() == "OK"
        members = {c["Name"] for c in TARGET.inspect(DISCOVERY_NET)["Containers"].values()}
        assert members == {TARGET.container("reverse-proxy"), TARGET.container("socket-proxy")}


# ------------------------------------------------------------------------- no API, no dashboard
class TestNoApiOrDashboard:
    PATHS = ("/api/rawdata", "/api/overview", "/api/http/routers", "/dashboard/", "/api/version")

    def test_traefik_listens_only_on_its_entry_points(self, host) -> None:
        """In the proxy's own network namespace: 8080 and 8443 (published) and 127.0.0.1:2080
        (health probe); nothing else, so no API or dashboard port exists at all."""
        ports = listening_ports(TARGET.container("reverse-proxy"))
        # 127.0.0.11 is Docker's embedded DNS resolver, in every container on a user network
        ports = {(a, p) for a, p in ports if a != hex_ip("127.0.0.11")}
        loopback = {(a, p) for a, p in ports if a == hex_ip("127.0.0.1")}
        others = {p for a, p in ports if (a, p) not in loopback}
        assert loopback == {(hex_ip("127.0.0.1"), 2080)}, ports
        assert others == {8080, 8443}, ports

    def test_api_paths_reach_only_the_backend(self, host) -> None:
        """Through the published ports, with and without the login: Traefik's API paths are
        the backend's 404 (or the login's 401), never Traefik's JSON."""
        client = api()
        for path in self.PATHS:
            for who, c in (("login", client), ("anonymous", client.anonymous())):
                reply = c.request("GET", path)
                text = reply.body.decode(errors="replace")
                assert reply.status in (401, 404), (who, path, reply.status_line)
                assert set(reply.json() or {}) <= {"error", "detail"}, (who, path, text[:200])
                assert not re.search(r"routers|entryPoints|middlewares|traefik", text, re.I), text

    def test_ping_and_probe_stay_inside_the_container(self, host) -> None:
        proxy = TARGET.container("reverse-proxy")
        inside = TARGET.docker("exec", proxy, "wget", "-q", "-O", "-", "http://127.0.0.1:2080/ping")
        assert inside.strip() == "OK"
        address = TARGET.inspect(proxy)["NetworkSettings"]["Networks"][f"{PROJECT}_edge"][
            "IPAddress"]
        assert TARGET.out(f"python3 -c {shlex.quote(PORT_PROBE)} {address} 2080").strip() \
            == "closed"


# ------------------------------------------------------------------------- switching engines
def memory_mib(service: str) -> float:
    stats = json.loads(TARGET.docker("stats", "--no-stream", "--format", "{{json .}}",
                                     TARGET.container(service)))
    value, unit = re.match(r"([\d.]+)\s*([KMG]i?B)", stats["MemUsage"]).groups()
    return float(value) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "KB": 1 / 1000, "MB": 1,
                           "GB": 1000}[unit]


def data_snapshot() -> dict[str, object]:
    """Every job's id, the results of the finished ones, every media file's checksum."""
    return {"ids": [r["id"] for r in TARGET.sql("SELECT id FROM jobs ORDER BY id")],
            "finished": TARGET.sql("SELECT id, status, result::text AS result FROM jobs "
                                   "WHERE status IN ('done', 'failed') ORDER BY id"),
            "media": TARGET.media_checksums()}


def assert_kept(before: dict[str, object], after: dict[str, object]) -> None:
    """No job, result or file lost or changed (the worker may finish queued ones meanwhile)."""
    assert after["ids"] == before["ids"]
    assert after["media"] == before["media"]
    finished_after = {r["id"]: r for r in after["finished"]}  # type: ignore[union-attr]
    for row in before["finished"]:  # type: ignore[union-attr]
        assert finished_after.get(row["id"]) == row, row["id"]


class TestSwitchingEngines:
    def test_memory_at_rest_of_traefik(self, host) -> None:
        time.sleep(5)
        FIGURES["traefik_proxy_mib"] = round(memory_mib("reverse-proxy"), 1)
        FIGURES["traefik_socket_proxy_mib"] = round(memory_mib("socket-proxy"), 1)

    def test_switch_to_caddy_keeps_the_data(self, host) -> None:
        before = data_snapshot()
        run = RUNNER("-e", "aima_proxy_engine=caddy", label="switch-to-caddy")
        assert run.rc == 0, run.describe()
        assert proxy_engine_of(INSTANCE) == "caddy"
        assert TARGET.state("socket-proxy") == {}, "the socket proxy is still there"
        assert TARGET.docker("network", "ls", "-q", "--filter", f"name={DISCOVERY_NET}") == ""
        assert TARGET.sh(f"test -e {STACK_DIR}/traefik", check=False).returncode == 1
        assert TARGET.healthy(BASE)
        assert api().health().json()["status"] == "ok"
        assert_kept(before, data_snapshot())
        # (changed=0 on a second run is checked once, after the switch back: a run takes a minute)
        time.sleep(5)
        FIGURES["caddy_proxy_mib"] = round(memory_mib("reverse-proxy"), 1)

    def test_switch_back_to_traefik_keeps_the_data(self, host) -> None:
        before = data_snapshot()
        run = RUNNER(label="switch-to-traefik")
        assert run.rc == 0, run.describe()
        assert proxy_engine_of(INSTANCE) == "traefik"
        assert TARGET.sh(f"test -e {STACK_DIR}/Caddyfile", check=False).returncode == 1
        assert TARGET.healthy((*BASE, "socket-proxy"))
        client = api()
        assert client.health().json()["status"] == "ok"
        assert client.anonymous().request("GET", "/api/jobs").status == 401
        assert_kept(before, data_snapshot())
        again = RUNNER(label="switch-to-traefik-again")
        assert again.rc == 0 and again.changed == 0, again.describe()

    def test_figures_were_measured(self, host) -> None:
        """conftest.py prints them at the end of the run."""
        if EPHEMERAL.is_dir():
            (EPHEMERAL / "traefik-figures.json").write_text(json.dumps(FIGURES, indent=1))
        assert {"traefik_proxy_mib", "caddy_proxy_mib"} <= set(FIGURES), FIGURES
