"""Filters for aima_stack's GPU contract with nvidia_toolkit, and for reading it back from Docker.

The contract: nvidia_toolkit publishes nvidia_toolkit_compose_gpu_device, ONE Compose device request
(an entry of deploy.resources.reservations.devices), in one of two forms:

    runtime  {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
             {"driver": "nvidia", "device_ids": ["0", "GPU-..."], "capabilities": ["gpu"]}
    cdi      {"driver": "cdi", "device_ids": ["nvidia.com/gpu=all"], "capabilities": ["gpu"]}

aima_stack takes it as aima_worker_gpu_device and renders it as it is (compose.yaml.j2).

aima_gpu_device_errors: what is wrong with a device request; [] when all is well.
aima_gpu_device: the device request the worker reserves, or None (it computes on the CPU).
aima_gpu_reservation: a container's HostConfig.DeviceRequests (docker inspect) -> device requests
    in the Compose form above, so that what Docker holds compares with what was published.
aima_gpu_reservation_text: the same, as one line for the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KEYS = {"driver", "count", "device_ids", "capabilities", "options"}
WORKER_DEVICES = ("auto", "gpu", "cpu")
NAME = "aima_worker_gpu_device"


def _str_list(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(item, str) and item.strip() for item in value)
    )


def _present(device: Mapping) -> dict:
    """DEVICE without the keys whose value is None (unset suboptions)."""
    return {key: value for key, value in device.items() if value is not None}


def aima_gpu_device_errors(device: Any, name: str = NAME) -> list[str]:
    """What is wrong with DEVICE as a Compose device request; [] when all is well.

    A driver (a non-empty string), capabilities (non-empty list of strings), and exactly one of
    count ("all" or a positive integer) and device_ids (non-empty list of strings); options, if
    any, a mapping of strings.
    """
    if not isinstance(device, Mapping):
        return [f"{name} must be a mapping (a Compose device request), got {device!r}"]
    device = _present(device)
    errors = []
    unknown = sorted(set(device) - KEYS)
    if unknown:
        errors.append(f"{name} has unknown keys: {', '.join(map(str, unknown))}")
    driver = device.get("driver")
    if not isinstance(driver, str) or not driver.strip():
        errors.append(f"{name}.driver must be a non-empty string (nvidia, cdi), got {driver!r}")
    if not _str_list(device.get("capabilities")):
        errors.append(f"{name}.capabilities must be a non-empty list of strings, e.g. [gpu]")
    has_count, has_ids = "count" in device, "device_ids" in device
    if has_count == has_ids:
        errors.append(f"{name} needs exactly one of count and device_ids")
    if has_count:
        count = device["count"]
        if count != "all" and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            errors.append(f'{name}.count must be "all" or a positive integer, got {count!r}')
    if has_ids and not _str_list(device["device_ids"]):
        errors.append(f"{name}.device_ids must be a non-empty list of strings")
    if has_ids and driver == "cdi" and _str_list(device["device_ids"]):
        unqualified = [
            i for i in device["device_ids"] if "=" not in i or "/" not in i.split("=")[0]
        ]
        if unqualified:
            errors.append(
                f"{name}.device_ids of driver cdi must be fully qualified CDI names"
                f" (vendor.com/class=name, e.g. nvidia.com/gpu=all): {', '.join(unqualified)}"
            )
    options = device.get("options", {})
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in options.items()
    ):
        errors.append(f"{name}.options must be a mapping of strings to strings")
    return errors


def aima_gpu_device(device: Any, worker_device: str, gpu_usable: Any = False) -> dict | None:
    """The device request the worker reserves: DEVICE when the worker gets the GPU, else None.

    aima_worker_device gpu: always (validate_gpu.yml has checked that the GPU is usable);
    auto: when nvidia_toolkit found the GPU usable; cpu: never. Raises on a malformed DEVICE,
    so that a wrong request never reaches the compose file.
    """
    if worker_device not in WORKER_DEVICES:
        raise ValueError(
            f"aima_worker_device must be one of {', '.join(WORKER_DEVICES)}, got {worker_device!r}"
        )
    if worker_device == "cpu" or (worker_device == "auto" and not gpu_usable):
        return None
    if device is None:
        raise ValueError(
            f"aima_worker_device={worker_device} reserves the GPU, but {NAME} is empty"
            " (nvidia_toolkit published no device request)"
        )
    errors = aima_gpu_device_errors(device)
    if errors:
        raise ValueError("; ".join(errors))
    device = _present(device)
    return {
        key: device[key]
        for key in ("driver", "count", "device_ids", "capabilities", "options")
        if key in device and not (key == "options" and not device[key])
    }


def aima_gpu_reservation(device_requests: Any) -> list[dict]:
    """HostConfig.DeviceRequests of a container, in the Compose form of the contract.

    Docker stores a Compose `count: all` as Count -1 and the capabilities as a list of lists
    (alternatives); Compose writes one alternative. A request with device IDs has Count 0.
    """
    found = []
    for request in device_requests or []:
        device: dict[str, Any] = {"driver": request.get("Driver") or ""}
        ids = request.get("DeviceIDs") or []
        count = request.get("Count") or 0
        if ids:
            device["device_ids"] = list(ids)
        if count:
            device["count"] = "all" if count < 0 else count
        device["capabilities"] = [cap for alt in request.get("Capabilities") or [] for cap in alt]
        if request.get("Options"):
            device["options"] = dict(request["Options"])
        found.append(device)
    return found


def aima_gpu_reservation_text(device_requests: Any) -> str:
    """One line for the operator: which GPU device request the container holds."""
    devices = aima_gpu_reservation(device_requests)
    if not devices:
        return "none (the worker computes on the CPU)"
    parts = []
    for device in devices:
        which = ", ".join(device.get("device_ids", [])) or f"count {device.get('count', '?')}"
        caps = ", ".join(device["capabilities"]) or "-"
        parts.append(f"driver {device['driver'] or '(default)'}: {which} (capabilities {caps})")
    return "; ".join(parts)


class FilterModule:
    """aima_stack's GPU contract filters."""

    def filters(self):
        return {
            "aima_gpu_device_errors": aima_gpu_device_errors,
            "aima_gpu_device": aima_gpu_device,
            "aima_gpu_reservation": aima_gpu_reservation,
            "aima_gpu_reservation_text": aima_gpu_reservation_text,
        }
