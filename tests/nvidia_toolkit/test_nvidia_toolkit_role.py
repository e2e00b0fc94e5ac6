"""The nvidia_toolkit role's logic, run with ansible-playbook against localhost (-c local).

Over 400 lines on purpose: one table of simulated hosts (mode x detection) and the role runs
over it; the cases read best side by side.

Hermetic: every run either is in check mode, or uses nvidia_toolkit_manage_packages=false with a
simulated detection (nvidia_toolkit_detection_override), where the role only computes facts; the
only file the role may write (the CDI spec) is pointed into pytest's tmp_path. Ansible's config and
home are tmp_path too, so the repository's ansible.cfg (inventory, callbacks) does not apply.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

RUNTIME_OPTIONS = {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
CDI_OPTIONS = {"features": {"cdi": True}}

H100 = {
    "index": 0,
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-5b1e0c4c-7a0f-3b64-2c4b-1f0e8a9c2d11",
    "memory_mib": 81559,
    "driver_version": "550.54.15",
}
GPU_HOST = {  # a host with a GPU, its driver and the toolkit installed, as detection would see it
    "gpu_present": True,
    "driver_usable": True,
    "toolkit_installed": True,
    "toolkit_version": "1.17.8-1",
    "gpus": [H100],
}
CDI_SPEC = "---\ncdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n  - name: all\n"

PUBLISHED = [
    "nvidia_toolkit_gpu_present",
    "nvidia_toolkit_driver_usable",
    "nvidia_toolkit_gpus",
    "nvidia_toolkit_gpu_usable",
    "nvidia_toolkit_installed",
    "nvidia_toolkit_installed_version",
    "nvidia_toolkit_docker_daemon_options",
    "nvidia_toolkit_compose_gpu_device",
]
# Internal facts the dump carries too: what state=absent would remove.
INTERNAL = ["__nvidia_toolkit_installed_packages"]

pytestmark = [
    pytest.mark.skipif(
        not ANSIBLE_PLAYBOOK.exists(), reason="ansible-playbook is not next to this Python"
    ),
    pytest.mark.skipif(
        not Path("/etc/debian_version").exists(), reason="the role supports Debian/Ubuntu only"
    ),
]


def _host_has_nvidia() -> bool:
    if shutil.which("nvidia-smi"):
        return True
    for vendor in Path("/sys/bus/pci/devices").glob("*/vendor"):
        try:
            if vendor.read_text().strip().lower() == "0x10de":
                return True
        except OSError:
            continue
    return False


gpu_less_host = pytest.mark.skipif(
    _host_has_nvidia(), reason="this test expects a host without an NVIDIA GPU"
)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the CDI spec is written owned by root")


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, facts_file: Path):
        self.rc = proc.returncode
        self.out = proc.stdout + proc.stderr
        recap = re.search(
            r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", self.out
        )
        assert recap, self.out
        self.ok, self.changed, self.failed = (int(group) for group in recap.groups())
        dumped = json.loads(facts_file.read_text()) if facts_file.exists() else None
        # facts: the published ones (compared whole by the tests); internal: the others dumped.
        self.facts = None if dumped is None else {k: dumped[k] for k in PUBLISHED}
        self.internal = None if dumped is None else {k: dumped[k] for k in INTERNAL}

    def __repr__(self):
        return self.out[-6000:]


@pytest.fixture
def play(tmp_path):
    """Run the role (or an entry point of it) on localhost; returns a Run."""
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text(
        "[defaults]\n"
        f"roles_path = {ROLES}\n"
        "stdout_callback = ansible.builtin.default\n"
        "callback_result_format = json\n"
        "display_skipped_hosts = false\n"
        "retry_files_enabled = false\n"
        "nocolor = true\n"
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    counter = iter(range(1000))

    def run(extra_vars: dict, check: bool = False, entry: str = "main",
            path_first: Path | None = None) -> Run:
        n = next(counter)
        facts_file = tmp_path / f"facts-{n}.json"
        playbook = tmp_path / f"play-{n}.yml"
        role_task = {
            "ansible.builtin.include_role": {"name": "nvidia_toolkit", "tasks_from": entry}
        }
        if entry == "main":
            role_task = {"ansible.builtin.include_role": {"name": "nvidia_toolkit"}}
        dump = {
            "name": "Dump the published facts",
            "ansible.builtin.copy": {
                "dest": str(facts_file),
                "content": "{{ {"
                + ", ".join(f"'{k}': {k} | default('<undefined>')" for k in PUBLISHED + INTERNAL)
                + "} | to_json }}",
                "mode": "0600",
            },
            "check_mode": False,
            "changed_when": False,
        }
        playbook.write_text(
            yaml.safe_dump(
                [
                    {
                        "name": "nvidia_toolkit under test",
                        "hosts": "localhost",
                        "gather_facts": False,
                        "tasks": [{"name": "Run the role", **role_task}, dump],
                    }
                ],
                sort_keys=False,
            )
        )
        vars_file = tmp_path / f"vars-{n}.json"
        vars_file.write_text(
            json.dumps({"ansible_python_interpreter": sys.executable, **extra_vars})
        )
        cmd = [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"@{vars_file}",
            str(playbook),
        ]
        if check:
            cmd.append("--check")
        run_env = env if path_first is None else {
            **env, "PATH": f"{path_first}{os.pathsep}{env.get('PATH', '')}"}
        proc = subprocess.run(
            cmd, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=300
        )
        return Run(proc, facts_file)

    return run


def _simulated(tmp_path, **override):
    return {
        "nvidia_toolkit_manage_packages": False,
        "nvidia_toolkit_cdi_spec_path": str(tmp_path / "cdi" / "nvidia.yaml"),
        "nvidia_toolkit_detection_override": {**GPU_HOST, **override},
    }


# --- argument validation: a wrong value fails before any task ------------------------------------


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"nvidia_toolkit_state": "bogus"}, "nvidia_toolkit_state"),
        ({"nvidia_toolkit_docker_mode": "nvidia"}, "nvidia_toolkit_docker_mode"),
        (
            {"nvidia_toolkit_detection_override": {"gpu_present": "maybe", "driver_usable": True}},
            "gpu_present",
        ),
        ({"nvidia_toolkit_detection_override": {"gpu_present": True}}, "driver_usable"),
    ],
)
def test_wrong_values_fail_in_argument_validation(play, extra, name):
    run = play(extra, check=True)
    assert run.rc != 0 and run.failed == 1, run
    assert "Validating arguments against arg spec 'main'" in run.out, run
    assert name in run.out, run
    assert "Detect the GPU" not in run.out, run  # nothing of the role ran
    assert run.changed == 0


def test_state_bogus_names_the_choices(play):
    run = play({"nvidia_toolkit_state": "bogus"}, check=True)
    assert (
        "value of nvidia_toolkit_state must be one of: auto, present, absent, got: bogus" in run.out
    ), run


# --- real detection on this (GPU-less) host, check mode ------------------------------------------


@gpu_less_host
def test_auto_on_a_gpu_less_host_is_a_no_op_with_one_line(play):
    run = play({}, check=True)
    assert run.rc == 0 and run.changed == 0, run
    lines = [line for line in run.out.splitlines() if "nvidia_toolkit: state auto: skipped" in line]
    assert len(lines) == 1, run
    assert "no NVIDIA driver" in run.out and "NVIDIA GPU on the PCI bus" in run.out, run
    assert run.facts == {
        "nvidia_toolkit_gpu_present": False,
        "nvidia_toolkit_driver_usable": False,
        "nvidia_toolkit_gpus": [],
        "nvidia_toolkit_gpu_usable": False,
        "nvidia_toolkit_installed": False,
        "nvidia_toolkit_installed_version": "",
        "nvidia_toolkit_docker_daemon_options": {},
        "nvidia_toolkit_compose_gpu_device": None,
    }
    assert "Install the NVIDIA Container Toolkit packages" not in run.out, run


@gpu_less_host
def test_present_on_a_gpu_less_host_fails_before_any_change_naming_the_driver(play):
    run = play({"nvidia_toolkit_state": "present"}, check=True)
    assert run.rc != 0 and run.failed == 1 and run.changed == 0, run
    assert "nvidia_toolkit_state is 'present'" in run.out, run
    assert (
        "a usable NVIDIA driver (nvidia-smi not found, no NVIDIA driver is installed)" in run.out
    ), run
    assert "Nothing was changed" in run.out, run
    assert "Add NVIDIA's apt repository" not in run.out, run


@gpu_less_host
def test_absent_still_detects(play, tmp_path):
    run = play(
        {
            "nvidia_toolkit_state": "absent",
            "nvidia_toolkit_cdi_spec_path": str(tmp_path / "x.yaml"),
        },
        check=True,
    )
    assert run.rc == 0, run
    assert run.facts["nvidia_toolkit_gpu_present"] is False
    assert run.facts["nvidia_toolkit_docker_daemon_options"] == {}


def test_installed_toolkit_is_read_from_dpkg(play):
    """The dpkg-query path, with packages every Debian host has standing in for the toolkit's;
    each one installed is found (state=absent removes those), not only the first."""
    packages = ["bash", "no-such-package-here", "coreutils"]
    run = play({"nvidia_toolkit_packages": packages}, check=True)
    assert run.rc == 0, run
    assert run.facts["nvidia_toolkit_installed"] is True
    assert run.facts["nvidia_toolkit_installed_version"]
    assert sorted(run.internal["__nvidia_toolkit_installed_packages"]) == ["bash", "coreutils"]


def test_every_gpu_nvidia_smi_lists_is_read(play, tmp_path):
    """The nvidia-smi path of the host detection, with a stand-in nvidia-smi (first on PATH)
    that lists two GPUs: both are read, not only the first line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        "echo '0, NVIDIA H100 80GB HBM3, GPU-aaaa, 81559, 550.54.15'\n"
        "echo '1, NVIDIA L4, GPU-bbbb, 23034, 550.54.15'\n"
    )
    smi.chmod(0o755)
    run = play({}, check=True, entry="detect", path_first=bin_dir)
    assert run.rc == 0, run
    assert run.facts["nvidia_toolkit_driver_usable"] is True
    gpus = run.facts["nvidia_toolkit_gpus"]
    assert [gpu["uuid"] for gpu in gpus] == ["GPU-aaaa", "GPU-bbbb"], gpus
    assert gpus[1]["name"] == "NVIDIA L4" and gpus[1]["memory_mib"] == 23034


def test_simulated_gpu_with_the_toolkit_read_from_dpkg(play, tmp_path):
    """An override without toolkit_installed simulates the GPU only; dpkg reports the toolkit."""
    override = {
        k: v for k, v in GPU_HOST.items() if k not in ("toolkit_installed", "toolkit_version")
    }
    extra = {
        **_simulated(tmp_path),
        "nvidia_toolkit_detection_override": override,
        "nvidia_toolkit_packages": ["no-such-package-here"],
    }
    run = play(extra, check=True)
    assert run.rc == 0 and run.changed == 0, run
    assert run.facts["nvidia_toolkit_installed"] is False
    assert run.facts["nvidia_toolkit_docker_daemon_options"] == {}
    assert "lacks the NVIDIA Container Toolkit" in run.out, run


# --- simulated "GPU present" ---------------------------------------------------------------------


def test_simulated_gpu_runtime_mode_publishes_the_runtime_and_is_idempotent(play, tmp_path):
    for _ in range(2):
        run = play({**_simulated(tmp_path), "nvidia_toolkit_state": "present"})
        assert run.rc == 0 and run.changed == 0, run
        assert run.facts == {
            "nvidia_toolkit_gpu_present": True,
            "nvidia_toolkit_driver_usable": True,
            "nvidia_toolkit_gpus": [H100],
            "nvidia_toolkit_gpu_usable": True,
            "nvidia_toolkit_installed": True,
            "nvidia_toolkit_installed_version": "1.17.8-1",
            "nvidia_toolkit_docker_daemon_options": RUNTIME_OPTIONS,
            "nvidia_toolkit_compose_gpu_device": {
                "driver": "nvidia",
                "count": "all",
                "capabilities": ["gpu"],
            },
        }
        assert "wired into Docker by runtime" in run.out
    assert not (tmp_path / "cdi").exists()


@as_root
def test_simulated_gpu_cdi_mode_writes_the_spec_once(play, tmp_path):
    extra = {**_simulated(tmp_path, cdi_spec=CDI_SPEC), "nvidia_toolkit_docker_mode": "cdi"}
    first = play(extra)
    assert first.rc == 0 and first.changed == 2, first  # the directory and the spec
    spec = tmp_path / "cdi" / "nvidia.yaml"
    assert spec.read_text() == CDI_SPEC
    assert first.facts["nvidia_toolkit_docker_daemon_options"] == CDI_OPTIONS
    assert first.facts["nvidia_toolkit_compose_gpu_device"]["device_ids"] == ["nvidia.com/gpu=all"]
    second = play(extra)
    assert second.rc == 0 and second.changed == 0, second
    # state absent removes the spec and the wiring, while detection facts stay
    gone = play({**extra, "nvidia_toolkit_state": "absent"})
    assert gone.rc == 0 and gone.changed == 1, gone
    assert not spec.exists()
    assert gone.facts["nvidia_toolkit_gpu_present"] is True
    assert gone.facts["nvidia_toolkit_gpus"] == [H100]
    assert gone.facts["nvidia_toolkit_docker_daemon_options"] == {}
    assert gone.facts["nvidia_toolkit_gpu_usable"] is False
    assert "left alone (nvidia_toolkit_manage_packages is false)" in gone.out


@as_root
def test_simulated_gpu_publishes_the_selected_gpus_in_each_form(play, tmp_path):
    selection = {"nvidia_toolkit_compose_gpus": ["0"]}
    run = play({**_simulated(tmp_path), **selection})
    assert run.rc == 0, run
    assert run.facts["nvidia_toolkit_compose_gpu_device"] == {
        "driver": "nvidia",
        "device_ids": ["0"],
        "capabilities": ["gpu"],
    }
    cdi = {**_simulated(tmp_path, cdi_spec=CDI_SPEC), "nvidia_toolkit_docker_mode": "cdi"}
    run = play({**cdi, **selection})
    assert run.rc == 0, run
    assert run.facts["nvidia_toolkit_compose_gpu_device"] == {
        "driver": "cdi",
        "device_ids": ["nvidia.com/gpu=0"],
        "capabilities": ["gpu"],
    }


def test_a_wrong_gpu_selection_fails_before_any_change(play, tmp_path):
    run = play({**_simulated(tmp_path), "nvidia_toolkit_compose_gpus": ["nvidia.com/gpu=0"]})
    assert run.rc != 0 and run.changed == 0, run
    assert "nvidia_toolkit_compose_gpus: not a GPU index or UUID: nvidia.com/gpu=0" in run.out, run
    assert "Publish the Docker wiring" not in run.out, run


def test_simulated_gpu_without_driver_auto_skips(play, tmp_path):
    run = play(_simulated(tmp_path, driver_usable=False, gpus=[], toolkit_installed=False))
    assert run.rc == 0 and run.changed == 0, run
    assert "state auto: skipped, this host lacks a usable NVIDIA driver" in run.out, run
    assert run.facts["nvidia_toolkit_gpu_present"] is True
    assert run.facts["nvidia_toolkit_docker_daemon_options"] == {}
    assert run.facts["nvidia_toolkit_gpu_usable"] is False


def test_simulated_gpu_without_driver_present_fails_naming_the_driver(play, tmp_path):
    extra = {
        **_simulated(
            tmp_path,
            driver_usable=False,
            gpus=[],
            driver_problem="nvidia-smi failed (rc 9): NVIDIA-SMI has failed",
        ),
        "nvidia_toolkit_state": "present",
    }
    run = play(extra)
    assert run.rc != 0 and run.changed == 0, run
    assert "lacks a usable NVIDIA driver (nvidia-smi failed (rc 9)" in run.out, run
    assert "NVIDIA GPU on the PCI bus" not in run.out, run


def test_present_without_package_management_needs_the_toolkit(play, tmp_path):
    run = play({**_simulated(tmp_path, toolkit_installed=False), "nvidia_toolkit_state": "present"})
    assert run.rc != 0 and run.changed == 0, run
    assert (
        "nvidia-container-toolkit is not installed and nvidia_toolkit_manage_packages is false"
        in run.out
    ), run


def test_auto_keeps_the_wiring_of_an_installed_toolkit_when_the_driver_is_gone(play, tmp_path):
    """No daemon.json flip-flop while the driver is broken (e.g. kernel update, no reboot yet)."""
    run = play(_simulated(tmp_path, driver_usable=False, gpus=[]))
    assert run.rc == 0 and run.changed == 0, run
    assert run.facts["nvidia_toolkit_docker_daemon_options"] == RUNTIME_OPTIONS
    assert run.facts["nvidia_toolkit_gpu_usable"] is False
    assert "Docker keeps the runtime wiring of the installed toolkit" in run.out, run


# --- the smoke entry point -----------------------------------------------------------------------


def test_smoke_is_skipped_unless_asked(play):
    run = play({}, entry="smoke")
    assert run.rc == 0 and run.changed == 0, run
    assert "smoke test: skipped, nvidia_toolkit_smoke_test is false" in run.out, run


def test_smoke_is_skipped_without_a_usable_gpu(play):
    run = play(
        {"nvidia_toolkit_smoke_test": True, "nvidia_toolkit_gpu_usable": False}, entry="smoke"
    )
    assert run.rc == 0 and run.changed == 0, run
    assert "no usable GPU on this host" in run.out, run
    assert "Run nvidia-smi in a CUDA container" not in run.out, run


def test_smoke_entry_point_validates_its_arguments(play):
    run = play({"nvidia_toolkit_smoke_test": "perhaps"}, entry="smoke")
    assert run.rc != 0, run
    assert "Validating arguments against arg spec 'smoke'" in run.out, run
