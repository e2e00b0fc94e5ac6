"""The roles' own filters, loaded next to the playbooks (for the installed collection).

Each role keeps its filters in roles/<role>/filter_plugins/ (one copy of the code). Ansible loads
that directory for a role run from a roles path (the checkout), but not for a role inside a
collection, and Jinja resolves a filter's short name only from such directories, never from the
collection. Ansible also loads the filter_plugins/ directory next to every playbook it reads,
collection playbooks included: this file loads every role's filter files by path and hands their
filters to Ansible, so the roles' short filter names (e.g. ``docker_host_invalid_networks``)
resolve when the collection's playbooks run (aima.deploy.site, provision, stack, validate). In the
checkout the same functions are registered twice (here and from the role), from the same files.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"  # playbooks/filter_plugins/ -> roles/

_LOADED: dict[Path, ModuleType] = {}


def _load(path: Path) -> ModuleType:
    if path not in _LOADED:
        name = f"aima_deploy_role_filters_{path.parent.parent.name}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LOADED[path] = module
    return _LOADED[path]


def role_filter_files() -> list[Path]:
    """Every role's filter plugin file, in a stable order."""
    return sorted(p for p in ROLES_DIR.glob("*/filter_plugins/*.py") if not p.name.startswith("_"))


class FilterModule:
    """Ansible entry point: the filters of every role in the collection."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        merged: dict[str, Callable[..., Any]] = {}
        for path in role_filter_files():
            for name, func in _load(path).FilterModule().filters().items():
                if name in merged and merged[name] is not func:
                    raise RuntimeError(f"filter {name!r} is defined twice (last in {path})")
                merged[name] = func
        return merged
