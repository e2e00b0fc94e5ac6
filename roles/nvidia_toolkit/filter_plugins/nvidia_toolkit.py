"""Filters for the nvidia_toolkit role: parse what the GPU detection commands print.

nvidia_toolkit_pci_gpus: lines "ADDRESS VENDOR CLASS" (from /sys/bus/pci/devices/*/{vendor,class})
    -> list of {"address", "vendor", "class"} for NVIDIA (0x10de) display controllers
    (class 0x03xxxx: VGA, XGA, 3D controller). NVIDIA audio functions, USB controllers and
    NVSwitch bridges are ignored.

nvidia_toolkit_smi_gpus: output of
    nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version \
               --format=csv,noheader,nounits
    -> list of {"index": int, "name": str, "uuid": str, "memory_mib": int or None,
                "driver_version": str}.
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


class FilterModule:
    """nvidia_toolkit role filters."""

    def filters(self):
        return {
            "nvidia_toolkit_pci_gpus": pci_gpus,
            "nvidia_toolkit_smi_gpus": smi_gpus,
        }
