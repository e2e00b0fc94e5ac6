"""Filter for aima_stack's image archives: which archives hold an image the host lacks, from one
docker_image_info call for all of them (a call per image was a round trip each). Kept here, not
in Jinja, so that tests/aima_stack/test_image_filters.py calls it directly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _normal(reference: str) -> str:
    """A reference as Docker lists it in RepoTags/RepoDigests: no default registry or library/
    prefix, and an implicit :latest where neither tag nor digest is given."""
    for prefix in ("docker.io/", "index.docker.io/"):
        if reference.startswith(prefix):
            reference = reference[len(prefix):]
            if reference.startswith("library/"):
                reference = reference[len("library/"):]
            break
    last = reference.rsplit("/", 1)[-1]
    if "@" not in reference and ":" not in last:
        reference += ":latest"
    return reference


def aima_archives_missing(archives: Iterable[Mapping[str, Any]],
                          images: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The ARCHIVES ({name, path}) whose image `name` is none of IMAGES (docker_image_info's
    `images`: inspect data with Id, RepoTags, RepoDigests), in their order."""
    present: set[str] = set()
    for image in images or []:
        present.add(str(image.get("Id", "")))
        present.update(_normal(str(ref)) for ref in image.get("RepoTags") or [])
        present.update(_normal(str(ref)) for ref in image.get("RepoDigests") or [])
    return [archive for archive in archives
            if _normal(str(archive["name"])) not in present and archive["name"] not in present]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"aima_archives_missing": aima_archives_missing}
