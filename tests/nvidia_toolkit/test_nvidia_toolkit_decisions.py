"""Unit tests of nvidia_toolkit's decisions (filters nvidia_toolkit_decide, nvidia_toolkit_wiring,
nvidia_toolkit_compose_device), which tasks/decide.yml and tasks/wiring.yml only call."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import load_filter_plugin

f = load_filter_plugin("nvidia_toolkit", "nvidia_toolkit")

RUNTIME_OPTIONS = {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
CDI_OPTIONS = {"features": {"cdi": True}}
RUNTIME_DEVICE = {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
CDI_DEVICE = {"driver": "cdi", "device_ids": ["nvidia.com/gpu=all"], "capabilities": ["gpu"]}
NO_GPU = "an NVIDIA GPU on the PCI bus"
NO_DRIVER = "a usable NVIDIA driver (nvidia-smi not found)"
NO_TOOLKIT = "the NVIDIA Container Toolkit"


def decide(state="auto", gpu=True, driver=True, **kw):
    return f.decide(state, gpu, driver, **{"driver_problem": "nvidia-smi not found", **kw})


# --- decide ---


@pytest.mark.parametrize(
    ("kw", "action", "missing"),
    [
        ({}, "install", []),
        ({"gpu": False, "driver": False}, "skip", [NO_GPU, NO_DRIVER]),
        ({"driver": False}, "skip", [NO_DRIVER]),
        ({"manage_packages": False}, "skip", [NO_TOOLKIT]),
        ({"manage_packages": False, "installed": True}, "install", []),
        ({"state": "present"}, "install", []),
        # present installs only when nothing is missing: the role fails on a non-empty list.
        ({"state": "present", "gpu": False, "driver": False}, "install", [NO_GPU, NO_DRIVER]),
        ({"state": "absent"}, "remove", []),
        ({"state": "absent", "gpu": False, "driver": False}, "remove", [NO_GPU, NO_DRIVER]),
        ({"driver": False, "install_driver": True}, "driver", [NO_DRIVER]),
        ({"state": "present", "driver": False, "install_driver": True}, "driver", [NO_DRIVER]),
        ({"state": "absent", "driver": False, "install_driver": True}, "remove", [NO_DRIVER]),
        # no GPU: no driver install; packages unmanaged: no driver install either
        ({"gpu": False, "driver": False, "install_driver": True}, "skip", [NO_GPU, NO_DRIVER]),
        (
            {"driver": False, "install_driver": True, "manage_packages": False},
            "skip",
            [NO_DRIVER, NO_TOOLKIT],
        ),
    ],
)
def test_decide(kw, action, missing):
    decision = decide(**kw)
    assert decision["action"] == action
    assert len(decision["missing"]) == len(missing), decision
    for text, start in zip(decision["missing"], missing, strict=True):
        assert text.startswith(start), (text, start)


def test_after_a_driver_install_the_role_decides_again_and_says_reboot():
    decision = decide(state="present", driver=False, install_driver=True, driver_attempted=True)
    assert decision["action"] == "install"  # present: then fails naming the missing driver
    assert "kernel module loads after a reboot" in decision["missing"][0]
    assert decide(driver=False, install_driver=True, driver_attempted=True)["action"] == "skip"


def test_decide_rejects_an_unknown_state():
    with pytest.raises(ValueError, match="nvidia_toolkit_state"):
        f.decide("bogus", True, True)


# --- wiring ---


@pytest.mark.parametrize("mode", ["runtime", "cdi"])
def test_install_publishes_the_mode_s_wiring_and_device(mode):
    wiring = f.wiring("install", False, True, True, mode)
    assert wiring == {
        "wired": True,
        "gpu_usable": True,
        "docker_daemon_options": RUNTIME_OPTIONS if mode == "runtime" else CDI_OPTIONS,
        "compose_gpu_device": RUNTIME_DEVICE if mode == "runtime" else CDI_DEVICE,
    }


def test_auto_skip_keeps_the_wiring_of_an_installed_toolkit_but_no_device():
    # The driver is gone for a moment (kernel update, no reboot): daemon.json must not flip-flop.
    wiring = f.wiring("skip", True, True, False, "runtime")
    assert wiring["wired"] and wiring["docker_daemon_options"] == RUNTIME_OPTIONS
    assert wiring["gpu_usable"] is False and wiring["compose_gpu_device"] is None


@pytest.mark.parametrize(
    ("action", "installed"),
    [("skip", False), ("remove", True), ("remove", False), ("driver", True)],
)
def test_no_wiring_and_no_device(action, installed):
    wiring = f.wiring(action, installed, True, True, "cdi")
    assert wiring == {
        "wired": False,
        "gpu_usable": False,
        "docker_daemon_options": {},
        "compose_gpu_device": None,
    }


@pytest.mark.parametrize(("gpu", "driver"), [(False, True), (True, False), (False, False)])
def test_a_device_only_for_a_usable_gpu(gpu, driver):
    wiring = f.wiring("install", True, gpu, driver, "runtime")
    assert wiring["wired"] and wiring["gpu_usable"] is False
    assert wiring["compose_gpu_device"] is None


def test_the_runtime_path_is_published():
    options = f.wiring("install", True, True, True, "runtime", "/opt/nvidia/runtime")
    assert options["docker_daemon_options"]["runtimes"]["nvidia"]["path"] == "/opt/nvidia/runtime"


def test_wiring_is_a_function_of_its_inputs_only():
    # Every combination gives JSON-able data, and a device exactly when the GPU is usable.
    for action, installed, gpu, driver, mode in itertools.product(
        ["install", "skip", "remove", "driver"],
        [True, False],
        [True, False],
        [True, False],
        ["runtime", "cdi"],
    ):
        wiring = f.wiring(action, installed, gpu, driver, mode)
        assert (wiring["compose_gpu_device"] is not None) == wiring["gpu_usable"]
        assert wiring["gpu_usable"] == (gpu and driver and wiring["wired"])


# --- the Compose device request ---


@pytest.mark.parametrize(
    ("mode", "gpus", "expected"),
    [
        ("runtime", "all", RUNTIME_DEVICE),
        ("cdi", "all", CDI_DEVICE),
        (
            "runtime",
            ["0", "2"],
            {"driver": "nvidia", "device_ids": ["0", "2"], "capabilities": ["gpu"]},
        ),
        ("runtime", [1], {"driver": "nvidia", "device_ids": ["1"], "capabilities": ["gpu"]}),
        (
            "cdi",
            ["0", "GPU-5b1e0c4c-7a0f-3b64-2c4b-1f0e8a9c2d11"],
            {
                "driver": "cdi",
                "device_ids": [
                    "nvidia.com/gpu=0",
                    "nvidia.com/gpu=GPU-5b1e0c4c-7a0f-3b64-2c4b-1f0e8a9c2d11",
                ],
                "capabilities": ["gpu"],
            },
        ),
        (
            "cdi",
            ["0:1"],
            {"driver": "cdi", "device_ids": ["nvidia.com/gpu=0:1"], "capabilities": ["gpu"]},
        ),
    ],
)
def test_compose_device(mode, gpus, expected):
    assert f.compose_device(mode, gpus) == expected


@pytest.mark.parametrize(
    ("mode", "gpus", "message"),
    [
        ("nvidia", "all", "nvidia_toolkit_docker_mode"),
        ("runtime", "some", "nvidia_toolkit_compose_gpus"),
        ("runtime", [], "nvidia_toolkit_compose_gpus"),
        ("cdi", ["nvidia.com/gpu=0"], "not a GPU index or UUID"),
        ("cdi", ["0", "0"], "twice"),
        ("runtime", 2, "nvidia_toolkit_compose_gpus"),
    ],
)
def test_compose_device_rejects(mode, gpus, message):
    with pytest.raises(ValueError, match=message):
        f.compose_device(mode, gpus)
