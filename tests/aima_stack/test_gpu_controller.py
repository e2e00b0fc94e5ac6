"""The GPU worker controller's decisions (roles/aima_stack/files/aima_gpu_controller.py), pure:
when it starts and stops the worker, its hysteresis, back-off and running-time accounting."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

PATH = Path(__file__).resolve().parents[2] / "roles/aima_stack/files/aima_gpu_controller.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("aima_gpu_controller", PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ctl = _load()
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
CFG = ctl.Config(stack_dir="/opt/aima", project="aima", worker_service="aima-gpu-worker",
                 worker_container="aima-aima-gpu-worker-1",
                 backend_container="aima-aima-backend-1", idle_timeout_s=60,
                 poll_interval_s=5, wait_timeout_s=300, stop_timeout_s=45,
                 state_dir="/opt/aima/gpu-controller")
RUNNING = ctl.Worker(True, "running", started_at=T0 - 10)
EXITED = ctl.Worker(True, "exited", started_at=T0 - 100, finished_at=T0 - 50, exit_code=0)
ABSENT = ctl.Worker(False)


def reading(queued: int = 0, running: int = 0, processed: int = 0):
    return ctl.Reading(queued, running, processed)


def step(memory, r, worker, now, paused=False):
    ctl.observe(memory, r, now)
    return ctl.decide(CFG, memory, r, worker, paused, now)


@pytest.mark.parametrize("worker", [ABSENT, EXITED, ctl.Worker(True, "created")])
def test_waiting_jobs_start_a_worker_that_is_not_running(worker):
    decision = step(ctl.Memory(), reading(queued=3), worker, T0)
    assert decision.action == "start" and "3 queued" in decision.reason


def test_a_job_left_running_by_a_killed_worker_starts_it_again():
    killed = ctl.Worker(True, "exited", started_at=T0 - 30, finished_at=T0 - 1, exit_code=137)
    assert step(ctl.Memory(), reading(running=1), killed, T0).action == "start"


def test_nothing_waiting_and_no_worker_does_nothing():
    assert step(ctl.Memory(), reading(), ABSENT, T0).action == "none"
    assert step(ctl.Memory(), reading(), EXITED, T0).action == "none"


def test_a_running_worker_with_work_is_left_alone():
    memory = ctl.Memory(last_activity=T0 - 3600)
    assert step(memory, reading(running=1), RUNNING, T0).action == "none"
    assert memory.last_activity == T0


def test_idle_worker_stops_only_after_the_idle_timeout():
    memory = ctl.Memory(last_activity=T0, last_processed=5)
    worker = ctl.Worker(True, "running", started_at=T0 - 5)
    assert step(memory, reading(processed=5), worker, T0 + 59).action == "none"
    decision = step(memory, reading(processed=5), worker, T0 + 60)
    assert decision.action == "stop" and "idle for 60 s" in decision.reason


def test_minimum_run_time_the_idle_clock_starts_at_the_workers_start():
    # An operator's gpu_on with nothing queued: no activity ever, still runs the idle period.
    worker = ctl.Worker(True, "running", started_at=T0)
    memory = ctl.Memory()
    assert step(memory, reading(), worker, T0 + 30).action == "none"
    assert step(memory, reading(), worker, T0 + 61).action == "stop"


def test_a_job_finished_between_two_polls_counts_as_activity():
    memory = ctl.Memory(last_activity=T0 - 600, last_processed=7)
    assert step(memory, reading(processed=8), RUNNING, T0).action == "none"
    assert memory.last_activity == T0
    assert step(memory, reading(processed=8), RUNNING, T0 + 59).action == "none"
    assert step(memory, reading(processed=8), RUNNING, T0 + 60).action == "stop"


def test_a_job_in_flight_when_the_timer_would_fire_is_not_interrupted():
    memory = ctl.Memory(last_activity=T0 - 3600, last_processed=1)
    for t in range(0, 300, 5):
        assert step(memory, reading(running=1, processed=1), RUNNING, T0 + t).action == "none"
    # Once it is done the idle clock starts afresh from the last busy reading.
    assert step(memory, reading(processed=2), RUNNING, T0 + 300).action == "none"
    assert step(memory, reading(processed=2), RUNNING, T0 + 359).action == "none"
    assert step(memory, reading(processed=2), RUNNING, T0 + 360).action == "stop"


def test_unknown_queue_or_worker_state_holds():
    memory = ctl.Memory(last_activity=T0 - 3600)
    assert step(memory, None, RUNNING, T0).action == "none"
    assert step(memory, reading(queued=5), None, T0).action == "none"
    assert memory.last_activity == T0  # the queued jobs were seen


def test_paused_holds_whatever_the_queue_says():
    assert step(ctl.Memory(), reading(queued=9), ABSENT, T0, paused=True).action == "none"
    memory = ctl.Memory(last_activity=T0 - 3600)
    assert step(memory, reading(), RUNNING, T0, paused=True).action == "none"


@pytest.mark.parametrize("status", ["restarting", "paused", "removing"])
def test_a_worker_in_dockers_hands_is_left_to_docker(status):
    worker = ctl.Worker(True, status, started_at=T0 - 100)
    assert step(ctl.Memory(), reading(queued=1), worker, T0).action == "none"


def test_failed_starts_back_off_doubling_up_to_a_cap():
    memory = ctl.Memory()
    delays = [ctl.start_failed(memory, CFG, T0) for _ in range(10)]
    assert delays[:3] == [10, 20, 40] and delays[-1] == ctl.START_BACKOFF_MAX_S
    assert step(memory, reading(queued=1), ABSENT, T0 + 299).action == "none"
    assert step(memory, reading(queued=1), ABSENT, T0 + 300).action == "start"
    ctl.start_succeeded(memory, T0 + 301)
    assert memory.start_failures == 0 and memory.next_start_at == 0
    assert memory.last_activity == T0 + 301


def test_no_flapping_under_a_steady_trickle_of_jobs():
    """One job every 30 s, each done within a poll, idle timeout 60 s: one start, no stop."""
    memory, actions, worker, processed = ctl.Memory(), [], ABSENT, 0
    for t in range(0, 600, 5):
        queued = 1 if t % 30 == 0 else 0
        decision = step(memory, reading(queued=queued, processed=processed), worker, T0 + t)
        actions.append(decision.action)
        if decision.action == "start":
            ctl.start_succeeded(memory, T0 + t)
            worker = ctl.Worker(True, "running", started_at=T0 + t)
        if queued:
            processed += 1
    assert actions.count("start") == 1 and actions.count("stop") == 0


def test_running_time_is_booked_per_utc_day_and_in_total():
    memory = ctl.Memory()
    midnight = 1_800_057_600.0  # 2027-01-16 00:00 UTC
    start = midnight - 600
    ctl.account(memory, ctl.Worker(True, "running", started_at=start), start + 5)
    today, total = ctl.running_time(memory, midnight + 300)
    assert (round(today), round(total)) == (300, 900)
    ctl.account(memory, ctl.Worker(True, "exited", started_at=start, finished_at=midnight + 300,
                                   exit_code=0), midnight + 305)
    assert memory.run_start is None
    assert memory.days == {"2027-01-15": 600.0, "2027-01-16": 300.0}
    assert memory.total_s == 900.0
    # A second run, its container removed before it was seen stopped: booked until last seen.
    ctl.account(memory, ctl.Worker(True, "running", started_at=midnight + 1000), midnight + 1000)
    ctl.account(memory, ctl.Worker(True, "running", started_at=midnight + 1000), midnight + 1100)
    ctl.account(memory, ABSENT, midnight + 1200)
    assert memory.total_s == 1000.0 and memory.days["2027-01-16"] == 400.0
    # Unknown (Docker not answering) books nothing and closes nothing.
    ctl.account(memory, None, midnight + 1300)
    assert memory.total_s == 1000.0


def test_a_restarted_container_closes_the_old_run():
    memory = ctl.Memory()
    ctl.account(memory, ctl.Worker(True, "running", started_at=T0), T0 + 10)
    ctl.account(memory, ctl.Worker(True, "running", started_at=T0 + 50), T0 + 60)
    assert memory.total_s == 10.0 and memory.run_start == T0 + 50


def test_docker_times_and_health_answers_parse():
    assert ctl.parse_docker_time("0001-01-01T00:00:00Z") is None
    assert ctl.parse_docker_time("") is None
    assert ctl.parse_docker_time("2027-01-15T08:00:00.5Z") == T0 + 0.5
    assert ctl.parse_docker_time("2027-01-15T08:00:00.123456789Z") == pytest.approx(T0 + 0.123456)
    body = json.dumps({"status": "ok", "jobs": {"queued": 2, "running": 1, "done": 7, "failed": 1},
                       "workers": 1})
    assert ctl.parse_health(body) == ctl.Reading(2, 1, 8)
    with pytest.raises((KeyError, TypeError)):
        ctl.parse_health(json.dumps({"status": "degraded", "jobs": None}))


def test_memory_survives_a_restart_of_the_controller(tmp_path):
    cfg = ctl.Config(**{**CFG.__dict__, "state_dir": str(tmp_path)})
    first = ctl.Controller(cfg)
    first.memory.last_activity = T0
    first.memory.total_s = 42.0
    first.memory.last_action = {"action": "start", "reason": "x", "at": "t", "result": "ok"}
    first.save(T0)
    second = ctl.Controller(cfg)
    assert second.memory == first.memory
    lines = ctl.status_lines(json.loads((tmp_path / "state.json").read_text()), T0)
    assert any("last action: start at t" in line for line in lines)
    assert any("total 0 h 00 min 42 s" in line for line in lines)


def test_status_without_state_says_so(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**CFG.__dict__, "state_dir": str(tmp_path)}))
    assert ctl.main(["--config", str(cfg), "--status"]) == 0
    assert "no state yet" in capsys.readouterr().out
