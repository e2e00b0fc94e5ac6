"""Unit tests of the nvidia_toolkit role's filter plugin (parsing of the detection commands)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PLUGIN = (
    Path(__file__).resolve().parents[2] / "roles/nvidia_toolkit/filter_plugins/nvidia_toolkit.py"
)


def _load():
    spec = importlib.util.spec_from_file_location("nvidia_toolkit_filters", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


filters = _load()

# What /sys/bus/pci/devices lists on a GPU server: a host bridge, virtio devices, an H100
# (3D controller 0x0302), a desktop GPU (VGA 0x0300) with its HDMI audio function (0x0403),
# an NVSwitch bridge (0x0680).
PCI_SCAN = """\
0000:00:00.0 0x8086 0x060000
0000:00:02.0 0x1af4 0x018000
0000:17:00.0 0x10de 0x030200
0000:65:00.0 0x10DE 0x030000
0000:65:00.1 0x10de 0x040300
0000:9a:00.0 0x10de 0x068000
"""

# nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version --format=csv,noheader,nounits
SMI_TWO_GPUS = """\
0, NVIDIA H100 80GB HBM3, GPU-5b1e0c4c-7a0f-3b64-2c4b-1f0e8a9c2d11, 81559, 550.54.15
1, NVIDIA GeForce RTX 4090, GPU-0d3f6a2e-91b1-44c5-b7a0-6c2f2e6a8b99, 24564, 550.54.15
"""


def test_pci_gpus_keeps_only_nvidia_display_functions():
    found = filters.pci_gpus(PCI_SCAN)
    assert [gpu["address"] for gpu in found] == ["0000:17:00.0", "0000:65:00.0"]
    assert found[0] == {"address": "0000:17:00.0", "vendor": "0x10de", "class": "0x030200"}


@pytest.mark.parametrize("text", ["", None, "garbage\n\n", "0000:00:00.0 0x8086 0x030000\n"])
def test_pci_gpus_none_found(text):
    assert filters.pci_gpus(text) == []


def test_pci_gpus_accepts_a_list_of_lines():
    assert len(filters.pci_gpus(PCI_SCAN.splitlines())) == 2


def test_smi_gpus_parses_two_gpus():
    gpus = filters.smi_gpus(SMI_TWO_GPUS)
    assert gpus == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-5b1e0c4c-7a0f-3b64-2c4b-1f0e8a9c2d11",
            "memory_mib": 81559,
            "driver_version": "550.54.15",
        },
        {
            "index": 1,
            "name": "NVIDIA GeForce RTX 4090",
            "uuid": "GPU-0d3f6a2e-91b1-44c5-b7a0-6c2f2e6a8b99",
            "memory_mib": 24564,
            "driver_version": "550.54.15",
        },
    ]


def test_smi_gpus_with_units_and_not_available_memory():
    gpus = filters.smi_gpus(
        "0, Tesla T4, GPU-1, 15360 MiB, 535.183.01\n1, Some vGPU, GPU-2, [N/A], 535.183.01\n"
    )
    assert [gpu["memory_mib"] for gpu in gpus] == [15360, None]


def test_smi_gpus_name_with_a_comma():
    (gpu,) = filters.smi_gpus("3, Odd, Name, GPU-3, 1024, 570.86.10")
    assert (gpu["index"], gpu["name"], gpu["uuid"]) == (3, "Odd, Name", "GPU-3")


@pytest.mark.parametrize("text", ["", None, "\n  \n"])
def test_smi_gpus_empty(text):
    assert filters.smi_gpus(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        "x, NVIDIA H100, GPU-1, 81559, 550.54.15",
    ],
)
def test_smi_gpus_rejects_what_is_not_the_csv(text):
    with pytest.raises(ValueError, match="nvidia_toolkit_smi_gpus"):
        filters.smi_gpus(text)


def test_filter_module_exports_every_filter():
    assert set(filters.FilterModule().filters()) == {
        "nvidia_toolkit_pci_gpus",
        "nvidia_toolkit_smi_gpus",
        "nvidia_toolkit_decide",
        "nvidia_toolkit_wiring",
        "nvidia_toolkit_compose_device",
    }
