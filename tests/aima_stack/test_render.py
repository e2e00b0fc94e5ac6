"""aima_stack templates rendered by the role's own tasks, checked with `docker compose config`."""

from __future__ import annotations

import hashlib
import json
import re
import stat

import pytest

BASE = {"reverse-proxy", "aima-backend", "database", "message-queue"}
WORKER = "aima-gpu-worker"
SECRETS = ("AIMA_DB_PASSWORD", "AIMA_REDIS_PASSWORD")


def gpu_reserved(service: dict) -> bool:
    devices = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def published(model: dict) -> set[tuple[str, int, str, str]]:
    """The proxy's ports as (host address, container port, host port, protocol)."""
    return {
        (p.get("host_ip", ""), p["target"], p["published"], p.get("protocol", "tcp"))
        for p in model["services"]["reverse-proxy"]["ports"]
    }


def test_only_the_proxy_publishes_ports_on_ipv4(render):
    model = render().model("gpu")
    assert set(model["services"]) == BASE | {WORKER}
    # Unprivileged ports inside the container, 80/443 on every IPv4 address (never IPv6).
    assert published(model) == {
        ("0.0.0.0", 8080, "80", "tcp"),
        ("0.0.0.0", 8443, "443", "tcp"),
        ("0.0.0.0", 8443, "443", "udp"),
    }
    others = {name: svc.get("ports", []) for name, svc in model["services"].items()}
    others.pop("reverse-proxy")
    assert all(not ports for ports in others.values()), others
    proxy = model["services"]["reverse-proxy"]
    assert proxy["cap_drop"] == ["ALL"] and not proxy.get("cap_add")


def test_domain_gets_acme_and_a_redirect_to_its_port(render):
    r = render(
        aima_domain="aima.example.org",
        aima_acme_email="ops@example.org",
        aima_http_port=8080,
        aima_https_port=8443,
    )
    assert published(r.model()) == {
        ("0.0.0.0", 8080, "8080", "tcp"),
        ("0.0.0.0", 8443, "8443", "tcp"),
        ("0.0.0.0", 8443, "8443", "udp"),
    }
    assert re.search(r"^aima\.example\.org \{$", r.caddyfile, re.M)
    assert "email ops@example.org" in r.caddyfile
    assert "tls internal" not in r.caddyfile
    assert "Strict-Transport-Security" in r.caddyfile
    assert "auto_https off" not in r.caddyfile
    assert "redir https://{host}:8443{uri} 308" in r.caddyfile
    # HTTP/3 is advertised on the published port, not on the proxy's container port.
    assert 'Alt-Svc "h3=\\":8443\\"; ma=2592000"' in r.caddyfile
    assert r.env["AIMA_HTTP_PORT"] == "8080" and r.env["AIMA_HTTPS_PORT"] == "8443"


def test_no_domain_means_https_from_the_internal_ca(render):
    r = render(aima_tls_hosts=["203.0.113.9", "aima.lan", "2001:db8::9"])
    site = re.search(r"^(https://\S+(?:, https://\S+)*) \{$", r.caddyfile, re.M)
    assert site, r.caddyfile
    assert site.group(1) == "https://203.0.113.9, https://aima.lan, https://[2001:db8::9]"
    assert "tls internal" in r.caddyfile
    assert "default_sni 203.0.113.9" in r.caddyfile
    assert "redir https://{host}{uri} 308" in r.caddyfile
    assert "Strict-Transport-Security" in r.caddyfile
    # Plain HTTP serves nothing but the redirect: the app is imported by the HTTPS site only.
    http_site = r.caddyfile.split("\nhttp:// {\n", 1)[1].split("\n}\n", 1)[0]
    assert "reverse_proxy" not in http_site and "import aima_app" not in http_site


def test_default_certificate_names_the_host(render):
    r = render()
    site = re.search(r"^(https://\S+(?:, https://\S+)*) \{$", r.caddyfile, re.M)
    assert site, r.caddyfile
    names = site.group(1).split(", ")
    assert len(names) == 2 and names[-1] == "https://localhost", names


def test_plain_http_only_when_asked(render):
    r = render(aima_tls=False)
    assert published(r.model()) == {("0.0.0.0", 8080, "80", "tcp")}
    assert "auto_https off" in r.caddyfile
    assert re.search(r"^http:// \{\n\timport aima_app$", r.caddyfile, re.M)
    assert "Strict-Transport-Security" not in r.caddyfile
    assert "redir" not in r.caddyfile


def test_bind_address_is_used_for_the_published_ports(render):
    ports = render(aima_bind_address="192.0.2.7").model()["services"]["reverse-proxy"]["ports"]
    assert {p["host_ip"] for p in ports} == {"192.0.2.7"}


def test_networks_edge_app_and_internal(render):
    model = render().model("gpu")
    for name in ("app", "internal"):
        assert model["networks"][name].get("internal") is True, name
        # No host address on them: nothing on the host reaches past the proxy.
        assert model["networks"][name]["driver_opts"] == {
            "com.docker.network.bridge.inhibit_ipv4": "true"
        }, name
    assert not model["networks"]["edge"].get("internal")
    nets = {name: set(svc["networks"]) for name, svc in model["services"].items()}
    assert nets == {
        "reverse-proxy": {"edge", "app"},
        "aima-backend": {"app", "internal"},
        WORKER: {"internal"},
        "database": {"internal"},
        "message-queue": {"internal"},
    }


def test_named_volumes_for_all_state(render):
    model = render().model("gpu")
    assert set(model["volumes"]) >= {
        "database-data",
        "queue-data",
        "media",
        "proxy-data",
        "proxy-config",
    }
    mounts = {
        name: {
            (v["source"], v["target"], v.get("read_only", False))
            for v in svc.get("volumes", [])
            if v["type"] == "volume"
        }
        for name, svc in model["services"].items()
    }
    assert ("database-data", "/var/lib/postgresql/data", False) in mounts["database"]
    assert ("queue-data", "/data", False) in mounts["message-queue"]
    assert ("media", "/data/media", False) in mounts["aima-backend"]
    assert ("media", "/data/media", True) in mounts[WORKER]
    assert {"proxy-data", "proxy-config"} <= {m[0] for m in mounts["reverse-proxy"]}


def test_proxy_runs_as_its_own_user_on_volumes_docker_does_not_overwrite(render):
    proxy = render(aima_proxy_uid=12345).model("gpu")["services"]["reverse-proxy"]
    assert proxy["user"] == "12345:12345"
    state = [v for v in proxy["volumes"] if v["type"] == "volume"]
    assert {v["target"] for v in state} == {"/data", "/config"}
    # Without nocopy Docker copies the image's root-owned directories into a new volume.
    assert all(v.get("volume", {}).get("nocopy") is True for v in state), state


def test_every_service_is_hardened_and_has_a_healthcheck(render):
    r = render()
    for name, svc in r.model("gpu")["services"].items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert not svc.get("privileged"), name
        for vol in svc.get("volumes", []):
            assert "docker.sock" not in vol.get("source", ""), name
    assert "docker.sock" not in r.compose_text


def test_worker_profile_grace_and_no_gpu_by_default(render):
    model = render().model("gpu")
    worker = model["services"][WORKER]
    assert worker["profiles"] == ["gpu"]
    assert worker["stop_grace_period"] == "45s"
    assert worker["environment"]["AIMA_SHUTDOWN_GRACE_S"] == "20"
    assert worker["environment"]["AIMA_WORKER_DEVICE"] == "auto"
    assert not gpu_reserved(worker)
    # Without the profile the worker is not part of the model (a plain `up` never touches it).
    assert WORKER not in render().model()["services"]
    assert all("profiles" not in svc for n, svc in model["services"].items() if n != WORKER)


@pytest.mark.parametrize(
    ("device", "gpu_usable", "reserved"),
    [("auto", True, True), ("auto", False, False), ("cpu", True, False), ("gpu", True, True)],
)
def test_gpu_reservation_iff_usable(render, device, gpu_usable, reserved):
    r = render(aima_worker_device=device, nvidia_toolkit_gpu_usable=gpu_usable)
    worker = r.model("gpu")["services"][WORKER]
    assert gpu_reserved(worker) is reserved
    assert worker["environment"]["AIMA_WORKER_DEVICE"] == device
    assert worker["profiles"] == ["gpu"]


def test_env_file_mode_and_secrets(render):
    r = render()
    env_file = r.dir / ".env"
    st = env_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    for key in SECRETS:
        assert re.fullmatch(r"[A-Za-z0-9]{32,}", r.env[key]), key
    assert r.env["AIMA_DB_PASSWORD"] != r.env["AIMA_REDIS_PASSWORD"]


def test_compose_file_holds_no_secret_and_env_defines_every_reference(render):
    r = render("-v")
    text = r.compose_text
    for key in SECRETS:
        assert r.env[key] not in text
        assert r.env[key] not in r.caddyfile
        # Nor in Ansible's output (no_log on every task that touches them).
        assert r.env[key] not in r.proc.stdout + r.proc.stderr
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", code))
    assert referenced, "the compose file should take secrets and ports from .env"
    assert referenced <= set(r.env), referenced - set(r.env)
    # Nor in the resolved model: the services read their secrets from files.
    model = r.model("gpu")
    resolved = json.dumps(model)
    for key in (*SECRETS, "AIMA_DB_ADMIN_PASSWORD"):
        assert r.env[key] not in resolved, key
    backend_env = model["services"]["aima-backend"]["environment"]
    assert backend_env["AIMA_DATABASE_URL"] == "postgresql://aima@database:5432/aima"
    assert backend_env["AIMA_DATABASE_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert backend_env["AIMA_REDIS_URL"] == "redis://message-queue:6379/0"
    assert backend_env["AIMA_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
    db = model["services"]["database"]
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_admin_password"
    assert "POSTGRES_PASSWORD" not in db["environment"]
    assert db["environment"]["POSTGRES_USER"] == "postgres"  # the app's role is another one
    mounted = {name: {x["source"] for x in svc.get("secrets", [])}
               for name, svc in model["services"].items()}
    assert mounted == {
        "reverse-proxy": set(),
        "aima-backend": {"db_password", "redis_password"},
        WORKER: {"db_password", "redis_password"},
        "database": {"db_admin_password", "db_password"},
        "message-queue": {"redis_acl"},
    }
    # The secret files hold the .env values; the queue's ACL file only a SHA-256 of its password.
    secrets_dir = r.dir / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700 and secrets_dir.stat().st_uid == 0
    for name, key in (("db_password", "AIMA_DB_PASSWORD"),
                      ("redis_password", "AIMA_REDIS_PASSWORD"),
                      ("db_admin_password", "AIMA_DB_ADMIN_PASSWORD")):
        assert (secrets_dir / name).read_text() == r.env[key] + "\n"
    acl = (secrets_dir / "redis_acl").read_text()
    assert r.env["AIMA_REDIS_PASSWORD"] not in acl
    assert hashlib.sha256(r.env["AIMA_REDIS_PASSWORD"].encode()).hexdigest() in acl
    assert "user default off" in acl
    assert re.search(r"^user aima-app on #[0-9a-f]{64} resetkeys ~aima:jobs resetchannels "
                     r"-@all \+@stream ", acl, re.M), acl


def test_every_service_is_bounded_read_only_and_without_capabilities(render):
    model = render().model("gpu")
    for name, svc in model["services"].items():
        assert svc.get("mem_limit"), name
        assert svc.get("memswap_limit") == svc["mem_limit"], name
        assert svc.get("pids_limit"), name
        assert svc.get("cpus"), name
        assert svc.get("read_only") is True, name
        assert any(t.startswith("/tmp") for t in svc.get("tmpfs", [])), name
        assert svc.get("cap_drop") == ["ALL"] and not svc.get("cap_add"), name
        if name != "reverse-proxy":
            image_user = {"aima-backend": None, WORKER: None}
            assert svc.get("user") or name in image_user, name
    worker_budget = model["services"][WORKER]["mem_limit"]
    backend_env = model["services"]["aima-backend"]["environment"]
    assert int(backend_env["AIMA_WORKER_MEMORY_BYTES"]) == int(worker_budget)


def test_limits_are_the_operators(render):
    limits = {
        "reverse-proxy": {"memory": "128m", "cpus": 0.5, "pids": 64},
        "aima-backend": {"memory": "768m", "cpus": 0, "pids": 100},
        "aima-gpu-worker": {"memory": "8g", "cpus": 4.0, "pids": 1024},
        "database": {"memory": "2g", "cpus": 2, "pids": 300},
        "message-queue": {"memory": "256m", "cpus": 0.25, "pids": 32},
    }
    model = render(aima_service_limits=limits).model("gpu")
    assert int(model["services"]["reverse-proxy"]["mem_limit"]) == 128 << 20
    assert "cpus" not in model["services"]["aima-backend"] or not model["services"][
        "aima-backend"]["cpus"]
    assert int(model["services"][WORKER]["mem_limit"]) == 8 << 30
    assert model["services"]["database"]["pids_limit"] == 300
    env = model["services"]["aima-backend"]["environment"]
    assert env["AIMA_WORKER_MEMORY_BYTES"] == str(8 << 30)


def test_secrets_are_stable_and_a_rerun_changes_nothing(render_again):
    first = render_again()
    before = (first.env, first.compose_text, first.caddyfile)
    second = render_again()
    assert (second.env, second.compose_text, second.caddyfile) == before
    assert re.search(r"changed=0\s", second.proc.stdout), second.proc.stdout[-2000:]


def test_a_removed_secret_is_generated_anew_and_the_others_kept(render_again):
    first = render_again()
    env_file = first.dir / ".env"
    kept = first.env["AIMA_REDIS_PASSWORD"]
    env_file.write_text(
        "".join(
            line + "\n"
            for line in env_file.read_text().splitlines()
            if not line.startswith("AIMA_DB_PASSWORD=")
        )
    )
    second = render_again()
    assert second.env["AIMA_REDIS_PASSWORD"] == kept
    assert re.fullmatch(r"[A-Za-z0-9]{32,}", second.env["AIMA_DB_PASSWORD"])


def test_operator_supplied_password_wins(render):
    r = render(aima_db_password="OperatorChosen1234567890")
    assert r.env["AIMA_DB_PASSWORD"] == "OperatorChosen1234567890"


def test_upload_limit_is_consistent(render):
    r = render(aima_max_upload_bytes=5 * 1024 * 1024)
    env = r.model()["services"]["aima-backend"]["environment"]
    assert env["AIMA_MAX_UPLOAD_BYTES"] == str(5 * 1024 * 1024)
    limit = int(re.search(r"max_size (\d+)", r.caddyfile).group(1))
    assert 5 * 1024 * 1024 < limit <= 5 * 1024 * 1024 + 2 * 1024 * 1024


def test_proxy_routes_api_and_page_to_the_backend_with_security_headers(render):
    caddy = render().caddyfile
    assert "reverse_proxy aima-backend:8000" in caddy
    for header in (
        "X-Content-Type-Options",
        "X-Frame-Options",
        "Referrer-Policy",
        "Content-Security-Policy",
        "-Server",
    ):
        assert header in caddy
    # No path matcher on the main site: / (web page) and /api/* both reach the backend.
    app = caddy.split("(aima_app) {", 1)[1].split("\n}", 1)[0]
    assert "handle_path" not in app and "handle /api" not in app
    assert "reverse_proxy aima-backend:8000" in app


def test_caddyfile_change_recreates_the_proxy(render):
    a = render().model()["services"]["reverse-proxy"]["labels"]["org.aima.caddyfile-sha1"]
    b = render(aima_proxy_csp="default-src 'none'").model()["services"]["reverse-proxy"]["labels"][
        "org.aima.caddyfile-sha1"
    ]
    assert a != b


def test_prebuilt_images_are_used_as_given(render):
    model = render(
        aima_backend_image="registry.invalid/aima/backend:1.2.3",
        aima_gpu_worker_image="registry.invalid/aima/worker:1.2.3",
        aima_postgres_image="aima-testbed/postgres:trixie",
    ).model("gpu")
    assert model["services"]["aima-backend"]["image"] == "registry.invalid/aima/backend:1.2.3"
    assert model["services"][WORKER]["image"] == "registry.invalid/aima/worker:1.2.3"
    assert model["services"]["database"]["image"] == "aima-testbed/postgres:trixie"
    assert all("build" not in svc for svc in model["services"].values())


def test_extra_environment_is_passed_literally(render):
    model = render(
        aima_worker_extra_env={"AIMA_WORKER_DELAY_MS": 5000, "NOTE": "a $HOME b"},
        aima_backend_extra_env={"LOG_LEVEL": "debug"},
    ).model("gpu")
    worker_env = model["services"][WORKER]["environment"]
    assert worker_env["AIMA_WORKER_DELAY_MS"] == "5000"
    # Not interpolated by Compose (`config` prints the literal `$` re-escaped as `$$`).
    assert worker_env["NOTE"] in ("a $HOME b", "a $$HOME b")
    assert model["services"]["aima-backend"]["environment"]["LOG_LEVEL"] == "debug"
