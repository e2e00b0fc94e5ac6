"""docker_host's decisions: daemon.json merging, install source, Docker's apt source line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, load_filter_plugin

filters = load_filter_plugin("docker_host", "docker_host")
ROLE = REPO_ROOT / "roles" / "docker_host"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def distro_vars(distribution: str) -> dict:
    return yaml.safe_load((ROLE / "vars" / f"{distribution}.yml").read_text())


def test_defaults_alone_give_the_cis_settings():
    """The CIS ones, item by item, are in test_daemon_defaults.py."""
    merged = filters.docker_host_merge_daemon(DEFAULTS["docker_host_daemon_defaults"], {}, {})
    assert merged == {
        "icc": False,
        "log-level": "info",
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "3"},
        "no-new-privileges": True,
        "live-restore": True,
        "userland-proxy": False,
        "experimental": False,
    }


def test_contributed_runtime_is_added_once_and_operator_options_win():
    contributed = {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
    operator = {"log-opts": {"max-size": "50m"}, "default-runtime": "runc"}
    merged = filters.docker_host_merge_daemon(
        DEFAULTS["docker_host_daemon_defaults"], contributed, operator
    )
    assert merged["runtimes"] == contributed["runtimes"]
    # Nested merge: the operator's max-size wins, the default max-file stays.
    assert merged["log-opts"] == {"max-size": "50m", "max-file": "3"}
    assert merged["default-runtime"] == "runc"
    # Merging the same layers twice gives the same document (no flip-flop, no duplicates).
    again = filters.docker_host_merge_daemon(merged, contributed, operator)
    assert again == merged


def test_null_removes_a_default_and_lists_are_replaced():
    base = {"live-restore": True, "dns": ["192.0.2.1"], "log-opts": {"max-file": "3"}}
    merged = filters.docker_host_merge_daemon(base, {"live-restore": None, "dns": ["192.0.2.2"]})
    assert merged == {"dns": ["192.0.2.2"], "log-opts": {"max-file": "3"}}


def test_merge_does_not_mutate_its_inputs():
    base = {"log-opts": {"max-file": "3"}}
    filters.docker_host_merge_daemon(base, {"log-opts": {"max-size": "1m"}})
    assert base == {"log-opts": {"max-file": "3"}}


def test_non_mapping_layer_is_rejected():
    with pytest.raises(TypeError, match="mappings"):
        filters.docker_host_merge_daemon({}, ["not", "a", "dict"])


@pytest.mark.parametrize(
    ("distribution", "major", "expected"),
    [
        ("Debian", "12", "docker"),
        ("Debian", "13", "distro"),
        ("Ubuntu", "22", "docker"),
        ("Ubuntu", "24", "distro"),
    ],
)
def test_auto_source_follows_where_the_distro_ships_compose_v2(distribution, major, expected):
    by_version = distro_vars(distribution)["__docker_host_distro_packages_by_version"]
    assert filters.docker_host_resolve_source("auto", by_version, major) == expected


def test_distro_packages_include_a_compose_v2_plugin():
    key = "__docker_host_distro_packages_by_version"
    assert "docker-compose" in distro_vars("Debian")[key]["13"]
    assert "docker-compose-v2" in distro_vars("Ubuntu")[key]["24"]


@pytest.mark.parametrize("source", ["distro", "docker"])
def test_explicit_source_is_kept(source):
    assert filters.docker_host_resolve_source(source, {}, "12") == source


def test_unknown_source_is_an_error():
    with pytest.raises(ValueError, match="docker_host_source"):
        filters.docker_host_resolve_source("bogus", {}, "12")


@pytest.mark.parametrize(
    ("distribution", "codename", "arch"),
    [
        ("Debian", "bookworm", "amd64"),
        ("Debian", "trixie", "arm64"),
        ("Ubuntu", "jammy", "amd64"),
        ("Ubuntu", "noble", "arm64"),
    ],
)
def test_apt_source_line_per_supported_distro(distribution, codename, arch):
    repo_distro = distro_vars(distribution)["__docker_host_repo_distro"]
    line = filters.docker_host_apt_source(
        DEFAULTS["docker_host_repo_url"] + "/",
        repo_distro,
        codename,
        arch,
        DEFAULTS["docker_host_repo_channel"],
        DEFAULTS["docker_host_repo_keyring"],
    )
    options, url, suite, component = line.removeprefix("deb ").rsplit(" ", 3)
    assert options == f"[arch={arch} signed-by=/etc/apt/keyrings/docker.asc]"
    assert url == f"{DEFAULTS['docker_host_repo_url']}/{distribution.lower()}"
    assert "//" not in url.split("://", 1)[1]
    assert (suite, component) == (codename, "stable")


def test_every_supported_distribution_has_a_vars_file():
    supported = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["__docker_host_supported"]
    for distribution in supported:
        assert Path(ROLE / "vars" / f"{distribution}.yml").is_file()


def test_invalid_networks_come_back_with_their_reason_and_valid_ones_do_not():
    bad = filters.docker_host_invalid_networks(
        ["10.99.1.0/24", "10.99.1.5/24", "2001:db8::/48", "example.org", "fe80::1%eth0"]
    )
    assert bad == [
        "'10.99.1.5/24' (host bits set: the network is 10.99.1.0/24)",
        "'example.org' (not an IPv4/IPv6 address or CIDR network)",
        "'fe80::1%eth0' (an IPv6 zone (%...) cannot be matched by a firewall rule)",
    ]
    assert filters.docker_host_invalid_networks(DEFAULTS["docker_host_allowed_sources"]) == []
    assert filters.docker_host_invalid_networks("10.0.0.0/8") == ["'10.0.0.0/8' (not a list)"]
