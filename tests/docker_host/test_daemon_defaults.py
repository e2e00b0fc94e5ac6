"""docker_host's daemon.json defaults: the CIS Docker Benchmark v1.6.0 section 2 settings, what
the merge makes of them with the other layers, and the README table that documents them."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import REPO_ROOT, load_filter_plugin

filters = load_filter_plugin("docker_host", "docker_host")
ROLE = REPO_ROOT / "roles" / "docker_host"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())[
    "docker_host_daemon_defaults"
]
README = (ROLE / "README.md").read_text()
NVIDIA_RUNTIME = {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}


def merge(contributed=None, operator=None) -> dict:
    return filters.docker_host_merge_daemon(DEFAULTS, contributed or {}, operator or {})


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("2.2", "icc", False),
        ("2.3", "log-level", "info"),
        ("2.13", "log-driver", "json-file"),
        ("2.13", "log-opts", {"max-size": "10m", "max-file": "3"}),
        ("2.14", "no-new-privileges", True),
        ("2.15", "live-restore", True),
        ("2.16", "userland-proxy", False),
        ("2.18", "experimental", False),
    ],
)
def test_cis_item_is_in_the_default_daemon_json(item, key, value):
    assert merge()[key] == value, item


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("2.4", "iptables"),  # Docker's default (true) stays: the allow-list needs it
        ("2.5", "insecure-registries"),
        ("2.6", "storage-driver"),  # Docker picks overlay2
        ("2.7", "hosts"),  # no TCP socket, no TLS to configure
        ("2.8", "default-ulimits"),
        ("2.9", "userns-remap"),
        ("2.10", "cgroup-parent"),
        ("2.11", "storage-opts"),
        ("2.12", "authorization-plugins"),
        ("2.17", "seccomp-profile"),  # Docker's built-in profile
    ],
)
def test_cis_item_left_to_docker_is_not_in_the_default_daemon_json(item, key):
    assert key not in merge(), item


def test_every_default_key_is_in_the_readme_cis_table():
    rows = [line for line in README.splitlines() if line.startswith("| 2.")]
    for key in DEFAULTS:
        assert any(f"`{key}`" in row.split("|")[2] for row in rows), key


def test_the_contributed_nvidia_runtime_keeps_every_cis_setting():
    merged = merge(NVIDIA_RUNTIME)
    assert merged == {**DEFAULTS, **NVIDIA_RUNTIME}


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_a_null_from_the_operator_drops_each_default(key):
    merged = merge(operator={key: None})
    assert key not in merged
    assert merged == {k: v for k, v in DEFAULTS.items() if k != key}


def test_the_operator_overrides_win_over_the_defaults():
    operator = {
        "userland-proxy": True,
        "icc": True,
        "log-driver": "local",
        "log-opts": {"max-size": "50m"},
        "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 65536, "Hard": 65536}},
    }
    merged = merge(NVIDIA_RUNTIME, operator)
    assert merged["userland-proxy"] is True
    assert merged["icc"] is True
    assert merged["log-driver"] == "local"
    # Nested: the operator's max-size, the default max-file.
    assert merged["log-opts"] == {"max-size": "50m", "max-file": "3"}
    assert merged["default-ulimits"] == operator["default-ulimits"]
    assert merged["runtimes"] == NVIDIA_RUNTIME["runtimes"]
    assert merged["no-new-privileges"] is True


def test_the_rendered_defaults_are_stable_json():
    """What the template writes (to_nice_json sorts keys): the same text on every run."""
    first = json.dumps(merge(NVIDIA_RUNTIME), indent=2, sort_keys=True)
    again = json.dumps(
        filters.docker_host_merge_daemon(merge(NVIDIA_RUNTIME)), indent=2, sort_keys=True
    )
    assert first == again
