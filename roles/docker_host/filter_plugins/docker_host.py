"""Filters for the docker_host role: the pure decisions, kept here so tests can call them."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any


def docker_host_merge_daemon(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge daemon.json layers, later ones winning; nested mappings merge key by key.

    A key set to None (YAML ``null``) in a later layer removes that key, so an operator can
    drop one of the project's defaults. Lists are replaced, not concatenated.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        if not isinstance(layer, Mapping):
            raise TypeError(f"daemon.json layers must be mappings, got {type(layer).__name__}")
        merged = _merge(merged, layer)
    return merged


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in over.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = _merge({}, value)
        else:
            result[key] = value
    return result


def docker_host_resolve_source(
    source: str, distro_packages_by_version: Mapping[str, Any], major_version: str | int
) -> str:
    """Turn docker_host_source (auto|distro|docker) into the path taken: distro or docker."""
    if source in ("distro", "docker"):
        return source
    if source != "auto":
        raise ValueError(f"docker_host_source must be auto, distro or docker, not {source!r}")
    return "distro" if str(major_version) in distro_packages_by_version else "docker"


def docker_host_apt_source(
    repo_url: str, distro: str, codename: str, arch: str, channel: str, keyring: str
) -> str:
    """The one-line apt source of Docker's repository, pinned to its key with signed-by."""
    url = f"{repo_url.rstrip('/')}/{distro}"
    return f"deb [arch={arch} signed-by={keyring}] {url} {codename} {channel}"


def docker_host_invalid_networks(sources: object) -> list[str]:
    """The entries of docker_host_allowed_sources that are not an IPv4/IPv6 address or network.

    Each comes back quoted, with the reason (e.g. "'10.0.0.5/24' (... has host bits set)"), for
    the role's assert. Accepted: single addresses and CIDR networks with the host bits clear;
    the host-side script's own parser (files/docker_allowlist.py) decides.
    """
    if not isinstance(sources, list):
        return [f"{sources!r} (not a list)"]
    parse_network = _allowlist_script().parse_network
    bad = []
    for entry in sources:
        try:
            parse_network(entry)
        except ValueError as exc:
            bad.append(f"{entry!r} ({exc})")
    return bad


def _allowlist_script() -> ModuleType:
    """files/docker_allowlist.py (stdlib only, installed on the host): the one parser of an
    allowed source, so that the role's check and the host's rules cannot disagree."""
    path = Path(__file__).resolve().parent.parent / "files" / "docker_allowlist.py"
    spec = importlib.util.spec_from_file_location("docker_host_allowlist_script", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "docker_host_merge_daemon": docker_host_merge_daemon,
            "docker_host_resolve_source": docker_host_resolve_source,
            "docker_host_apt_source": docker_host_apt_source,
            "docker_host_invalid_networks": docker_host_invalid_networks,
        }
