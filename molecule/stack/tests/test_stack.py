"""Walk the AIMA operating procedure on the Molecule instance, through the proxy.

The tests run in file order and build on each other (one procedure, one instance):
base services up, worker off -> a job waits -> gpu_on -> done -> site.yml keeps the worker ->
gpu_off while a job runs -> teardown (containers gone, volumes kept) -> site.yml -> the data is
back -> gpu_on finishes what was left. The lifecycle steps are real `ansible-playbook site.yml
--tags ...` runs against the instance; each one's second run must report changed=0.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
import time
from pathlib import Path

import pytest
from aimakit import browser as browser_mod
from aimakit.ansible import Runner
from aimakit.api import Api
from aimakit.media import png

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
INSTANCE = f"aima-molecule-{os.environ.get('MOLECULE_SCENARIO_NAME', 'stack')}"
STACK_DIR = "/opt/aima"
PROJECT_NAME = "aima"
COMPOSE = f"docker compose --ansi never --project-directory {STACK_DIR} --profile gpu"
# The proxy engine (the traefik scenario runs this procedure too) and its configuration file.
ENGINE = os.environ.get("AIMA_PROXY_ENGINE", "caddy")
PROXY_CONFIG = {"caddy": f"{STACK_DIR}/Caddyfile",
                "traefik": f"{STACK_DIR}/traefik/dynamic/aima.yml"}[ENGINE]
BASE = ("reverse-proxy", "aima-backend", "database", "message-queue") + (
    ("socket-proxy",) if ENGINE == "traefik" else ())
WORKER = "aima-gpu-worker"
VOLUMES = ("database-data", "queue-data", "media", "proxy-data", "proxy-config")
CREDENTIALS = f"{STACK_DIR}/credentials"

STATE: dict[str, object] = {}
RUNNER = Runner(EPHEMERAL / "inventory", PROJECT)


# Every test takes testinfra's `host` (parametrized), even one that does not use it: pytest
# groups the tests by that parameter, so a test without it would run out of the file's order.
@pytest.fixture(scope="module")
def api() -> Api:
    """HTTPS from the controller through the proxy's published port on the instance's address,
    the certificate checked against the proxy's internal CA, with the generated login."""
    return Api.for_container(INSTANCE)


def upload(api: Api, seed: int) -> dict:
    reply = api.upload(f"verify-{seed}.png", png(24, 24, seed=seed))
    assert reply.status == 201, reply.body[:500]
    return reply.json()


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
    """ansible-playbook site.yml -v against the instance (aimakit's runner); returns rc,
    output, changed."""
    run = RUNNER("-v", *args)
    return run.rc, run.output, run.changed


def tail(out: str) -> str:
    return out[-4000:]


@pytest.fixture(scope="module", autouse=True)
def _needs_molecule():
    if not (EPHEMERAL / "inventory").exists():
        pytest.skip("runs as the Molecule verifier (MOLECULE_EPHEMERAL_DIRECTORY)")


def test_base_services_are_healthy_and_the_worker_is_off(host, api):
    containers = ps(host)
    for name in BASE:
        assert containers[name]["State"] == "running", containers[name]
        assert containers[name]["Health"] == "healthy", containers[name]
    assert WORKER not in containers or containers[WORKER]["State"] != "running"
    reply = api.health()
    health = reply.json()
    assert reply.status == 200 and health["status"] == "ok", reply.body
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


def test_nobody_gets_in_without_the_login(host, api):
    credentials = host.file(CREDENTIALS)
    assert credentials.user == "root" and credentials.mode == 0o600
    reply = api.request("GET", "/api/jobs")
    assert reply.status == 200 and "items" in reply.json(), reply.body
    user, password = api.auth
    for path in ("/", "/api/jobs", "/api/docs", "/api/health", "/app.js"):
        for who, client in (("anonymous", api.anonymous()),
                            ("wrong", api.as_user(user, password + "-wrong"))):
            reply = client.request("GET", path)
            assert reply.status == 401, (path, who, reply.status, reply.body)
            assert reply.json() == {"error": "proxy_error", "detail": "401 Unauthorized"}
    # Plain HTTP only redirects, to HTTPS on the same address.
    probe = (
        "import http.client; c = http.client.HTTPConnection('127.0.0.1', 80, timeout=10); "
        "c.request('GET', '/api/jobs?page=2'); r = c.getresponse(); "
        "print(r.status, r.getheader('Location'))"
    )
    out = host.check_output("python3 -c %s", probe)
    # (Traefik redirects a GET with 301, every other method with 308, as Caddy does them all)
    status = "301" if ENGINE == "traefik" else "308"
    assert out.split() == [status, "https://127.0.0.1/api/jobs?page=2"], out


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
    proxy_config = host.file(PROXY_CONFIG).content_string
    for value in secrets.values():
        assert value not in compose and value not in proxy_config
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


def test_a_job_waits_while_the_worker_is_off(host, api):
    body = upload(api, 3)
    time.sleep(8)
    assert api.job(body["id"])["status"] == "queued"
    STATE["job1"] = body


def test_gpu_on_works_off_the_waiting_job(host, api):
    rc, out, changed = playbook("--tags", "gpu_on")
    assert rc == 0, tail(out)
    assert changed >= 1
    # the next step it prints operates the same hosts: this run's inventory, not the default one
    inventory = str(EPHEMERAL / "inventory" / "ansible_inventory.yml")
    # (the output's YAML may wrap a long line: compare with the whitespace collapsed)
    assert f"Stop it with: ansible-playbook -i {inventory} site.yml --tags gpu_off" in " ".join(
        out.split()), tail(out)
    done = api.wait_job(STATE["job1"]["id"])
    assert done["status"] == "done", done
    assert done["device"] == "cpu"  # no GPU in the testbed
    container = ps(host)[WORKER]
    assert container["State"] == "running" and container["Health"] == "healthy"
    STATE["worker_id"] = container["ID"]
    STATE["worker_started"] = inspect(host, container["ID"])["State"]["StartedAt"]


def test_a_browser_logs_in_uploads_and_sees_the_result(host, api, tmp_path):
    """Headless Chromium on the controller, through the instance's published HTTPS port: the
    login challenge is answered as a user would, then the page's upload and its result."""
    binary = browser_mod.chromium_binary()
    if binary is None:
        pytest.fail("no chromium on the controller (scripts/bootstrap.py installs it)")
    user, password = api.auth
    address = api.host
    image = base64.b64encode(png(32, 32, seed=11)).decode()
    with tempfile.TemporaryDirectory(prefix="aima-chromium-") as profile:
        # The internal CA is not in this browser's trust store; the certificate itself is
        # checked against that CA by the other tests.
        browser = browser_mod.Browser(
            binary, profile, tmp_path / "chromium.log", "--ignore-certificate-errors"
        )
        try:
            asked = browser.login_with(user, password)
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
    inventory = str(EPHEMERAL / "inventory" / "ansible_inventory.yml")
    assert f"Start the GPU worker with: ansible-playbook -i {inventory} site.yml --tags gpu_on" \
        in " ".join(out.split()), tail(out)
    container = ps(host)[WORKER]
    assert container["ID"] == STATE["worker_id"] and container["State"] == "running"
    assert inspect(host, container["ID"])["State"]["StartedAt"] == STATE["worker_started"]


def test_status_shows_services_and_jobs(host):
    rc, out, changed = playbook("--tags", "status")
    assert rc == 0 and changed == 0, tail(out)
    assert re.search(r"aima-gpu-worker\s+running\s+healthy", out), tail(out)
    assert "done=" in out


def test_gpu_off_while_a_job_runs_loses_nothing(host, api):
    body = upload(api, 5)
    running = api.wait_job(body["id"], {"running", "done"}, timeout=30)
    assert running["status"] == "running", running  # AIMA_WORKER_DELAY_MS holds it there
    rc, out, changed = playbook("--tags", "gpu_off")
    assert rc == 0, tail(out)
    assert changed >= 1
    container = ps(host)[WORKER]
    assert container["State"] == "exited" and container["ExitCode"] == 0, container
    # Finished, or handed back to the queue: never lost, never stuck as running.
    after = api.job(body["id"])
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


def test_gpu_on_and_gpu_off_without_the_base_services_say_what_to_do(host):
    """After teardown: gpu_on names the missing database and queue and the command that brings
    them back, and starts nothing; gpu_off has nothing to stop."""
    rc, out, changed = playbook("--tags", "gpu_on")
    text = " ".join(out.split())
    assert rc != 0 and changed == 0, tail(out)
    assert "The database and the queue are not running and healthy: run site.yml (no tags) first." \
        in text, tail(out)
    assert f"/{PROJECT_NAME}-database-1 missing" in text, tail(out)
    left = host.check_output(
        f"docker ps -aq --filter label=com.docker.compose.project={PROJECT_NAME}"
    )
    assert left.strip() == "", "gpu_on created a container"
    rc, out, changed = playbook("--tags", "gpu_off")
    assert rc == 0 and changed == 0, tail(out)
    assert "GPU worker is not running (nothing to stop)" in " ".join(out.split()), tail(out)


def test_site_brings_the_stack_back_with_the_data(host, api):
    rc, out, _changed = playbook()
    assert rc == 0, tail(out)
    first = api.job(STATE["job1"]["id"])
    assert first["status"] == "done" and first["sha256"] == STATE["job1"]["sha256"]
    # The uploaded file itself is still in the media volume.
    hashes = host.check_output(
        f"{COMPOSE} exec -T aima-backend python3 -c "
        "'import hashlib, pathlib; [print(hashlib.sha256(p.read_bytes()).hexdigest()) "
        'for p in pathlib.Path("/data/media").rglob("*") if p.is_file()]\''
    )
    assert STATE["job1"]["sha256"] in hashes.split()
    assert api.job(STATE["job2"]["id"])["status"] in {"done", "queued"}
    # Same secrets as before the teardown.
    kept = host.file(f"{STACK_DIR}/.env").content_string + host.file(CREDENTIALS).content_string
    for key, value in STATE["secrets"].items():
        assert f"{key}={value}" in kept


def test_gpu_on_finishes_what_was_left(host, api):
    rc, out, _ = playbook("--tags", "gpu_on")
    assert rc == 0, tail(out)
    assert api.wait_job(STATE["job2"]["id"])["status"] == "done"
    health = api.health().json()
    assert health["jobs"]["queued"] == 0 and health["jobs"]["running"] == 0, health
    rc, out, _changed = playbook("--tags", "gpu_off")
    assert rc == 0, tail(out)


def test_site_starts_a_stopped_service_and_recreates_one_whose_image_moved(host, api):
    """A re-run runs `docker compose up` only for base services that are not up to date
    (roles/aima_stack/tasks/up.yml): a stopped queue is started again (the same container), and
    a database whose image name now points to another image is recreated from that image, its
    data kept. Then the next run changes nothing."""
    before = {service: c["ID"] for service, c in ps(host).items()}
    host.check_output(f"docker stop {before['message-queue']}")
    image = inspect(host, before["database"])["Config"]["Image"]
    host.check_output(
        f"printf 'FROM {image}\\nLABEL aima.test=moved\\n' | docker build -q -t {image} - 2>&1")
    moved_to = json.loads(host.check_output(f"docker image inspect {image}"))[0]["Id"]
    assert moved_to != inspect(host, before["database"])["Image"]

    rc, out, changed = playbook()
    assert rc == 0, tail(out)
    assert "stale message-queue: exited" in out, tail(out)
    assert "stale database: its image changed" in out, tail(out)
    after = ps(host)
    assert after["message-queue"]["ID"] == before["message-queue"]
    assert after["message-queue"]["State"] == "running"
    assert after["database"]["ID"] != before["database"]
    assert inspect(host, after["database"]["ID"])["Image"] == moved_to
    assert api.job(STATE["job1"]["id"])["status"] == "done"  # the database's data is kept

    rc, out, changed = playbook()
    assert rc == 0 and changed == 0, tail(out)
    assert "stale message-queue" not in out and "stale database" not in out, tail(out)


def test_no_secret_appears_in_any_ansible_output():
    assert RUNNER.runs
    for value in STATE["secrets"].values():
        for run in RUNNER.runs:
            assert value not in run.output
