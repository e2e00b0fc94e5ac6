"""The Traefik engine's files, rendered by the role's own tasks and resolved by `docker compose
config`: discovery through the socket proxy only, no API, the same contract as Caddy.
(HTTPS from the internal CA needs the host's certificate tasks: the traefik scenario runs it.)"""

from __future__ import annotations

import json

import bcrypt
import yaml

ACME = {"aima_proxy_engine": "traefik", "aima_domain": "aima.example.org",
        "aima_acme_email": "ops@example.org"}


def traefik_files(r) -> tuple[dict, dict]:
    static = yaml.safe_load((r.dir / "traefik" / "traefik.yml").read_text())
    dynamic = yaml.safe_load((r.dir / "traefik" / "dynamic" / "aima.yml").read_text())
    return static, dynamic


def test_traefik_discovers_through_the_socket_proxy_only(render):
    r = render(**ACME)
    model = r.model("gpu")
    services = model["services"]
    assert set(services) == {"reverse-proxy", "aima-backend", "database", "message-queue",
                             "socket-proxy", "aima-gpu-worker"}
    proxy, socket_proxy = services["reverse-proxy"], services["socket-proxy"]
    assert proxy["image"].startswith("traefik:v3.")
    # only the socket proxy has the socket, read-only, on the internal discovery network
    mounts = {name: [v for v in svc.get("volumes", []) if "docker.sock" in v.get("source", "")]
              for name, svc in services.items()}
    assert [m["read_only"] for m in mounts.pop("socket-proxy")] == [True]
    assert not any(mounts.values()), mounts
    assert set(socket_proxy["networks"]) == {"discovery"}
    assert not socket_proxy.get("ports")
    assert set(proxy["networks"]) == {"edge", "app", "discovery"}
    assert model["networks"]["discovery"]["internal"] is True
    # hardened like every service: not root, no capability, read-only, bounded
    assert socket_proxy["user"] == "10001:10001" and socket_proxy["group_add"]
    assert socket_proxy["cap_drop"] == ["ALL"] and socket_proxy["read_only"] is True
    assert socket_proxy["security_opt"] == ["no-new-privileges:true"]
    assert socket_proxy["mem_limit"] and socket_proxy["pids_limit"] == 32
    static, _dynamic = traefik_files(r)
    docker = static["providers"]["docker"]
    assert docker["endpoint"] == "tcp://socket-proxy:2375"
    assert docker["exposedByDefault"] is False
    assert "com.docker.compose.project" in docker["constraints"]


def test_routes_come_from_the_backends_labels(render):
    labels = render(**ACME).model()["services"]["aima-backend"]["labels"]
    assert labels["traefik.enable"] == "true"
    assert labels["traefik.http.routers.aima.rule"] == "Host(`aima.example.org`)"
    assert labels["traefik.http.services.aima.loadbalancer.server.port"] == "8000"
    assert labels["traefik.http.routers.aima-probe.entrypoints"] == "probe"


def test_no_api_no_dashboard_and_acme_for_the_domain(render):
    static, _dynamic = traefik_files(render(**ACME))
    assert "api" not in static
    assert set(static["entryPoints"]) == {"web", "websecure", "probe"}
    assert static["entryPoints"]["probe"]["address"] == "127.0.0.1:2080"
    assert static["ping"] == {"entryPoint": "probe"}
    web, websecure = static["entryPoints"]["web"], static["entryPoints"]["websecure"]
    assert web["http"]["redirections"]["entryPoint"] == {
        "to": ":443", "scheme": "https", "permanent": True}
    assert websecure["http"]["tls"]["certResolver"] == "acme"
    assert websecure["http"]["middlewares"] == ["aima-chain@file"]
    acme = static["certificatesResolvers"]["acme"]["acme"]
    assert acme["email"] == "ops@example.org" and acme["httpChallenge"] == {"entryPoint": "web"}
    assert static["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}


def test_login_headers_and_limits_match_the_caddy_engine(render):
    r = render(**ACME)
    static, dynamic = traefik_files(r)
    middlewares = dynamic["http"]["middlewares"]
    assert middlewares["aima-chain"]["chain"]["middlewares"] == [
        "aima-headers", "aima-errors", "aima-auth"]
    auth = middlewares["aima-auth"]["basicAuth"]
    assert auth["realm"] == "AIMA" and auth["removeHeader"] is True
    user, hashed = auth["users"][0].split(":", 1)
    creds = dict(line.split("=", 1) for line in (r.dir / "credentials").read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    assert user == creds["AIMA_LOGIN_USER"]
    assert bcrypt.checkpw(creds["AIMA_LOGIN_PASSWORD"].encode(), hashed.encode())
    assert creds["AIMA_LOGIN_PASSWORD"] not in json.dumps(dynamic)
    headers = middlewares["aima-headers"]["headers"]
    assert headers["frameDeny"] and headers["contentTypeNosniff"]
    assert headers["referrerPolicy"] == "no-referrer"
    assert "frame-ancestors 'none'" in headers["contentSecurityPolicy"]
    assert headers["customResponseHeaders"]["Server"] == ""
    assert middlewares["aima-errors"]["errors"]["query"] == "/api/proxy-error/{status}"
    for entry in ("web", "websecure"):
        assert static["entryPoints"][entry]["http"]["maxHeaderBytes"] == 8192
        assert static["entryPoints"][entry]["transport"]["respondingTimeouts"][
            "readTimeout"] == "610s"


def test_plain_http_serves_the_app_on_port_80_with_the_login(render):
    static, _dynamic = traefik_files(render(aima_proxy_engine="traefik", aima_tls=False))
    assert set(static["entryPoints"]) == {"web", "probe"}
    web = static["entryPoints"]["web"]
    assert web["asDefault"] is True and web["http"]["middlewares"] == ["aima-chain@file"]
    assert "redirections" not in web["http"]


def test_caddy_engine_renders_no_traefik_part(render):
    r = render()
    model = r.model("gpu")
    assert "socket-proxy" not in model["services"]
    assert "discovery" not in model["networks"]
    assert not (r.dir / "traefik").exists()
    assert "labels" not in model["services"]["aima-backend"]
