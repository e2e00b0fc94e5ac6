"""Filters for the docker_host role: the pure decisions, kept here so tests can call them."""

from __future__ import annotations

from collections.abc import Mapping
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


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "docker_host_merge_daemon": docker_host_merge_daemon,
            "docker_host_resolve_source": docker_host_resolve_source,
            "docker_host_apt_source": docker_host_apt_source,
        }
