"""Filters for the nvidia_toolkit role: parse what the GPU detection commands print, decide what
to do on a host, and build the wiring the role publishes. Kept here, not in Jinja, so that
tests/nvidia_toolkit/ calls them directly.

nvidia_toolkit_pci_gpus: lines "ADDRESS VENDOR CLASS" (from /sys/bus/pci/devices/*/{vendor,class})
    -> list of {"address", "vendor", "class"} for NVIDIA (0x10de) display controllers
    (class 0x03xxxx: VGA, XGA, 3D controller). NVIDIA audio functions, USB controllers and
    NVSwitch bridges are ignored.

nvidia_toolkit_smi_gpus: output of
    nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version \
               --format=csv,noheader,nounits
    -> list of {"index": int, "name": str, "uuid": str, "memory_mib": int or None,
                "driver_version": str}.

nvidia_toolkit_decide: the detection result and the settings -> {"action", "missing"}:
    action is install | skip | remove | driver; missing lists what the host lacks (for messages).

nvidia_toolkit_wiring: the decision -> what the role publishes: {"wired", "gpu_usable",
    "docker_daemon_options", "compose_gpu_device"}.

nvidia_toolkit_compose_device: the Docker mode and the GPU selection -> the Compose device request
    for deploy.resources.reservations.devices (the contract aima_stack renders as it is):
      runtime: {"driver": "nvidia", "count": "all" | "device_ids": [...], "capabilities": ["gpu"]}
      cdi:     {"driver": "cdi", "device_ids": ["nvidia.com/gpu=all" | "nvidia.com/gpu=<id>", ...],
                "capabilities": ["gpu"]}
"""

from __future__ import annotations

import re

NVIDIA_PCI_VENDOR = "0x10de"
DISPLAY_CLASS_PREFIX = "0x03"

_NOT_AVAILABLE = {"", "[n/a]", "n/a", "[not supported]", "not supported", "[unknown error]"}


def _lines(text):
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        return [str(line) for line in text]
    return str(text).splitlines()


def pci_gpus(text):
    """Return the NVIDIA display-class PCI functions listed in TEXT."""
    found = []
    for line in _lines(text):
        fields = line.split()
        if len(fields) < 3:
            continue
        address, vendor, pci_class = fields[0], fields[1].lower(), fields[2].lower()
        if vendor == NVIDIA_PCI_VENDOR and pci_class.startswith(DISPLAY_CLASS_PREFIX):
            found.append({"address": address, "vendor": vendor, "class": pci_class})
    return found


def _memory_mib(value):
    value = value.strip()
    if value.lower() in _NOT_AVAILABLE:
        return None
    match = re.match(r"^(\d+)(?:\s*MiB)?$", value, re.IGNORECASE)
    return int(match.group(1)) if match else None


def smi_gpus(text):
    """Parse nvidia-smi's CSV (noheader; with or without nounits) into a list of GPU dicts."""
    gpus = []
    for line in _lines(text):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 5:
            raise ValueError(
                f"nvidia_toolkit_smi_gpus: expected 5 fields, got {len(fields)}: {line!r}"
            )
        # A GPU name could contain a comma: index is first, the last three are fixed.
        index, uuid, memory, driver = fields[0], fields[-3], fields[-2], fields[-1]
        name = ", ".join(fields[1:-3])
        if not index.isdigit():
            raise ValueError(f"nvidia_toolkit_smi_gpus: GPU index is not a number: {line!r}")
        gpus.append(
            {
                "index": int(index),
                "name": name,
                "uuid": uuid,
                "memory_mib": _memory_mib(memory),
                "driver_version": driver,
            }
        )
    return gpus


STATES = ("auto", "present", "absent")
MODES = ("runtime", "cdi")
CDI_KIND = "nvidia.com/gpu"
GPU_ID_RE = re.compile(r"^(?:\d+(?::\d+)?|(?:GPU|MIG)-[0-9A-Za-z-]+)$")

_NO_GPU = "an NVIDIA GPU on the PCI bus (no device with vendor 0x10de and a display class)"
_DRIVER_AFTER_INSTALL = (
    "; the driver packages were installed by this run, the kernel module loads after a reboot"
    " (reboot, or set nvidia_toolkit_driver_reboot: true)"
)
_NO_TOOLKIT = (
    "the NVIDIA Container Toolkit (nvidia-container-toolkit is not installed and"
    " nvidia_toolkit_manage_packages is false)"
)


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def decide(
    state,
    gpu_present,
    driver_usable,
    manage_packages=True,
    installed=False,
    install_driver=False,
    driver_attempted=False,
    driver_problem="nvidia-smi did not answer",
):
    """What the role does on this host: {"action": install|skip|remove|driver, "missing": [...]}.

    - absent: remove, always.
    - a GPU without a usable driver, with the opt-in driver install (and packages managed), and no
      install tried in this run yet: driver (install the driver, then detect and decide again).
    - present: install; the role fails before any change when "missing" is not empty.
    - auto: install when the GPU, the driver and the toolkit (or the means to install it) are there,
      else skip.
    """
    _choice("nvidia_toolkit_state", state, STATES)
    gpu_present, driver_usable = bool(gpu_present), bool(driver_usable)
    toolkit_available = bool(manage_packages) or bool(installed)
    missing = []
    if not gpu_present:
        missing.append(_NO_GPU)
    if not driver_usable:
        missing.append(
            f"a usable NVIDIA driver ({driver_problem})"
            + (_DRIVER_AFTER_INSTALL if driver_attempted else "")
        )
    if not toolkit_available:
        missing.append(_NO_TOOLKIT)
    if state == "absent":
        action = "remove"
    elif (
        gpu_present
        and not driver_usable
        and install_driver
        and manage_packages
        and not driver_attempted
    ):
        action = "driver"
    elif state == "present" or (gpu_present and driver_usable and toolkit_available):
        action = "install"
    else:
        action = "skip"
    return {"action": action, "missing": missing}


def compose_device(mode, gpus="all"):
    """The Compose device request that gives a container the GPUs GPUS ("all", or a list of
    indices / UUIDs as nvidia-smi names them) through MODE ("runtime" or "cdi")."""
    _choice("nvidia_toolkit_docker_mode", mode, MODES)
    if gpus == "all":
        ids = None
    elif isinstance(gpus, (list, tuple)) and gpus:
        ids = [str(gpu).strip() for gpu in gpus]
        bad = [gpu for gpu in ids if not GPU_ID_RE.match(gpu)]
        if bad:
            raise ValueError(
                "nvidia_toolkit_compose_gpus: not a GPU index or UUID: " + ", ".join(bad)
            )
        if len(set(ids)) != len(ids):
            raise ValueError("nvidia_toolkit_compose_gpus lists a GPU twice")
    else:
        raise ValueError(
            f'nvidia_toolkit_compose_gpus must be "all" or a non-empty list, got {gpus!r}'
        )
    if mode == "runtime":
        selection = {"count": "all"} if ids is None else {"device_ids": ids}
        return {"driver": "nvidia", **selection, "capabilities": ["gpu"]}
    names = ["all"] if ids is None else ids
    return {
        "driver": "cdi",
        "device_ids": [f"{CDI_KIND}={name}" for name in names],
        "capabilities": ["gpu"],
    }


def daemon_options(mode, runtime_path="nvidia-container-runtime"):
    """The daemon.json fragment MODE needs (docker_host merges it recursively)."""
    _choice("nvidia_toolkit_docker_mode", mode, MODES)
    if mode == "runtime":
        return {"runtimes": {"nvidia": {"path": str(runtime_path), "args": []}}}
    return {"features": {"cdi": True}}


def wiring(
    action,
    installed,
    gpu_present,
    driver_usable,
    mode,
    runtime_path="nvidia-container-runtime",
    gpus="all",
):
    """What the role publishes after ACTION.

    Docker is wired when the toolkit was installed by this run, or when auto skipped on a host whose
    toolkit is installed (a driver gone for a moment must not flip-flop daemon.json). The GPU is
    usable when it is present, its driver answers and Docker is wired; only then is there a Compose
    device request (else None).
    """
    wired = action == "install" or (action == "skip" and bool(installed))
    usable = bool(gpu_present) and bool(driver_usable) and wired
    return {
        "wired": wired,
        "gpu_usable": usable,
        "docker_daemon_options": daemon_options(mode, runtime_path) if wired else {},
        "compose_gpu_device": compose_device(mode, gpus) if usable else None,
    }


class FilterModule:
    """nvidia_toolkit role filters."""

    def filters(self):
        return {
            "nvidia_toolkit_pci_gpus": pci_gpus,
            "nvidia_toolkit_smi_gpus": smi_gpus,
            "nvidia_toolkit_decide": decide,
            "nvidia_toolkit_wiring": wiring,
            "nvidia_toolkit_compose_device": compose_device,
        }
