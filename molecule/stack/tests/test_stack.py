"""Walk the AIMA operating procedure on the Molecule instance, through the proxy.

The tests run in file order and build on each other (one procedure, one instance):
base services up, worker off -> a job waits -> gpu_on -> done -> site.yml keeps the worker ->
gpu_off while a job runs -> teardown (containers gone, volumes kept) -> site.yml -> the data is
back -> gpu_on finishes what was left. The lifecycle steps are real `ansible-playbook site.yml
--tags ...` runs against the instance; each one's second run must report changed=0.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
STACK_DIR = "/opt/aima"
PROJECT_NAME = "aima"
COMPOSE = f"docker compose --ansi never --project-directory {STACK_DIR} --profile gpu"
BASE = ("reverse-proxy", "aima-backend", "database", "message-queue")
WORKER = "aima-gpu-worker"
VOLUMES = ("database-data", "queue-data", "media", "proxy-data", "proxy-config")

STATE: dict[str, object] = {}
OUTPUTS: list[str] = []

ROOT_CA = "/var/lib/docker/volumes/aima_proxy-data/_data/caddy/pki/authorities/local/root.crt"
CREDENTIALS = f"{STACK_DIR}/credentials"

# Runs on the instance: HTTPS through the proxy's published port on the host's own address,
# the certificate checked against the proxy's internal CA for that address, the login read
# from the host's credentials file (argv[1]: "login", "anonymous" or "wrong").
HTTP = r"""
import base64, json, socket, ssl, sys, urllib.error, urllib.request, uuid
who, method, path = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=sys.argv[4])
login = dict(l.split("=", 1) for l in open(sys.argv[5]).read().splitlines()
             if l and not l.startswith("#"))
# The host's default IPv4 address (the source of its default route; nothing is sent).
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect(("192.0.2.1", 9))
address = probe.getsockname()[0]
req = urllib.request.Request(f"https://{address}" + path, method=method)
if who != "anonymous":
    password = login["AIMA_LOGIN_PASSWORD"] + ("-wrong" if who == "wrong" else "")
    token = base64.b64encode(f"{login['AIMA_LOGIN_USER']}:{password}".encode()).decode()
    req.add_header("Authorization", "Basic " + token)
if len(sys.argv) > 6:
    b = uuid.uuid4().hex
    head = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="verify.png"\r\n'
            'Content-Type: image/png\r\n\r\n')
    req.data = head.encode() + base64.b64decode(sys.argv[6]) + f"\r\n--{b}--\r\n".encode()
    req.add_header("Content-Type", f"multipart/form-data; boundary={b}")
try:
    with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read() or b"null")}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode(errors="replace"),
                      "auth": e.headers.get("WWW-Authenticate")}))
"""


def png(seed: int, size: int = 24) -> bytes:
    """A small, valid, distinct RGB PNG."""
    rows = b"".join(
        b"\x00"
        + bytes(
            c for x in range(size) for c in ((x * seed) % 256, (y * 9) % 256, (x + y + seed) % 256)
        )
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def api(
    host, method: str, path: str, payload: bytes | None = None, who: str = "login"
) -> tuple[int, object]:
    args = [who, method, path, ROOT_CA, CREDENTIALS]
    args += [base64.b64encode(payload).decode()] if payload is not None else []
    out = host.run("python3 -c %s " + " ".join(["%s"] * len(args)), HTTP, *args)
    assert out.rc == 0, out.stderr
    answer = json.loads(out.stdout)
    return answer["status"], answer["body"]


def job(host, job_id: str) -> dict:
    status, body = api(host, "GET", f"/api/jobs/{job_id}")
    assert status == 200, body
    return body


def wait_for_job(host, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = job(host, job_id)
        if current["status"] in statuses or time.monotonic() > deadline:
            return current
        time.sleep(1)


def ps(host) -> dict[str, dict]:
    out = host.check_output(f"{COMPOSE} ps --all --format json")
    items = (
        json.loads(out)
        if out.lstrip().startswith("[")
        else [json.loads(x) for x in out.splitlines() if x]
    )
    return {c["Service"]: c for c in items}


def inspect(host, name: str) -> dict:
    """docker inspect as a dict (no Go templates: the Ansible backend would read them as Jinja)."""
    return json.loads(host.check_output(f"docker inspect {name}"))[0]


def ip_of(host, container: str) -> str:
    networks = inspect(host, container)["NetworkSettings"]["Networks"]
    return next(iter(networks.values()))["IPAddress"]


def playbook(*args: str) -> tuple[int, str, int]:
    """ansible-playbook site.yml against the instance; returns rc, output, total changed."""
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(EPHEMERAL / "inventory"),
            "site.yml",
            "-v",
            *args,
        ],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = proc.stdout + proc.stderr
    OUTPUTS.append(out)
    changed = sum(int(n) for n in re.findall(r"\schanged=(\d+)", out))
    return proc.returncode, out, changed


def tail(out: str) -> str:
    return out[-4000:]


@pytest.fixture(scope="module", autouse=True)
def _needs_molecule():
    if not (EPHEMERAL / "inventory").exists():
        pytest.skip("runs as the Molecule verifier (MOLECULE_EPHEMERAL_DIRECTORY)")


def test_base_services_are_healthy_and_the_worker_is_off(host):
    containers = ps(host)
    for name in BASE:
        assert containers[name]["State"] == "running", containers[name]
        assert containers[name]["Health"] == "healthy", containers[name]
    assert WORKER not in containers or containers[WORKER]["State"] != "running"
    status, health = api(host, "GET", "/api/health")
    assert status == 200 and health["status"] == "ok", health
    assert health["database"] == "ok" and health["queue"] == "ok"


def test_only_the_proxy_publishes_ports_and_only_on_ipv4(host):
    containers = ps(host)
    published = {
        name: [p for p in c.get("Publishers") or [] if p.get("PublishedPort")]
        for name, c in containers.items()
    }
    proxy = {
        (p["TargetPort"], p["PublishedPort"], p["Protocol"])
        for p in published.pop("reverse-proxy")
    }
    assert proxy == {(8080, 80, "tcp"), (8443, 443, "tcp"), (8443, 443, "udp")}
    assert not any(published.values()), published
    listening = host.check_output("ss -ltnH")
    for port in (5432, 6379, 8000):
        assert not re.search(rf":{port}\s", listening), listening
    # IPv6 is not published (Docker's userland proxy would hide the client's address).
    assert not re.search(r"\[[0-9a-f:]*\]:(80|443)\s", listening), listening


def test_nobody_gets_in_without_the_login(host):
    credentials = host.file(CREDENTIALS)
    assert credentials.user == "root" and credentials.mode == 0o600
    status, body = api(host, "GET", "/api/jobs")
    assert status == 200 and "items" in body, body
    for path in ("/", "/api/jobs", "/api/docs", "/api/health", "/app.js"):
        for who in ("anonymous", "wrong"):
            status, body = api(host, "GET", path, who=who)
            assert status == 401, (path, who, status, body)
            assert json.loads(body) == {"error": "proxy_error", "detail": "401 Unauthorized"}
    # Plain HTTP only redirects, to HTTPS on the same address.
    probe = (
        "import http.client; c = http.client.HTTPConnection('127.0.0.1', 80, timeout=10); "
        "c.request('GET', '/api/jobs?page=2'); r = c.getresponse(); "
        "print(r.status, r.getheader('Location'))"
    )
    out = host.check_output("python3 -c %s", probe)
    assert out.split() == ["308", "https://127.0.0.1/api/jobs?page=2"], out


def test_database_and_queue_unreachable_outside_the_compose_networks(host):
    db_ip = ip_of(host, f"{PROJECT_NAME}-database-1")
    mq_ip = ip_of(host, f"{PROJECT_NAME}-message-queue-1")
    assert db_ip and mq_ip
    # A container on Docker's default bridge (outside the stack's networks) cannot reach them.
    probe = host.run(
        f"docker run --rm --network bridge aima-testbed/postgres:trixie pg_isready -h {db_ip} -t 3"
    )
    assert probe.rc != 0, probe.stdout
    probe = host.run(
        f"docker run --rm --network bridge aima-testbed/redis:trixie "
        f"timeout 5 redis-cli -h {mq_ip} ping"
    )
    assert "PONG" not in probe.stdout and "NOAUTH" not in probe.stdout, probe.stdout
    # The queue and database networks are internal: no route out either.
    assert inspect(host, f"{PROJECT_NAME}_internal")["Internal"] is True


def test_env_is_root_0600_and_its_secrets_stay_out_of_the_compose_file(host):
    env_file = host.file(f"{STACK_DIR}/.env")
    assert env_file.user == "root" and env_file.mode == 0o600
    secrets = {
        k: v
        for k, _, v in (line.partition("=") for line in env_file.content_string.splitlines())
        if k.endswith("_PASSWORD")
    }
    assert set(secrets) == {"AIMA_DB_PASSWORD", "AIMA_REDIS_PASSWORD", "AIMA_DB_ADMIN_PASSWORD"}
    login = host.file(CREDENTIALS).content_string
    secrets["AIMA_LOGIN_PASSWORD"] = re.search(r"^AIMA_LOGIN_PASSWORD=(\S+)$", login, re.M)[1]
    assert all(re.fullmatch(r"[A-Za-z0-9]{32,}", v) for v in secrets.values())
    compose = host.file(f"{STACK_DIR}/compose.yaml").content_string
    caddyfile = host.file(f"{STACK_DIR}/Caddyfile").content_string
    for value in secrets.values():
        assert value not in compose and value not in caddyfile
    STATE["secrets"] = secrets


def test_secrets_reach_the_services_as_files_only(host):
    """No secret in any container's environment or command line; the app's database role is
    not a superuser; the queue's default user is off and the app's user is confined."""
    for name in BASE:
        data = inspect(host, f"{PROJECT_NAME}-{name}-1")
        text = json.dumps([data["Config"].get("Env"), data["Config"].get("Cmd"), data.get("Args")])
        for key, value in STATE["secrets"].items():
            assert value not in text, (name, key)
    rows = host.check_output(
        f"{COMPOSE} exec -T database psql -U postgres -d aima -AtX -c "
        "\"SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'aima'\"")
    assert rows.strip() == "f|f|f", rows
    owner = host.check_output(
        f"{COMPOSE} exec -T database psql -U postgres -d aima -AtX -c "
        "\"SELECT tableowner FROM pg_tables WHERE tablename = 'jobs'\"")
    assert owner.strip() == "aima", owner
    anonymous = host.run(f"{COMPOSE} exec -T message-queue redis-cli XLEN aima:jobs")
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr, anonymous.stdout
    confined = host.run(
        f'REDISCLI_AUTH="$(cat {STACK_DIR}/secrets/redis_password)" docker exec '
        f"-e REDISCLI_AUTH {PROJECT_NAME}-message-queue-1 "
        "redis-cli --no-auth-warning --user aima-app CONFIG GET dir")
    assert "NOPERM" in confined.stdout + confined.stderr, confined.stdout


def test_a_job_waits_while_the_worker_is_off(host):
    data = png(3)
    status, body = api(host, "POST", "/api/jobs", data)
    assert status == 201, body
    time.sleep(8)
    assert job(host, body["id"])["status"] == "queued"
    STATE["job1"] = body


def test_gpu_on_works_off_the_waiting_job(host):
    rc, out, changed = playbook("--tags", "gpu_on")
    assert rc == 0, tail(out)
    assert changed >= 1
    done = wait_for_job(host, STATE["job1"]["id"], {"done", "failed", "dead"})
    assert done["status"] == "done", done
    assert done["device"] == "cpu"  # no GPU in the testbed
    container = ps(host)[WORKER]
    assert container["State"] == "running" and container["Health"] == "healthy"
    STATE["worker_id"] = container["ID"]
    STATE["worker_started"] = inspect(host, container["ID"])["State"]["StartedAt"]


def _browser_module():
    """tests/app/aima_browser.py, loaded by path (the verifier is not a package of tests/)."""
    spec = importlib.util.spec_from_file_location(
        "aima_browser", PROJECT / "tests" / "app" / "aima_browser.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_browser_logs_in_uploads_and_sees_the_result(host, tmp_path):
    """Headless Chromium on the controller, through the instance's published HTTPS port: the
    login challenge is answered as a user would, then the page's upload and its result."""
    browser_mod = _browser_module()
    binary = browser_mod.chromium_binary()
    if binary is None:
        pytest.fail("no chromium on the controller (scripts/bootstrap.py installs it)")
    login = dict(
        line.split("=", 1)
        for line in host.file(CREDENTIALS).content_string.splitlines()
        if line and not line.startswith("#")
    )
    address = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
         f"aima-molecule-{os.environ.get('MOLECULE_SCENARIO_NAME', 'stack')}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()[0]
    image = base64.b64encode(png(11, 32)).decode()
    with tempfile.TemporaryDirectory(prefix="aima-chromium-") as profile:
        # The internal CA is not in this browser's trust store; the certificate itself is
        # checked against that CA by the other tests.
        browser = browser_mod.Browser(
            binary, profile, tmp_path / "chromium.log", "--ignore-certificate-errors"
        )
        try:
            asked = browser.login_with(login["AIMA_LOGIN_USER"], login["AIMA_LOGIN_PASSWORD"])
            browser.goto(f"https://{address}/")
            browser.wait_for(
                "document.readyState === 'complete' && !!document.getElementById('file')", 60
            )
            assert asked, "the page loaded without asking for a login"
            browser.evaluate(
                "(() => { const bytes = Uint8Array.from(atob(" + json.dumps(image) + "),"
                " c => c.charCodeAt(0)); const dt = new DataTransfer();"
                " dt.items.add(new File([bytes], 'browser.png', {type: 'image/png'}));"
                " document.getElementById('file').files = dt.files;"
                " document.getElementById('upload-form').requestSubmit(); return true; })()"
            )
            status = browser.wait_for(
                "(t => /^(queued as|rejected|upload failed)/.test(t) && t)"
                "(document.getElementById('upload-status').textContent)", 30
            )
            assert status.startswith("queued as "), status
            browser.wait_for(
                "[...document.querySelectorAll('#job-rows tr')].some(tr =>"
                " tr.textContent.includes('browser.png') && tr.querySelector('.status-done'))", 90
            )
        finally:
            browser.close()


def test_gpu_on_again_changes_nothing(host):
    rc, out, changed = playbook("--tags", "gpu_on")
    assert rc == 0, tail(out)
    assert changed == 0, tail(out)
    assert ps(host)[WORKER]["ID"] == STATE["worker_id"]


def test_site_rerun_keeps_the_running_worker(host):
    rc, out, changed = playbook()
    assert rc == 0, tail(out)
    assert changed == 0, tail(out)
    container = ps(host)[WORKER]
    assert container["ID"] == STATE["worker_id"] and container["State"] == "running"
    assert inspect(host, container["ID"])["State"]["StartedAt"] == STATE["worker_started"]


def test_status_shows_services_and_jobs(host):
    rc, out, changed = playbook("--tags", "status")
    assert rc == 0 and changed == 0, tail(out)
    assert re.search(r"aima-gpu-worker\s+running\s+healthy", out), tail(out)
    assert "done=" in out


def test_gpu_off_while_a_job_runs_loses_nothing(host):
    status, body = api(host, "POST", "/api/jobs", png(5))
    assert status == 201, body
    running = wait_for_job(host, body["id"], {"running", "done"}, timeout=30)
    assert running["status"] == "running", running  # AIMA_WORKER_DELAY_MS holds it there
    rc, out, changed = playbook("--tags", "gpu_off")
    assert rc == 0, tail(out)
    assert changed >= 1
    container = ps(host)[WORKER]
    assert container["State"] == "exited" and container["ExitCode"] == 0, container
    # Finished, or handed back to the queue: never lost, never stuck as running.
    after = job(host, body["id"])
    assert after["status"] in {"done", "queued"}, after
    STATE["job2"] = body


def test_gpu_off_again_changes_nothing(host):
    rc, out, changed = playbook("--tags", "gpu_off")
    assert rc == 0 and changed == 0, tail(out)


def test_teardown_removes_every_container_and_keeps_the_volumes(host):
    rc, out, changed = playbook("--tags", "teardown")
    assert rc == 0, tail(out)
    assert changed >= 1
    left = host.check_output(
        f"docker ps -aq --filter label=com.docker.compose.project={PROJECT_NAME}"
    )
    assert left.strip() == ""
    volumes = host.check_output(
        f"docker volume ls -q --filter label=com.docker.compose.project={PROJECT_NAME}"
    )
    assert {f"{PROJECT_NAME}_{v}" for v in VOLUMES} <= set(volumes.split())
    rc, out, changed = playbook("--tags", "teardown")
    assert rc == 0 and changed == 0, tail(out)


def test_site_brings_the_stack_back_with_the_data(host):
    rc, out, _changed = playbook()
    assert rc == 0, tail(out)
    first = job(host, STATE["job1"]["id"])
    assert first["status"] == "done" and first["sha256"] == STATE["job1"]["sha256"]
    # The uploaded file itself is still in the media volume.
    hashes = host.check_output(
        f"{COMPOSE} exec -T aima-backend python3 -c "
        "'import hashlib, pathlib; [print(hashlib.sha256(p.read_bytes()).hexdigest()) "
        'for p in pathlib.Path("/data/media").rglob("*") if p.is_file()]\''
    )
    assert STATE["job1"]["sha256"] in hashes.split()
    assert job(host, STATE["job2"]["id"])["status"] in {"done", "queued"}
    # Same secrets as before the teardown.
    kept = host.file(f"{STACK_DIR}/.env").content_string + host.file(CREDENTIALS).content_string
    for key, value in STATE["secrets"].items():
        assert f"{key}={value}" in kept


def test_gpu_on_finishes_what_was_left(host):
    rc, out, _ = playbook("--tags", "gpu_on")
    assert rc == 0, tail(out)
    assert wait_for_job(host, STATE["job2"]["id"], {"done", "failed", "dead"})["status"] == "done"
    _status, health = api(host, "GET", "/api/health")
    assert health["jobs"]["queued"] == 0 and health["jobs"]["running"] == 0, health
    rc, out, _changed = playbook("--tags", "gpu_off")
    assert rc == 0, tail(out)


def test_no_secret_appears_in_any_ansible_output():
    assert OUTPUTS
    for value in STATE["secrets"].values():
        for out in OUTPUTS:
            assert value not in out
