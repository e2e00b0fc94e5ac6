"""scripts/molecule_all.py: which scenarios run, in which order, and how many side by side."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("molecule_all", REPO / "scripts" / "molecule_all.py")
assert spec and spec.loader
molecule_all = importlib.util.module_from_spec(spec)
sys.modules["molecule_all"] = molecule_all  # for its dataclass
spec.loader.exec_module(molecule_all)

SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))


def test_every_scenario_runs_once_the_longest_first():
    order = molecule_all.scenarios([])
    assert sorted(order) == SCENARIOS
    expected = [molecule_all.EXPECTED_S.get(name, 300) for name in order]
    assert expected == sorted(expected, reverse=True)


def test_every_scenario_has_an_expected_time():
    """A new scenario without one starts as if it took 300 s: list it where it belongs."""
    assert set(SCENARIOS) <= set(molecule_all.EXPECTED_S)


def test_a_selection_keeps_the_order_and_refuses_unknown_names():
    picked = molecule_all.scenarios(["default", SCENARIOS[0]])
    assert sorted(picked) == sorted({"default", SCENARIOS[0]})
    with pytest.raises(SystemExit, match="no-such-scenario"):
        molecule_all.scenarios(["no-such-scenario"])


@pytest.mark.parametrize(("value", "lanes"), [(None, 2), ("1", 1), ("3", 3)])
def test_lanes_come_from_the_environment(monkeypatch, value, lanes):
    if value is None:
        monkeypatch.delenv("AIMA_MOLECULE_LANES", raising=False)
    else:
        monkeypatch.setenv("AIMA_MOLECULE_LANES", value)
    assert molecule_all.lanes() == lanes


@pytest.mark.parametrize("value", ["0", "two", "-1", ""])
def test_a_wrong_lane_count_is_refused(monkeypatch, value):
    monkeypatch.setenv("AIMA_MOLECULE_LANES", value)
    with pytest.raises(SystemExit, match="AIMA_MOLECULE_LANES"):
        molecule_all.lanes()


def test_two_scenarios_start_side_by_side_without_touching_the_home(tmp_path):
    """Both lanes start at once: nothing they do first may race on a shared path.

    Molecule's prerun installed this repository as a collection into ~/.ansible/collections; two
    scenarios starting together failed one of them with FileExistsError (a CI run lost the fault
    suite that way). Run the first steps of two scenarios side by side, three times, with a fresh
    HOME, and check that both pass and that nothing was installed there.
    """
    env = {**os.environ, "HOME": str(tmp_path), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    molecule = REPO / ".venv" / "bin" / "molecule"
    pair = ("faults", "traefik")
    for _ in range(3):
        procs = [subprocess.Popen([str(molecule), "syntax", "-s", name], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for name in pair]
        for name, proc in zip(pair, procs, strict=True):
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"molecule syntax -s {name}:\n{out.decode()[-3000:]}"
    installed = tmp_path / ".ansible" / "collections" / "ansible_collections"
    assert not installed.exists() or not any(installed.iterdir())


FAILED_LOG = "\n".join([
    "\x1b[36mINFO    \x1b[0m faults ➜ converge: Executing",
    *[f"  \x1b[2m│\x1b[0m TASK [step {n}] ok" for n in range(200)],
    "  \x1b[2m│\x1b[0m FAILED - RETRYING: [localhost]: Wait for instance(s) (299 retries left).",
    "  \x1b[2m│\x1b[0m E       AssertionError: files appeared in the backend outside the volume",
    "  \x1b[2m│\x1b[0m E         + A /run/secrets/db_password",
    "  \x1b[2m│\x1b[0m E         TASKS RECAP",
    "  \x1b[2m│\x1b[0m E         docker_host : Install Docker Engine",
    "  \x1b[2m│\x1b[0m E           ----------------- 0.76s",
    "  \x1b[2m│\x1b[0m E       assert (2 == 0)",
    "  \x1b[2m│\x1b[0m tests/test_30_bad_api.py:240: AssertionError",
    *[f"  \x1b[2m│\x1b[0m teardown line {n}" for n in range(50)],
    "  \x1b[2m│\x1b[0m =========================== short test summary info",
    "  \x1b[2m│\x1b[0m FAILED tests/test_30_bad_api.py::test_nothing_was_stored_or_escaped -",
    "\x1b[31mCRITICAL\x1b[0m Verifier tests failed",
])


def test_the_cause_of_a_failure_is_picked_out_of_the_log():
    """CI shows only the end of its output: the summary repeats why a scenario failed."""
    excerpt = molecule_all.failure_excerpt(FAILED_LOG)
    assert excerpt[0] == "E       AssertionError: files appeared in the backend outside the volume"
    assert "tests/test_30_bad_api.py:240: AssertionError" in excerpt
    assert "E       assert (2 == 0)" in excerpt
    assert not any("Install Docker" in line or "0.76s" in line for line in excerpt), excerpt
    assert "FAILED tests/test_30_bad_api.py::test_nothing_was_stored_or_escaped -" in excerpt
    assert excerpt[-1] == "CRITICAL Verifier tests failed"
    assert not any("RETRYING" in line or "step" in line or "\x1b" in line for line in excerpt)
    assert "teardown line 30" not in excerpt
    assert len(molecule_all.failure_excerpt(FAILED_LOG, limit=3)) == 3


def test_a_scenario_that_failed_on_the_container_runtime_runs_once_more(tmp_path, monkeypatch,
                                                                        capsys):
    """Only a failure of the testbed's container runtime earns a second try; any other failure
    stands, and the summary says which scenario needed two."""
    attempts: dict[str, int] = {}
    monkeypatch.setattr(molecule_all, "LOG_DIR", tmp_path)
    monkeypatch.setattr(molecule_all, "scenarios", lambda _argv: ["default", "nvidia"])

    def fake_start(name, _molecule):
        attempts[name] = attempts.get(name, 0) + 1
        if name == "default" and attempts[name] == 1:
            script = ("echo 'E   stdout: OCI runtime exec failed: exec failed: unable to start "
                      "container process: read init-p: connection reset by peer'; exit 1")
        elif name == "nvidia":
            script = "echo 'E       assert 1 == 2'; exit 1"
        else:
            script = "echo ok"
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT)
        return molecule_all.Running(name, proc, log, time.monotonic())

    monkeypatch.setattr(molecule_all, "start", fake_start)
    assert molecule_all.main([]) == 1
    out = capsys.readouterr().out
    assert attempts == {"default": 2, "nvidia": 1}
    assert re.search(r"default\s+passed, 2nd try", out), out
    assert re.search(r"nvidia\s+FAILED \(rc=1\)\s", out), out
    assert "default: the first try failed on the container runtime: E   stdout: OCI runtime" in out
    assert "E       assert 1 == 2" in out.split("=== why nvidia failed", 1)[1]
    assert (tmp_path / "default.first-try.log").exists()
    assert out.rstrip().endswith("molecule: 1 passed, 1 failed")
