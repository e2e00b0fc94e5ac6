"""Verify nvidia_toolkit on the Molecule instance. The tests run in file order.

After converge (simulated "GPU present", toolkit from the stand-in repository, see molecule.yml):
NVIDIA's apt source, key and the pinned packages are in place, and daemon.json, written by
docker_host alone, holds the nvidia runtime exactly once and the engine runs with it. Then the role
runs with the real detection of this GPU-less instance: state present fails before any change and
names the missing driver; state absent removes the toolkit and the wiring; state auto is a no-op
that says so in one line. Last, the CDI wiring end to end (cdi_worker.yml): daemon.json and the CDI
spec, the device request nvidia_toolkit published rendered as it is into compose.yaml, held by the
worker's container (HostConfig.DeviceRequests), resolved by Docker at start, reported by status.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from aimakit.ansible import Run, molecule_playbook

NVIDIA_RUNTIME = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
SOURCE = "/etc/apt/sources.list.d/nvidia-container-toolkit.sources"
KEYRING = "/etc/apt/keyrings/nvidia-container-toolkit.asc"
TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
SCENARIO_DIR = Path(
    os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).resolve().parents[1])
)
PROJECT_DIR = Path(
    os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3])
)
# The instance's own detection (no GPU, no driver).
REAL_DETECTION = {"nvidia_toolkit_detection_override": None}


def _arch(host):
    return host.check_output("dpkg --print-architecture")


def test_docker_is_active_and_enabled(host):
    service = host.service("docker")
    assert service.is_running
    assert service.is_enabled


def test_daemon_json_holds_the_nvidia_runtime_exactly_once(host):
    text = host.file("/etc/docker/daemon.json").content_string
    daemon = json.loads(text)
    assert daemon["runtimes"] == NVIDIA_RUNTIME
    assert text.count('"nvidia"') == 1
    assert text.count("nvidia-container-runtime") == 1
    # The role contributes data only: docker_host's own settings are still there.
    assert daemon["log-driver"] == "json-file"
    assert "features" not in daemon  # runtime mode, not CDI


def test_the_engine_runs_with_the_nvidia_runtime(host):
    runtimes = json.loads(host.check_output("docker info --format '{{json .Runtimes}}'"))
    assert runtimes["nvidia"]["path"] == "nvidia-container-runtime"
    assert "runc" in runtimes


def test_the_engine_was_restarted_after_daemon_json_was_written(host):
    written = int(host.check_output("stat -c %Y /etc/docker/daemon.json"))
    since = host.check_output("systemctl show docker --property ActiveEnterTimestamp --value")
    started = int(host.check_output(f"date -d '{since}' +%s"))
    assert started >= written, (since, written)


def test_nvidia_apt_source_with_signed_by(host):
    source = host.file(SOURCE)
    assert source.mode == 0o644
    assert source.content_string.splitlines()[-4:] == [
        "Types: deb",
        f"URIs: file:///srv/fake-nvidia-repo/stable/deb/{_arch(host)}",
        "Suites: /",
        f"Signed-By: {KEYRING}",
    ]
    key = host.file(KEYRING)
    assert key.mode == 0o644
    assert key.content_string.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_toolkit_packages_are_installed_at_the_pinned_version(host):
    # The stand-in repository also offers 1.17.8-1: the pin wins over the newest.
    for package in TOOLKIT_PACKAGES:
        assert host.package(package).is_installed, package
        assert host.package(package).version == "1.17.7-1", package


def test_no_cdi_spec_in_runtime_mode(host):
    assert not host.file("/etc/cdi/nvidia.yaml").exists


INSTANCE = f"aima-molecule-{os.environ.get('MOLECULE_SCENARIO_NAME', 'nvidia')}"


def _reset_docker_start_limit() -> None:
    """The plays here change Docker's wiring one after the other, each restarting Docker, and
    systemd refuses a fourth start of docker.service within a minute (its StartLimitBurst=3):
    only this quick succession of test runs meets that limit, so it is reset before each."""
    subprocess.run(["docker", "exec", INSTANCE, "systemctl", "reset-failed", "docker.service"],
                   capture_output=True, check=False, timeout=60)


def _playbook(playbook: Path, extra_vars: dict) -> tuple[Run, str, int, int]:
    _reset_docker_start_limit()
    run = molecule_playbook(playbook, extra_vars,
                            env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    assert run.recap, run.output
    return run, run.output, run.recap["changed"], run.recap["failed"]


@pytest.fixture
def snapshot(host):
    """What a change by the role or docker_host would alter."""

    def take():
        return {
            "daemon.json": host.check_output("sha256sum /etc/docker/daemon.json"),
            "packages": host.check_output(
                "dpkg-query -W -f='${Package} ${Version}\\n' | sha256sum"
            ),
            "apt sources": host.check_output(
                "ls -1 /etc/apt/sources.list.d/ /etc/apt/keyrings/ 2>/dev/null || true"
            ),
            "docker since": host.check_output(
                "systemctl show docker --property ActiveEnterTimestamp --value"
            ),
            "cdi": host.run("ls /etc/cdi").stdout,
        }

    return take


def test_present_on_the_gpu_less_host_fails_before_any_change_naming_the_driver(snapshot):
    before = snapshot()
    run, out, changed, failed = _playbook(
        PROJECT_DIR / "playbooks" / "provision.yml",
        {**REAL_DETECTION, "nvidia_toolkit_state": "present"},
    )
    assert run.rc != 0, out
    assert failed == 1 and changed == 0, out
    assert "nvidia_toolkit_state is 'present'" in out, out
    assert "a usable NVIDIA driver (nvidia-smi not found, no NVIDIA driver is installed)" in out, (
        out
    )
    assert "Nothing was changed" in out, out
    assert "TASK [docker_host" not in out, out  # the play stopped at the first role
    assert snapshot() == before


def test_absent_removes_the_toolkit_and_its_wiring(host):
    run, out, changed, failed = _playbook(
        PROJECT_DIR / "playbooks" / "provision.yml",
        {**REAL_DETECTION, "nvidia_toolkit_state": "absent"},
    )
    assert run.rc == 0 and failed == 0 and changed > 0, out
    for package in TOOLKIT_PACKAGES:
        assert not host.package(package).is_installed, package
    assert not host.file(SOURCE).exists
    assert not host.file(KEYRING).exists
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert "runtimes" not in daemon
    assert daemon["log-driver"] == "json-file"
    runtimes = json.loads(host.check_output("docker info --format '{{json .Runtimes}}'"))
    assert "nvidia" not in runtimes
    assert host.service("docker").is_running


def test_auto_on_the_gpu_less_host_is_a_no_op_with_one_line(snapshot):
    before = snapshot()
    run, out, changed, failed = _playbook(
        SCENARIO_DIR / "auto_only.yml", {**REAL_DETECTION, "nvidia_toolkit_state": "auto"}
    )
    assert run.rc == 0 and failed == 0 and changed == 0, out
    lines = [line for line in out.splitlines() if "nvidia_toolkit: state auto: skipped" in line]
    assert len(lines) == 1, out
    assert "a usable NVIDIA driver (nvidia-smi not found" in lines[0], out
    assert "Docker gets no GPU wiring" in lines[0], out
    assert snapshot() == before


# --- the CDI wiring end to end: nvidia_toolkit -> daemon.json -> compose.yaml -> the worker ---

# A testbed stand-in for `nvidia-ctk cdi generate`: the device the contract names, whose only
# edit is an environment variable (no NVIDIA software, no device node exists here).
CDI_SPEC = """\
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
  - name: all
    containerEdits:
      env:
        - AIMA_TESTBED_CDI_DEVICE=nvidia.com/gpu=all
containerEdits:
  env:
    - AIMA_TESTBED_CDI_SPEC=stand-in
"""
CDI_DEVICE = {"driver": "cdi", "device_ids": ["nvidia.com/gpu=all"], "capabilities": ["gpu"]}
CDI_RUN = {
    "nvidia_toolkit_docker_mode": "cdi",
    "nvidia_toolkit_detection_override": {
        "gpu_present": True,
        "driver_usable": True,
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": "GPU-5b1e0c4c-7a0f-3b64-2c4b-1f0e8a9c2d11",
                "memory_mib": 81559,
                "driver_version": "550.54.15",
            }
        ],
        "cdi_spec": CDI_SPEC,
    },
}
WORKER_CONTAINER = "aima-aima-gpu-worker-1"
CDI_STATE: dict = {}


@pytest.fixture
def cdi_run():
    """The provision + render + create-the-worker run in CDI mode (molecule/nvidia/cdi_worker.yml),
    once for the tests below."""
    if not CDI_STATE:
        CDI_STATE["run"] = _playbook(SCENARIO_DIR / "cdi_worker.yml", CDI_RUN)
    return CDI_STATE["run"]


def test_cdi_run_succeeds(cdi_run):
    run, out, _, failed = cdi_run
    assert run.rc == 0 and failed == 0, out[-6000:]


def test_cdi_daemon_json_and_spec(host, cdi_run):
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["features"] == {"cdi": True}
    assert "runtimes" not in daemon
    assert host.file("/etc/cdi/nvidia.yaml").content_string == CDI_SPEC


def test_cdi_compose_file_renders_the_published_request(host, cdi_run):
    compose = yaml.safe_load(host.file("/opt/aima/compose.yaml").content_string)
    worker = compose["services"]["aima-gpu-worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [CDI_DEVICE]
    # The engine's Compose accepts it.
    config = host.run("docker compose --project-directory /opt/aima --profile gpu config --quiet")
    assert config.rc == 0, config.stderr


def test_cdi_worker_container_holds_the_cdi_device_request(host, cdi_run):
    inspect = json.loads(host.check_output(f"docker inspect {WORKER_CONTAINER}"))[0]
    requests = inspect["HostConfig"]["DeviceRequests"]
    assert len(requests) == 1, requests
    request = requests[0]
    assert request["Driver"] == "cdi"
    assert request["DeviceIDs"] == ["nvidia.com/gpu=all"]
    assert request["Capabilities"] == [["gpu"]]
    assert not request.get("Count")
    assert inspect["Config"]["Labels"]["com.docker.compose.service"] == "aima-gpu-worker"


def test_cdi_device_is_injected_when_the_worker_starts(host, cdi_run):
    """Docker resolved nvidia.com/gpu=all from the spec in /etc/cdi and applied its edits."""
    _, out, _, _ = cdi_run
    state = json.loads(host.check_output(f"docker inspect {WORKER_CONTAINER}"))[0]["State"]
    assert state["Running"], (state, re.findall(r"cdi worker start: .*", out))
    environ = host.check_output(f"tr '\\0' '\\n' < /proc/{state['Pid']}/environ").splitlines()
    assert "AIMA_TESTBED_CDI_DEVICE=nvidia.com/gpu=all" in environ, environ
    assert "AIMA_TESTBED_CDI_SPEC=stand-in" in environ, environ


def test_status_reads_the_reservation_from_the_container(cdi_run):
    _, out, _, _ = cdi_run
    assert (
        "GPU reserved for aima-gpu-worker: driver cdi: nvidia.com/gpu=all (capabilities gpu)" in out
    ), out[-6000:]
    assert re.search(r"aima-gpu-worker\s+running", out), out[-6000:]
