"""The GPU device contract between nvidia_toolkit and aima_stack.

nvidia_toolkit publishes nvidia_toolkit_compose_gpu_device (runtime or CDI form); aima_stack renders
it as it is into the worker's deploy.resources.reservations.devices, checked by `docker compose
config`; gpu_on and status read it back from the container's HostConfig.DeviceRequests.
"""

from __future__ import annotations

import pytest

from tests.conftest import load_filter_plugin

gpu = load_filter_plugin("aima_stack", "aima_gpu")
toolkit = load_filter_plugin("nvidia_toolkit", "nvidia_toolkit")

WORKER = "aima-gpu-worker"
RUNTIME = {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
CDI = {"driver": "cdi", "device_ids": ["nvidia.com/gpu=all"], "capabilities": ["gpu"]}
RUNTIME_TWO = {"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": ["gpu"]}
CDI_ONE = {
    "driver": "cdi",
    "device_ids": ["nvidia.com/gpu=GPU-5b1e0c4c-7a0f-3b64-2c4b-1f0e8a9c2d11"],
    "capabilities": ["gpu"],
}
# How Docker 26 stores them (HostConfig.DeviceRequests), as Compose 2.26 creates them.
RUNTIME_DOCKER = [
    {"Driver": "nvidia", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}
]
CDI_DOCKER = [
    {
        "Driver": "cdi",
        "Count": 0,
        "DeviceIDs": ["nvidia.com/gpu=all"],
        "Capabilities": [["gpu"]],
        "Options": None,
    }
]


def devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


# --- what nvidia_toolkit publishes ---


@pytest.mark.parametrize(
    ("mode", "gpus", "expected"),
    [
        ("runtime", "all", RUNTIME),
        ("cdi", "all", CDI),
        ("runtime", ["0", "1"], RUNTIME_TWO),
        ("cdi", ["GPU-5b1e0c4c-7a0f-3b64-2c4b-1f0e8a9c2d11"], CDI_ONE),
    ],
)
def test_the_toolkit_publishes_a_valid_request_in_each_form(mode, gpus, expected):
    published = toolkit.compose_device(mode, gpus)
    assert published == expected
    assert gpu.aima_gpu_device_errors(published) == []
    assert gpu.aima_gpu_device(published, "auto", True) == expected


# --- aima_stack's side: which request the worker reserves ---


@pytest.mark.parametrize(
    ("worker_device", "usable", "reserved"),
    [("auto", True, True), ("auto", False, False), ("cpu", True, False), ("gpu", False, True)],
)
def test_the_worker_reserves_the_published_request_iff_it_gets_the_gpu(
    worker_device, usable, reserved
):
    assert gpu.aima_gpu_device(CDI, worker_device, usable) == (CDI if reserved else None)


def test_a_reserved_gpu_without_a_request_is_an_error():
    with pytest.raises(ValueError, match="aima_worker_gpu_device is empty"):
        gpu.aima_gpu_device(None, "gpu", True)
    assert gpu.aima_gpu_device(None, "auto", False) is None


def test_unset_suboptions_are_dropped():
    validated = {**CDI, "count": None, "options": None}
    assert gpu.aima_gpu_device_errors(validated) == []
    assert gpu.aima_gpu_device(validated, "gpu") == CDI


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("nvidia", "must be a mapping"),
        ({**RUNTIME, "driver": ""}, "driver must be a non-empty string"),
        ({"driver": "nvidia", "count": "all"}, "capabilities must be a non-empty list"),
        ({**RUNTIME, "capabilities": []}, "capabilities must be a non-empty list"),
        ({**RUNTIME, "device_ids": ["0"]}, "exactly one of count and device_ids"),
        ({"driver": "nvidia", "capabilities": ["gpu"]}, "exactly one of count and device_ids"),
        ({**RUNTIME, "count": 0}, 'count must be "all" or a positive integer'),
        ({**RUNTIME, "count": "two"}, 'count must be "all" or a positive integer'),
        ({**RUNTIME, "count": True}, 'count must be "all" or a positive integer'),
        ({**CDI, "device_ids": []}, "device_ids must be a non-empty list"),
        ({**CDI, "device_ids": ["all"]}, "fully qualified CDI names"),
        ({**RUNTIME, "option": {}}, "unknown keys: option"),
        ({**RUNTIME, "options": {"a": 1}}, "options must be a mapping of strings"),
    ],
)
def test_a_malformed_request_is_named(device, message):
    errors = gpu.aima_gpu_device_errors(device)
    assert any(message in error for error in errors), errors
    assert all(error.startswith("aima_worker_gpu_device") for error in errors), errors
    with pytest.raises(ValueError, match="aima_worker_gpu_device"):
        gpu.aima_gpu_device(device, "gpu", True)


# --- reading the reservation back from Docker ---


@pytest.mark.parametrize(
    ("requests", "expected"),
    [(RUNTIME_DOCKER, [RUNTIME]), (CDI_DOCKER, [CDI]), (None, []), ([], [])],
)
def test_docker_device_requests_read_back_in_the_published_form(requests, expected):
    assert gpu.aima_gpu_reservation(requests) == expected


def test_the_reservation_as_one_line():
    assert gpu.aima_gpu_reservation_text(CDI_DOCKER) == (
        "driver cdi: nvidia.com/gpu=all (capabilities gpu)"
    )
    assert gpu.aima_gpu_reservation_text(RUNTIME_DOCKER) == (
        "driver nvidia: count all (capabilities gpu)"
    )
    assert gpu.aima_gpu_reservation_text([]) == "none (the worker computes on the CPU)"


# --- rendered by the role, checked by `docker compose config` ---


@pytest.mark.parametrize(
    ("mode", "gpus"), [("runtime", "all"), ("cdi", "all"), ("runtime", ["0", "1"]), ("cdi", ["0"])]
)
def test_compose_renders_exactly_the_published_request(render, mode, gpus):
    published = toolkit.compose_device(mode, gpus)
    r = render(nvidia_toolkit_gpu_usable=True, nvidia_toolkit_compose_gpu_device=published)
    # The role's own template task ran `docker compose config --quiet` on it; the resolved model:
    worker = r.model("gpu")["services"][WORKER]
    assert len(devices(worker)) == 1
    resolved = devices(worker)[0]
    assert resolved["driver"] == published["driver"]
    assert resolved["capabilities"] == published["capabilities"]
    assert resolved.get("device_ids") == published.get("device_ids")
    # Compose resolves count "all" to -1, as Docker stores it.
    assert resolved.get("count") == (-1 if published.get("count") == "all" else None)
    # And the file says exactly what was published: no other device, no hard-coded driver.
    assert devices(r.compose_raw["services"][WORKER]) == [published]


def test_an_operator_request_wins_over_the_published_one(render):
    r = render(
        nvidia_toolkit_gpu_usable=True,
        nvidia_toolkit_compose_gpu_device=RUNTIME,
        aima_worker_gpu_device=CDI,
    )
    assert devices(r.compose_raw["services"][WORKER]) == [CDI]


def test_no_request_on_the_cpu(render):
    r = render(nvidia_toolkit_gpu_usable=False, nvidia_toolkit_compose_gpu_device=None)
    assert "deploy" not in r.compose_raw["services"][WORKER]
    assert '"driver"' not in r.compose_text and "reservations" not in r.compose_text


def test_without_toolkit_facts_gpu_takes_the_runtime_form(render):
    r = render(aima_worker_device="gpu", nvidia_toolkit_gpu_usable=True)
    assert devices(r.compose_raw["services"][WORKER]) == [RUNTIME]


# --- validated before any change ---


@pytest.mark.parametrize(
    ("device", "message", "stage"),
    [
        ({"count": "all", "capabilities": ["gpu"]}, "driver", "spec"),
        ({**RUNTIME, "device_ids": "0"}, "device_ids", "spec"),
        ({**RUNTIME, "device_ids": ["0"]}, "exactly one of count and device_ids", "assert"),
        ({**CDI, "device_ids": ["gpu0"]}, "fully qualified CDI names", "assert"),
    ],
)
def test_a_wrong_device_request_fails_before_any_change(tmp_path, device, message, stage):
    from tests.aima_stack.test_validate import run

    proc, out, stack = run(tmp_path, {"aima_worker_gpu_device": device})
    assert proc.returncode != 0, out
    assert "aima_worker_gpu_device" in out and message in out, out[-3000:]
    if stage == "spec":
        assert "Validating arguments against arg spec" in out
    else:
        assert "Check the GPU device request for the worker" in out
    assert not stack.exists(), "a change happened before validation failed"


def test_the_published_device_passes_the_role_validation(tmp_path):
    from tests.aima_stack.test_validate import run

    proc, out, _ = run(
        tmp_path,
        {"nvidia_toolkit_gpu_usable": True, "nvidia_toolkit_compose_gpu_device": CDI},
        tasks_from="validate_gpu.yml",
    )
    assert proc.returncode == 0, out[-3000:]
