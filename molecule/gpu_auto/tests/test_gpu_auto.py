"""aima_worker_mode: auto on the Molecule instance: the GPU controller (a systemd service on the
host) starts the worker when jobs wait and stops it after aima_worker_idle_timeout_s without work.

One procedure, in file order, with the scenario's short timings (idle timeout 10 s, a look at
the queue every second, 2 s per job). Uploads go through the proxy with the generated login; job
rows, runs and container states are read on the instance (aimakit's probes); the controller's
decisions from its journal. Measured figures are printed at the end (conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from aimakit.ansible import Runner
from aimakit.api import Api
from aimakit.media import png
from aimakit.probes import Instance, wait_for

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
INSTANCE = f"aima-molecule-{os.environ.get('MOLECULE_SCENARIO_NAME', 'gpu_auto')}"
FIGURES_FILE = EPHEMERAL / "gpu-auto-figures.json"
UNIT = "aima-gpu-controller.service"
CTL_DIR = "/opt/aima/gpu-controller"
WORKER = "aima-gpu-worker"
BASE = ("reverse-proxy", "aima-backend", "database", "message-queue")
IDLE = 10  # aima_worker_idle_timeout_s
POLL = 1  # aima_worker_poll_interval_s
JOB = 2  # AIMA_WORKER_DELAY_MS / 1000
BLOCK = 5  # AIMA_BLOCK_MS / 1000: the longest an idle worker takes to notice SIGTERM

RUNNER = Runner(EPHEMERAL / "inventory", PROJECT)
TARGET = Instance(INSTANCE)
JOURNAL_LINE = re.compile(r"^(\d+\.\d+) \S+ [^:]+: (.*)$")
SEEDS = iter(range(1000, 10**6))
STASH: dict[str, float] = {}  # times one test hands to the next


@pytest.fixture(scope="module", autouse=True)
def _needs_molecule():
    if not (EPHEMERAL / "inventory").exists():
        pytest.skip("runs as the Molecule verifier (MOLECULE_EPHEMERAL_DIRECTORY)")


@pytest.fixture(scope="module")
def api() -> Api:
    return Api.for_container(INSTANCE)


# ------------------------------------------------------------------------ helpers
def record(name: str, value: float | str) -> None:
    figures = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
    figures[name] = round(value, 2) if isinstance(value, float) else value
    FIGURES_FILE.write_text(json.dumps(figures, indent=1))


def ts(text: str) -> float:
    """A job's or Docker's ISO time as epoch seconds (the instance shares this machine's clock)."""
    text = text.replace("Z", "+00:00")
    if "." in text:  # Docker's nanoseconds are more than fromisoformat takes
        head, tail = text.split(".", 1)
        digits = re.match(r"\d+", tail)
        assert digits
        text = f"{head}.{digits.group()[:6]}{tail[digits.end():]}"
    return datetime.fromisoformat(text).timestamp()


def submit(api: Api, count: int = 1) -> list[dict]:
    return [api.submit(f"auto-{seed}.png", png(24, 24, seed=seed))
            for seed in (next(SEEDS) for _ in range(count))]


def wait_done(api: Api, jobs: list[dict], timeout: float = 120) -> list[dict]:
    finished = [api.wait_job(job["id"], timeout=timeout) for job in jobs]
    assert all(job["status"] == "done" for job in finished), finished
    return finished


def exactly_once(jobs: list[dict]) -> dict[str, dict]:
    rows = TARGET.jobs_by_id(job["id"] for job in jobs)
    assert len(rows) == len(jobs)
    for row in rows.values():
        assert row["status"] == "done" and row["done_runs"] == 1, row
    return rows


def worker() -> dict:
    return TARGET.state(WORKER)


def worker_running() -> bool:
    return bool(worker().get("running"))


def unit() -> dict[str, str]:
    props = "ActiveState,MainPID,NRestarts,UnitFileState,LoadState"
    text = TARGET.out(f"systemctl show -p {props} {UNIT}")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def journal(since: float = 0.0) -> list[tuple[float, str]]:
    """The controller's log lines (time, message), newer than since."""
    text = TARGET.out(f"journalctl -u {UNIT} -o short-unix --no-pager")
    lines = []
    for raw in text.splitlines():
        match = JOURNAL_LINE.match(raw)
        if match and float(match.group(1)) > since:
            lines.append((float(match.group(1)), match.group(2)))
    return lines


def said(since: float, prefix: str) -> list[tuple[float, str]]:
    return [(t, m) for t, m in journal(since) if m.startswith(prefix)]


def state() -> dict:
    return json.loads(TARGET.read(f"{CTL_DIR}/state.json"))


def playbook(*args: str):
    return RUNNER("-v", *args)


# -------------------------------------------------------------------------- tests
def test_controller_is_installed_and_the_worker_is_off(host):
    props = unit()
    assert props["ActiveState"] == "active" and props["UnitFileState"] == "enabled", props
    assert not worker_running()
    settings = json.loads(TARGET.read(f"{CTL_DIR}/config.json"))
    assert (settings["idle_timeout_s"], settings["poll_interval_s"]) == (IDLE, POLL)
    # It has looked at the queue and has nothing to do.
    wait_for("the controller's first poll", lambda: state().get("queue") is not None, timeout=30)
    assert not said(0, "start:")


def test_no_secret_on_any_command_line_and_no_socket_in_a_container(host):
    secrets = [TARGET.read(f"/opt/aima/secrets/{name}").strip()
               for name in ("redis_password", "db_password", "db_admin_password")]
    seen = TARGET.out("ps -eo args")  # host processes: the controller and its docker calls
    seen += TARGET.read(f"/etc/systemd/system/{UNIT}") + TARGET.read(f"{CTL_DIR}/config.json")
    seen += TARGET.read(f"{CTL_DIR}/state.json")
    for secret in secrets:
        assert len(secret) >= 16 and secret not in seen
    for container in TARGET.project_containers():
        for mount in container["Mounts"]:
            assert "docker.sock" not in mount["Source"], container["Name"]


def test_waiting_jobs_start_the_worker_and_get_done_cold_then_warm(host, api):
    started = time.time()
    cold = submit(api, 3)
    done = wait_done(api, cold)
    assert said(started, "start:"), journal(started)
    exactly_once(cold)
    first = done[0]
    cold_s = ts(first["finished_at"]) - ts(first["created_at"])
    all_s = max(ts(j["finished_at"]) for j in done) - min(ts(j["created_at"]) for j in done)
    assert cold_s < 60, first
    # Warm: the worker is running and idle.
    assert worker_running()
    warm = wait_done(api, submit(api, 1))[0]
    warm_s = ts(warm["finished_at"]) - ts(warm["created_at"])
    record("cold start, upload -> result (worker off)", cold_s)
    record("warm, upload -> result (worker running)", warm_s)
    record("cold start overhead (cold - warm)", cold_s - warm_s)
    record("3 jobs queued while off -> all done", all_s)
    assert warm_s < cold_s


def test_a_job_in_flight_at_the_idle_deadline_is_not_interrupted(host, api):
    before = worker()
    items = api.request("GET", "/api/jobs?limit=5").json()["items"]
    last = max(ts(j["finished_at"]) for j in items if j["finished_at"])
    # Upload 1.5 s before the idle timer would fire: the job (2 s) runs across the deadline.
    time.sleep(max(0.0, last + IDLE - 1.5 - time.time()))
    assert worker_running() and worker()["id"] == before["id"]
    job = wait_done(api, submit(api, 1))[0]
    row = exactly_once([job])[job["id"]]
    assert row["attempts"] == 1 and row["runs"] == 1, row
    now = worker()
    assert now["running"] and now["started_at"] == before["started_at"], (before, now)
    STASH["in_flight_done"] = ts(job["finished_at"])
    record("in-flight job finished after the old idle deadline by",
           ts(job["finished_at"]) - (last + IDLE))


def test_idle_worker_stops_with_exit_code_0_and_a_burst_meanwhile_is_not_lost(host, api):
    last_done = STASH["in_flight_done"]
    decision = wait_for("the controller's idle stop", lambda: said(last_done, "stop: idle"),
                        timeout=IDLE + 30, interval=0.2)[0][0]
    burst = submit(api, 5)  # while the worker is being stopped
    sent = min(ts(j["created_at"]) for j in burst)
    stopped = wait_for("the stop's result", lambda: said(decision - 0.01, "stop: exit code"),
                       timeout=60, interval=0.5)
    assert stopped[0][1] == "stop: exit code 0", stopped
    done = wait_done(api, burst)
    exactly_once(burst)
    restarted = said(decision, "start:")
    assert restarted, journal(decision)
    finished = ts(TARGET.inspect(TARGET.container(WORKER))["State"]["FinishedAt"])
    idle = decision - last_done
    # Upper bound: one poll plus the docker exec calls of a busy 2-core machine.
    assert IDLE <= idle <= IDLE + POLL + 5, idle
    record("idle running time after the last job until the stop decision (idle timeout 10)", idle)
    record("idle running time after the last job until the worker exited", finished - last_done)
    record("burst: first upload before the worker exited by", finished - sent)
    record("burst of 5 while stopping -> all done", max(ts(j["finished_at"]) for j in done) - sent)


def test_a_sigkilled_worker_is_brought_back_and_its_job_reclaimed(host, api):
    job = submit(api, 1)[0]
    wait_for("the job to run", lambda: api.job(job["id"])["status"] == "running", timeout=60,
             interval=0.2)
    killed = time.time()
    TARGET.docker("kill", "-s", "KILL", TARGET.container(WORKER))
    done = wait_done(api, [job])[0]
    row = exactly_once([job])[job["id"]]
    assert row["attempts"] == 2, row
    assert said(killed, "start:"), journal(killed)
    record("worker SIGKILLed mid-job -> job done", ts(done["finished_at"]) - killed)


def test_the_controller_carries_on_through_a_docker_restart(host, api):
    before = unit()
    restarted = time.time()
    TARGET.sh("systemctl restart docker", timeout=180)
    wait_for("the base services", lambda: TARGET.healthy(BASE), timeout=120)
    jobs = submit(api, 2)
    wait_done(api, jobs)
    exactly_once(jobs)
    after = unit()
    assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"])
    assert after["ActiveState"] == "active"
    assert ts(state()["updated_at"]) >= restarted - 1
    record("docker restarted -> 2 new jobs done", time.time() - restarted)


def test_a_sigkilled_controller_is_restarted_by_systemd_and_no_job_is_lost(host, api):
    wait_for("the worker's idle stop", lambda: not worker_running(), timeout=IDLE + BLOCK + 40)
    before = unit()
    jobs = submit(api, 3)
    killed = time.time()
    TARGET.sh(f"systemctl kill -s KILL {UNIT}")
    wait_for("systemd's restart", lambda: unit()["MainPID"] not in ("0", before["MainPID"]),
             timeout=30, interval=0.2)
    assert int(unit()["NRestarts"]) == int(before["NRestarts"]) + 1
    wait_done(api, jobs)
    exactly_once(jobs)
    record("controller SIGKILLed with 3 jobs queued -> all done", time.time() - killed)


def test_status_shows_the_mode_the_last_action_and_the_running_time(host):
    run = playbook("--tags", "status")
    assert run.rc == 0 and run.changed == 0, run.describe()
    out = " ".join(run.output.split())  # the YAML callback may fold long lines
    assert "Worker mode: auto" in out and "is active" in out, out[-3000:]
    assert re.search(r"last action: (start|stop) at 20\d\d-", out), out[-3000:]
    match = re.search(r"worker running time: today \(UTC\) (\d+) h (\d+) min (\d+) s, total "
                      r"(\d+) h (\d+) min (\d+) s", out)
    assert match, out[-3000:]
    h, m, s = (int(x) for x in match.groups()[3:])
    assert h * 3600 + m * 60 + s >= 3 * JOB


def test_gpu_off_pauses_the_controller_and_gpu_on_resumes_it(host, api):
    run = playbook("--tags", "gpu_off")
    assert run.rc == 0, run.describe()
    assert not worker_running() and worker().get("exit_code") in (0, None)
    assert TARGET.sh(f"test -f {CTL_DIR}/paused", check=False).returncode == 0
    job = submit(api, 1)[0]
    time.sleep(4 * POLL + 2)
    assert api.job(job["id"])["status"] == "queued" and not worker_running()
    assert "paused" in state()["decision"]["reason"]
    run = playbook("--tags", "gpu_on")
    assert run.rc == 0, run.describe()
    assert TARGET.sh(f"test -f {CTL_DIR}/paused", check=False).returncode != 0
    wait_done(api, [job])


def test_teardown_stops_the_controller_and_no_worker_comes_back(host, api):
    run = playbook("--tags", "teardown")
    assert run.rc == 0, run.describe()
    props = unit()
    assert props["ActiveState"] == "inactive" and props["UnitFileState"] == "disabled", props
    time.sleep(3 * POLL)
    assert not TARGET.project_containers()


def test_switching_to_manual_removes_the_controller_and_a_rerun_changes_nothing(host, api):
    run = playbook("-e", "aima_worker_mode=manual")
    assert run.rc == 0, run.describe()
    assert unit()["LoadState"] == "not-found"
    for name in (f"/etc/systemd/system/{UNIT}", f"{CTL_DIR}/aima_gpu_controller.py",
                 f"{CTL_DIR}/config.json"):
        assert TARGET.sh(f"test -e {name}", check=False).returncode != 0, name
    assert "total_s" in state()  # the running-time history stays
    # Jobs wait: nobody starts a worker in manual mode.
    jobs = submit(api, 2)
    time.sleep(3 * POLL + 2)
    assert not worker_running()
    assert all(api.job(job["id"])["status"] == "queued" for job in jobs)
    again = playbook("-e", "aima_worker_mode=manual")
    assert again.rc == 0 and again.changed == 0, again.describe()
