"""Security checks on the freshly converged stack (the worker is checked once it runs).

Every request that must be refused is counted in the tally (tried / refused / leaked): a refusal
is the expected status, a leak is an answer that carries anything of the application's (a job
id, a file name, the page, the API description, a count, a trace of the backend).

Over 400 lines on purpose: the suite's first file, run against the freshly converged stack
before any fault; its classes (exposure, login and HTTPS, secrets, containers) share that state
and the tally."""

from __future__ import annotations

import ipaddress
import json
import shlex
import socket
import ssl
import uuid
import warnings

import bcrypt
import faultlib as f
import pytest

# The task that writes .env, the secret files and the proxy login (aima_stack's tasks/render.yml).
RENDER_TASK = "aima_stack : Write the stack's directories, .env, secret files, credentials"

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

# On the instance: HTTPS to each (address, name), the certificate verified against the root CA
# for that name, then GET /api/health with the login. Prints {name: "ok" | error}.
TLS_ON_HOST = r"""
import http.client, json, socket, ssl, sys
ca, targets, auth = sys.argv[1], json.loads(sys.argv[2]), sys.stdin.read()
ctx = ssl.create_default_context(cafile=ca)
results = {}
for addr, name in targets:
    try:
        conn = http.client.HTTPSConnection(name, 443, timeout=10, context=ctx)
        conn.sock = ctx.wrap_socket(socket.create_connection((addr, 443), timeout=10),
                                    server_hostname=name)
        conn.request("GET", "/api/health", headers={"Authorization": auth})
        status = conn.getresponse().status
        results[name] = "ok" if status == 200 else f"status {status}"
    except (OSError, http.client.HTTPException) as exc:
        results[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(results))
"""

PROXY_401 = {"error": "proxy_error", "detail": "401 Unauthorized"}
# Headers that only an answer of the backend (or of a file) carries.
BACKEND_HEADERS = {"via", "etag", "last-modified", "content-disposition", "accept-ranges"}
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


EDGE = f"{f.PROJECT}_edge"  # the proxy's network: its published ports, nothing else on it
PORTS = {"aima-backend": 8000, "database": 5432, "message-queue": 6379}


def private_subnets() -> list[str]:
    """Subnets of the project's networks other than edge (app, internal): only containers may
    use them; the host has no address on them."""
    ids = f.docker("network", "ls", "-q", "--filter",
                   f"label=com.docker.compose.project={f.PROJECT}").split()
    nets = json.loads(f.docker("network", "inspect", *ids))
    assert EDGE in {n["Name"] for n in nets}, [n["Name"] for n in nets]
    return [n["IPAM"]["Config"][0]["Subnet"] for n in nets if n["Name"] != EDGE]


def service_targets() -> list[str]:
    """The backend, database and queue ports on every address of theirs, on every network."""
    targets = []
    for service, port in PORTS.items():
        nets = f.inspect(f.container(service))["NetworkSettings"]["Networks"]
        assert EDGE not in nets, f"{service} is on the edge network"
        targets += [f"{n['IPAddress']}:{port}" for n in nets.values()]
    return targets


def job_count() -> int:
    return f.sql("SELECT count(*) AS n FROM jobs")[0]["n"]


def leaks(reply: f.Reply, markers: list[str], expected_body: object) -> list[str]:
    """What a refusal gave away: a body other than the expected one, a backend's header, any
    of the markers (job id, file name, page and API texts) in the body or the headers."""
    found = []
    if expected_body is None:
        if reply.body.strip():
            found.append(f"a body: {reply.body[:120]!r}")
    elif reply.json() != expected_body:
        found.append(f"a body other than {expected_body}: {reply.body[:120]!r}")
    found += sorted(BACKEND_HEADERS & set(reply.headers))
    # (a redirect's Location only echoes the client's own URL)
    text = reply.body.decode(errors="replace") + json.dumps(
        {k: v for k, v in reply.headers.items() if k != "location"})
    found += [m for m in markers if m in text]
    return found


def refused(tally: f.Tally, name: str, reply: f.Reply, status: int, markers: list[str],
            expected_body: object = PROXY_401) -> None:
    """Count the probe, then insist: the expected status and nothing given away."""
    leaked = leaks(reply, markers, expected_body)
    tally.probe(name, reply.status == status, bool(leaked))
    assert reply.status == status, (name, reply.status_line, reply.body[:300])
    assert not leaked, (name, leaked)


@pytest.fixture(scope="module")
def probe_job(api: f.Api) -> dict[str, str]:
    """A real job that no refused request may reveal."""
    name = "security-probe-c0ffee.png"
    return {"id": f.accept(api, name, f.png(seed=77)), "filename": name}


@pytest.fixture(scope="module")
def markers(probe_job: dict[str, str]) -> list[str]:
    """Texts only an answer of the application holds (checked against real answers below)."""
    return [probe_job["id"], probe_job["filename"], "<html", "openapi", "swagger", '"total"',
            '"database"', "function", "font-family"]


def protected_paths(job_id: str) -> dict[str, str]:
    """Path -> a text its authenticated answer contains (the proof the path serves data)."""
    return {
        "/": "<title>AIMA",
        "/index.html": "<title>AIMA",
        "/app.js": "function",
        "/style.css": "font-family",
        "/api/jobs": '"total"',
        f"/api/jobs/{job_id}": job_id,
        "/api/docs": "swagger",
        "/api/openapi.json": '"openapi"',
        "/api/health": '"database"',
    }


class TestPublishedPorts:
    def _listeners(self, proto: str) -> list[tuple[str, int]]:
        listeners = []
        for line in f.out(f"ss -l{proto}nH").splitlines():
            local = line.split()[3]
            addr, _, port = local.rpartition(":")
            listeners.append((addr.strip("[]").split("%")[0], int(port)))
        return listeners

    def test_only_the_proxy_listens_beyond_loopback(self) -> None:
        listeners = self._listeners("t")
        exposed = sorted(
            {(a, p) for a, p in listeners
             if not (a.startswith("127.") or a in ("::1", "localhost"))}
        )
        assert exposed, f"nothing listens on the instance? {listeners}"
        assert {p for _, p in exposed} == {80, 443}, f"listening beyond loopback: {exposed}"

    def test_no_ipv6_listener_for_the_proxy_ports(self) -> None:
        # control: the instance could listen on IPv6 (otherwise this check proves nothing)
        f.sh("python3 -c 'import socket; socket.socket(socket.AF_INET6).bind((\"::\", 0))'")
        for proto in ("t", "u"):
            listeners = self._listeners(proto)
            v6 = [(a, p) for a, p in listeners if p in (80, 443) and (a == "*" or ":" in a)]
            assert not v6, f"IPv6 listeners ({proto}): {v6}"
            v4 = {(a, p) for a, p in listeners if p in (80, 443)}
            assert v4 == ({("0.0.0.0", 80), ("0.0.0.0", 443)} if proto == "t"
                          else {("0.0.0.0", 443)}), (proto, v4)

    def test_only_the_proxy_publishes_ports(self) -> None:
        published = {}
        for c in f.project_containers():
            ports = c["HostConfig"].get("PortBindings") or {}
            if ports:
                published[c["Config"]["Labels"]["com.docker.compose.service"]] = {
                    port: sorted((b["HostIp"], b["HostPort"]) for b in bindings)
                    for port, bindings in ports.items()}
        assert published == {"reverse-proxy": {
            "8080/tcp": [("0.0.0.0", "80")],
            "8443/tcp": [("0.0.0.0", "443")],
            "8443/udp": [("0.0.0.0", "443")],
        }}, published


class TestNetworkIsolation:
    """Nothing but the proxy is reachable from the host or from a container on the edge network,
    and the data services not even from the backend's network. Probes stay on the instance: a
    REJECT rule keeps them from leaving through eth0 (other hosts may use the same private
    addresses), so only a path inside the instance could answer."""

    def _fence(self, subnets: list[str], chain: str, insert: bool) -> None:
        op = "-I" if insert else "-D"
        for subnet in subnets:
            f.sh(f"iptables -w {op} {chain} -o eth0 -d {subnet} -j REJECT")

    def _probe_from_network(self, network: str, targets: list[str]) -> dict[str, str]:
        image = f.inspect(f.container("aima-backend"))["Config"]["Image"]
        subnets = private_subnets()
        self._fence(subnets, "DOCKER-USER", True)
        try:
            return json.loads(f.docker(
                "run", "--rm", "--network", network, "--entrypoint", "python3",
                image, "-c", PROBE, json.dumps(targets)))
        finally:
            self._fence(subnets, "DOCKER-USER", False)

    def test_backend_database_and_queue_unreachable_from_the_host(self) -> None:
        subnets, targets = private_subnets(), service_targets()
        local = [f"127.0.0.1:{port}" for port in PORTS.values()]
        self._fence(subnets, "OUTPUT", True)
        try:
            res = json.loads(f.out(
                f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(targets + local))}"))
        finally:
            self._fence(subnets, "OUTPUT", False)
        addrs = f.out("ip -o -4 addr show").split()
        on_host = [a for a in addrs if "/" in a and any(
            ipaddress.ip_interface(a).ip in ipaddress.ip_network(n) for n in subnets)]
        assert all(v != "open" for v in res.values()), (
            f"reachable from the host, past the proxy's login: {res}; host addresses on the "
            f"private networks {subnets}: {on_host}"
        )
        assert not on_host, f"the host has an address on a private network: {on_host}"
        # control: the same probe reaches the proxy
        control = json.loads(f.out(
            f"python3 -c {shlex.quote(PROBE)} "
            f"{shlex.quote(json.dumps(['127.0.0.1:80', '127.0.0.1:443']))}"
        ))
        assert control == {"127.0.0.1:80": "open", "127.0.0.1:443": "open"}

    def test_only_the_proxy_reachable_from_the_edge_network(self) -> None:
        names = [f"{s}:{p}" for s, p in PORTS.items()] + [f"{f.PROJECT}-database-1:5432",
                 # the proxy's own probe listener is on its loopback only
                 "reverse-proxy:2080"]
        res = self._probe_from_network(EDGE, [*service_targets(), *names, "reverse-proxy:8443"])
        control = res.pop("reverse-proxy:8443")
        assert control == "open", "control probe: the proxy must be reachable from edge"
        assert all(v != "open" for v in res.values()), res

    def test_database_and_queue_unreachable_from_the_backends_network(self) -> None:
        backend_nets = f.inspect(f.container("aima-backend"))["NetworkSettings"]["Networks"]
        proxy_nets = f.inspect(f.container("reverse-proxy"))["NetworkSettings"]["Networks"]
        shared = sorted(set(backend_nets) & set(proxy_nets))
        assert len(shared) == 1, f"proxy and backend share {shared}"
        targets = [t for t in service_targets() if not t.endswith(":8000")]
        names = ["database:5432", "message-queue:6379", "reverse-proxy:2080"]
        res = self._probe_from_network(shared[0], [*targets, *names, "aima-backend:8000"])
        control = res.pop("aima-backend:8000")
        assert control == "open", f"control probe: the backend must be reachable on {shared[0]}"
        assert all(v != "open" for v in res.values()), res


class TestLogin:
    """Everything behind the proxy needs the login; a refusal gives nothing away."""

    def test_the_login_opens_every_path(self, api: f.Api, probe_job: dict[str, str]) -> None:
        # the control: with the login, each path serves what the probes below must not see
        for path, text in protected_paths(probe_job["id"]).items():
            reply = api.request("GET", path)
            assert reply.status == 200, (path, reply.status, reply.body[:200])
            assert text in reply.body.decode(errors="replace"), (path, reply.body[:200])
            # Caddy marks what it proxied with Via (Traefik adds no such header)
            if f.ENGINE == "caddy":
                assert "via" in reply.headers, f"{path}: not answered by the backend?"

    def test_anonymous_requests_get_401_and_nothing_else(
        self, api: f.Api, probe_job: dict[str, str], markers: list[str], tally: f.Tally
    ) -> None:
        anonymous = api.anonymous()
        for path in protected_paths(probe_job["id"]):
            for method in ("GET", "HEAD"):
                reply = anonymous.request(method, path)
                refused(tally, f"anonymous {method} {path}", reply, 401, markers,
                        PROXY_401 if method == "GET" else None)
                assert reply.headers.get("www-authenticate") == 'Basic realm="AIMA"', path
                for header, value in SECURITY_HEADERS.items():
                    assert reply.headers.get(header) == value, (path, header)
                assert reply.headers.get("content-type") == "application/json", path

    def test_anonymous_upload_is_refused_and_stores_nothing(
        self, api: f.Api, markers: list[str], tally: f.Tally
    ) -> None:
        before, media = job_count(), f.media_checksums()
        reply = api.anonymous().upload("anonymous.png", f.png(seed=78))
        refused(tally, "anonymous POST /api/jobs", reply, 401, markers)
        assert job_count() == before and f.media_checksums() == media

    def test_wrong_logins_get_401(
        self, api: f.Api, probe_job: dict[str, str], markers: list[str], tally: f.Tally
    ) -> None:
        user, password = f.login()
        wrong = {
            "wrong password": (user, password[:-1] + ("x" if password[-1] != "x" else "y")),
            "empty password": (user, ""),
            "wrong user": ("admin", password),
            "user in other case": (user.upper(), password),
            "password with a suffix": (user, password + "x"),
        }
        before = job_count()
        for what, (u, p) in wrong.items():
            client = api.as_user(u, p)
            reply = client.request("GET", f"/api/jobs/{probe_job['id']}")
            refused(tally, f"{what}: GET /api/jobs/<id>", reply, 401, markers)
            assert reply.headers.get("www-authenticate") == 'Basic realm="AIMA"'
        reply = api.as_user(user, password[::-1]).upload("wrong-login.png", f.png(seed=79))
        refused(tally, "wrong password: POST /api/jobs", reply, 401, markers)
        assert job_count() == before
        # and the right login still works
        assert api.request("GET", f"/api/jobs/{probe_job['id']}").status == 200


class TestHttps:
    def test_certificate_verifies_for_the_instance_address(self, api: f.Api) -> None:
        with api.connect(timeout=10) as tls:
            assert isinstance(tls, ssl.SSLSocket)
            cert = tls.getpeercert()
            assert ("IP Address", api.host) in cert["subjectAltName"], cert["subjectAltName"]
            issuer = dict(x[0] for x in cert["issuer"])
            # Caddy's internal CA, or the role's own for Traefik (<stack_dir>/tls/ca)
            authority = {"caddy": "Caddy Local Authority", "traefik": "AIMA Local Authority"}
            assert issuer["commonName"].startswith(authority[f.ENGINE]), issuer
            assert tls.version() in ("TLSv1.2", "TLSv1.3"), tls.version()
        # the verification is real: another name, or no internal root, fails
        for ctx, name in ((api.context, "evil.example"), (ssl.create_default_context(), api.host)):
            assert ctx is not None
            with socket.create_connection((api.host, 443), timeout=10) as raw, \
                    pytest.raises(ssl.SSLError):
                ctx.wrap_socket(raw, server_hostname=name)

    def _tls_on_host(self, targets: list[tuple[str, str]]) -> dict[str, str]:
        # the login goes through stdin, never onto a command line
        return json.loads(f.sh(
            f"python3 -c {shlex.quote(TLS_ON_HOST)} {shlex.quote(f.ROOT_CA)} "
            f"{shlex.quote(json.dumps(targets))}",
            stdin=f.basic(*f.login()).encode()).stdout.decode())

    def _certificate_names(self, api: f.Api) -> list[str]:
        if f.ENGINE == "traefik":
            # the role issued the certificate for exactly these names, in this order
            with api.connect(timeout=10) as tls:
                assert isinstance(tls, ssl.SSLSocket)
                return [value for _, value in tls.getpeercert()["subjectAltName"]]
        caddyfile = f.out(f"cat {f.STACK_DIR}/Caddyfile")
        site = next(line for line in caddyfile.splitlines() if line.startswith("https://"))
        return [n.strip().removeprefix("https://") for n in site.rstrip(" {").split(",")]

    def test_certificate_names_verify_on_the_host(self, api: f.Api) -> None:
        """The default names: the host's address (also what a client without SNI gets, as
        every client connecting by IP address) and localhost (the host itself, an SSH
        tunnel): both verify against the root, from the host itself too."""
        assert self._certificate_names(api) == [api.host, "localhost"]
        res = self._tls_on_host([(api.host, api.host), ("127.0.0.1", "localhost")])
        assert res == {api.host: "ok", "localhost": "ok"}, res

    def test_old_tls_versions_are_refused(self, api: f.Api, tally: f.Tally) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            versions = {"TLS 1.0": ssl.TLSVersion.TLSv1, "TLS 1.1": ssl.TLSVersion.TLSv1_1,
                        "TLS 1.2": ssl.TLSVersion.TLSv1_2, "TLS 1.3": ssl.TLSVersion.TLSv1_3}
        results = {}
        for label, version in versions.items():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cadata=api.ca)
            ctx.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer the old versions at all
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ctx.maximum_version = version
            try:
                with socket.create_connection((api.host, 443), timeout=10) as raw, \
                        ctx.wrap_socket(raw, server_hostname=api.host) as tls:
                    results[label] = tls.version()
            except ssl.SSLError as exc:
                results[label] = exc.reason
        # the server's own refusal (an alert), not this client failing to offer the version
        for label in ("TLS 1.0", "TLS 1.1"):
            tally.probe(f"HTTPS with {label}",
                        results[label] == "TLSV1_ALERT_PROTOCOL_VERSION",
                        results[label].startswith("TLSv"))
        assert results == {"TLS 1.0": "TLSV1_ALERT_PROTOCOL_VERSION",
                           "TLS 1.1": "TLSV1_ALERT_PROTOCOL_VERSION",
                           "TLS 1.2": "TLSv1.2", "TLS 1.3": "TLSv1.3"}, results

    def test_plain_http_only_redirects(
        self, api: f.Api, probe_job: dict[str, str], markers: list[str], tally: f.Tally
    ) -> None:
        """Port 80 answers every request with a 308 to the same URL on https and nothing else,
        with or without the login (a careless client sends it in the clear: still nothing)."""
        before, media = job_count(), f.media_checksums()
        job = probe_job["id"]
        requests = [("GET", path) for path in protected_paths(job)]
        requests += [("GET", "/api/jobs?limit=200&offset=0"), ("HEAD", "/"),
                     ("OPTIONS", "/api/jobs"), ("PUT", f"/api/jobs/{job}"),
                     ("DELETE", f"/api/jobs/{job}"), ("PATCH", "/api/jobs")]
        body, ctype = f.multipart("over-http.png", f.png(seed=80))
        for client, who in ((api.plain_http(), "with the login"),
                            (api.anonymous().plain_http(), "anonymous")):
            for method, path in [*requests, ("POST", "/api/jobs")]:
                payload = body if method == "POST" else None
                headers = {"Content-Type": ctype} if method == "POST" else {}
                reply = client.request(method, path, payload, headers)
                # Traefik's redirect: 301 for GET (it stays a GET), its status text as the body
                status = 301 if f.ENGINE == "traefik" and method == "GET" else 308
                if f.ENGINE == "traefik":
                    assert reply.body in (b"", b"Moved Permanently", b"Permanent Redirect"), (
                        method, path, reply.body[:120])
                    reply.body = b""
                refused(tally, f"port 80 {who}: {method} {path}", reply, status, markers, None)
                assert reply.headers.get("location") == f"https://{api.host}{path}", (
                    method, path, reply.headers.get("location"))
        assert job_count() == before, "a POST over plain HTTP created a job"
        assert f.media_checksums() == media


class TestCrossSite:
    """State-changing requests from another site's pages are refused (the browser replays the
    login); the site's own pages are not."""

    def test_cross_site_uploads_are_refused(
        self, api: f.Api, markers: list[str], tally: f.Tally
    ) -> None:
        before, media = job_count(), f.media_checksums()
        for what, headers in (("Origin: https://evil.example", {"Origin": "https://evil.example"}),
                              ("Sec-Fetch-Site: cross-site", {"Sec-Fetch-Site": "cross-site"})):
            reply = api.upload("cross-site.png", f.png(seed=81), headers=headers)
            text = reply.body.decode(errors="replace")
            tally.probe(f"cross-site POST /api/jobs ({what})", reply.status == 403,
                        reply.status < 400 or any(m in text for m in markers))
            assert reply.status == 403, (what, reply.status, reply.body[:300])
            body = reply.json()
            assert body["error"] == "cross_site_request" and body["detail"], body
        assert job_count() == before, "a cross-site upload created a job"
        assert f.media_checksums() == media

    def test_same_origin_uploads_pass(self, api: f.Api) -> None:
        before = job_count()
        for i, headers in enumerate(({"Origin": f"https://{api.host}"},
                                     {"Sec-Fetch-Site": "same-origin",
                                      "Origin": f"https://{api.host}"})):
            f.accept(api, f"same-origin-{i}.png", f.png(seed=82 + i), headers=headers)
        assert job_count() == before + 2


class TestClientAddress:
    def test_access_log_shows_the_real_client_address(self, api: f.Api) -> None:
        marker = uuid.uuid4().hex
        assert api.request("GET", f"/api/health?probe={marker}").status == 200
        lines = f.wait_for("the request in the proxy's access log", lambda: f.out(
            f"docker logs {f.container('reverse-proxy')} 2>&1 | grep -F {marker} || true"
        ).splitlines(), timeout=20, interval=0.5)
        entry = json.loads(lines[-1])
        if f.ENGINE == "traefik":
            self._check_traefik_entry(entry)
            return
        request = entry["request"]
        gateway = f.default_gateway()
        nested = {json.loads(f.docker("network", "inspect", n))[0]["IPAM"]["Config"][0]
                  .get("Gateway") for n in (f"{f.PROJECT}_edge", "bridge")}
        assert request["remote_ip"] == gateway, (request["remote_ip"], gateway, nested)
        assert request["client_ip"] == gateway, request
        assert gateway not in nested, (gateway, nested)
        # the login is named, its password redacted
        assert entry["user_id"] == f.login()[0], entry.get("user_id")
        assert request["headers"].get("Authorization") == ["REDACTED"], request["headers"]

    @staticmethod
    def _check_traefik_entry(entry: dict) -> None:
        gateway = f.default_gateway()
        assert entry["ClientHost"] == gateway, entry
        assert entry["ClientAddr"].rsplit(":", 1)[0] == gateway, entry
        # the login is named; no request header is logged, so no Authorization at all
        assert entry["ClientUsername"] == f.login()[0], entry.get("ClientUsername")
        assert not [k for k in entry if k.lower().startswith("request_")], entry


class TestSecrets:
    def test_env_file_is_root_only(self) -> None:
        assert f.out(f"stat -c '%a %U %G' {f.STACK_DIR}/.env").split() == ["600", "root", "root"]

    def test_credentials_file_is_root_only(self) -> None:
        assert f.out(f"stat -c '%a %U %G' {f.CREDENTIALS}").split() == ["600", "root", "root"]

    def test_secrets_exist_and_are_strong(self) -> None:
        values = f.secrets()
        assert set(values) >= {"AIMA_DB_PASSWORD", "AIMA_REDIS_PASSWORD", "AIMA_LOGIN_PASSWORD",
                               "AIMA_LOGIN_SALT_SEED", "AIMA_LOGIN_BASIC_AUTH"}
        for key, value in values.items():
            if key != "AIMA_LOGIN_BASIC_AUTH":
                assert len(value) >= 16 and value.isalnum(), f"{key} is weak"
        assert len(set(values.values())) == len(values), "two secrets are the same"
        assert f.credentials()["AIMA_LOGIN_USER"] == "aima"

    def test_the_proxy_holds_only_a_bcrypt_hash(self) -> None:
        user, password = f.login()
        if f.ENGINE == "traefik":
            dynamic = f.out(f"cat {f.STACK_DIR}/traefik/dynamic/aima.yml")
            block = dynamic.split("users:", 1)[1].split("aima-chain:", 1)[0]
            accounts = dict(json.loads(line.strip()[2:]).split(":", 1)
                            for line in block.splitlines() if line.strip().startswith("- "))
        else:
            caddyfile = f.out(f"cat {f.STACK_DIR}/Caddyfile")
            block = caddyfile.split("basic_auth bcrypt", 1)[1].split("}", 1)[0]
            accounts = dict(line.split() for line in block.splitlines()[1:] if line.strip())
        assert set(accounts) == {user}, accounts
        assert accounts[user].startswith("$2"), "not a bcrypt hash"
        assert bcrypt.checkpw(password.encode(), accounts[user].encode()), (
            "the hash in the Caddyfile does not match the password in credentials")

    def test_no_secret_in_the_stack_files(self) -> None:
        # the stack directory (but .env, credentials and secrets/, the secrets' home) and the
        # proxy's volumes (its certificates and the config it saved)
        places = (f"{f.STACK_DIR} /var/lib/docker/volumes/{f.PROJECT}_proxy-data "
                  f"/var/lib/docker/volumes/{f.PROJECT}_proxy-config")
        for key, value in f.secrets().items():
            found = f.sh(
                "grep -rlF --exclude=.env --exclude=credentials --exclude-dir=images "
                "--exclude-dir=secrets -f - "
                f"{places} || true", stdin=value.encode() + b"\n",
            ).stdout.decode().split()
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

    def test_no_secret_in_any_container_environment(self) -> None:
        """Secrets reach the services as files (/run/secrets): no secret, the login included,
        is in any container's configured or actual environment."""
        texts = []
        for c in f.project_containers():
            texts.append(json.dumps(c["Config"].get("Env")))
            pid = c["State"]["Pid"]
            if pid:
                texts.append(f.out(f"tr '\\0' '\\n' < /proc/{pid}/environ"))
        assert texts
        text = "\n".join(texts)
        for key, value in f.secrets().items():
            assert value not in text, f"{key} is in a container's environment"

    def test_no_secret_on_any_process_command_line(self) -> None:
        text = f.out("ps -eo args")
        for key, value in f.secrets().items():
            assert value not in text, f"{key} is visible in `ps` on the host"

    def test_no_secret_in_the_converge_log(self) -> None:
        log = f.EPHEMERAL / "ansible.log"
        assert log.is_file(), "ANSIBLE_LOG_PATH of molecule.yml did not log the converge"
        text = log.read_text(errors="replace")
        assert RENDER_TASK in text, "the log does not cover the writing of .env and the login"
        for key, value in f.secrets().items():
            assert value not in text, f"{key} appears in the Ansible log of the converge"

    def test_no_secret_in_a_verbose_diff_run(self) -> None:
        run = f.playbook("-vvv", "--diff")
        assert run.rc == 0 and run.changed == 0, run.describe()
        assert RENDER_TASK in run.output, "the run skipped the writing of .env and the login"
        for key, value in f.secrets().items():
            assert value not in run.output, f"{key} appears in the output of -vvv --diff"

    def test_no_secret_in_the_proxy_and_backend_logs(self) -> None:
        for service in ("reverse-proxy", "aima-backend"):
            logs = f.out(f"docker logs {f.container(service)} 2>&1")
            assert logs.strip(), f"{service} logged nothing?"
            for key, value in f.secrets().items():
                assert value not in logs, f"{key} appears in the log of {service}"


class TestContainers:
    @pytest.mark.parametrize("service", f.SERVICES)
    def test_hardening(self, service: str) -> None:
        f.check_hardening(service)

    def test_no_container_mounts_the_docker_socket(self) -> None:
        """None but the Traefik engine's socket proxy, which holds it read-only (a filtered,
        GET-only view; the traefik scenario proves what it refuses) on an internal network."""
        for c in f.project_containers():
            service = c["Config"]["Labels"]["com.docker.compose.service"]
            if f.ENGINE == "traefik" and service == "socket-proxy":
                sockets = [m for m in c["Mounts"] if m["Destination"] == "/var/run/docker.sock"]
                assert len(sockets) == 1 and sockets[0]["RW"] is False, c["Mounts"]
                assert list(c["NetworkSettings"]["Networks"]) == [f"{f.PROJECT}_discovery"]
                continue
            for m in c["Mounts"]:
                assert "docker.sock" not in m.get("Source", ""), (c["Name"], m)
                assert m.get("Source") not in ("/run", "/var/run", "/"), (c["Name"], m)

    def test_proxy_security_headers(self, api: f.Api) -> None:
        for client, path in ((api, "/"), (api, "/api/health"), (api, "/api/jobs/nope"),
                             (api.anonymous(), "/")):
            reply = client.request("GET", path)
            h = reply.headers
            assert h.get("x-content-type-options") == "nosniff", path
            assert h.get("x-frame-options") == "DENY", path
            assert h.get("referrer-policy") == "no-referrer", path
            assert "frame-ancestors 'none'" in h.get("content-security-policy", ""), path
            assert "default-src 'self'" in h.get("content-security-policy", ""), path
            assert h.get("strict-transport-security", "").startswith("max-age="), path
            assert "server" not in h, (path, h.get("server"))
