#!/usr/bin/env python3
"""Pin the third-party images by content digest: the one way to move to newer images.

The references live in roles/aima_stack/defaults/main.yml (and, the same strings, in the role's
meta/argument_specs.yml) and in the app Dockerfiles' ``ARG BASE_IMAGE=``. For each reference
this asks the local Docker engine, which knows the registries, to pull ``name:tag`` and reads
the digest it recorded (the multi-platform index), then writes ``name:tag@sha256:<digest>``
in place of the old reference in every file that holds it.

    scripts/pin_images.py            # show what would change (exit 1 when something would)
    scripts/pin_images.py --write    # rewrite the files; review with git diff, run the tests
    scripts/pin_images.py --tag caddy=2.10.3-alpine --write   # move to a new tag as well

Needs a Docker engine with registry access (not available in the testbed: there the images
come from archives). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FILES = (
    "roles/aima_stack/defaults/main.yml",
    "roles/aima_stack/meta/argument_specs.yml",
    "app/backend/Dockerfile",
    "app/worker/Dockerfile",
)
# Where the references are: the role's image variables and the Dockerfiles' base image.
REFERENCE = re.compile(
    r"""(?:^aima_(?:postgres|redis|caddy|traefik)_image:\s*"|^ARG BASE_IMAGE=)"""
    r"""(?P<ref>[^"\s]+)""",
    re.M,
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class PinError(RuntimeError):
    """Something the operator has to look at; the message says what."""


@dataclass(frozen=True)
class Ref:
    name: str
    tag: str
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Ref:
        base, _, digest = text.partition("@")
        slash = base.rfind("/")
        colon = base.rfind(":")
        if colon <= slash:
            raise PinError(f"{text!r} names no tag: pin a tag first (name:tag)")
        return cls(base[:colon], base[colon + 1 :], digest or None)

    @property
    def tagged(self) -> str:
        return f"{self.name}:{self.tag}"

    def __str__(self) -> str:
        return self.tagged + (f"@{self.digest}" if self.digest else "")


def references(root: Path = REPO_ROOT) -> dict[str, list[Path]]:
    """Every image reference in FILES -> the files that hold it."""
    found: dict[str, list[Path]] = {}
    for rel in FILES:
        path = root / rel
        if path.is_file():
            for match in REFERENCE.finditer(path.read_text()):
                found.setdefault(match["ref"], []).append(path)
    return found


def docker(*args: str) -> str:
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise PinError("no docker command: run this where Docker can reach the registry") from exc
    if proc.returncode != 0:
        raise PinError(f"docker {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _repository(name: str) -> str:
    """The repository part Docker writes in RepoDigests (no ``docker.io/library/`` prefix)."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def resolve(ref: Ref) -> str:
    """The digest Docker records for ``name:tag`` after pulling it."""
    docker("pull", "--quiet", ref.tagged)
    digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}",
                                ref.tagged) or "null") or []
    repo = _repository(ref.name)
    for entry in digests:
        name, _, digest = entry.partition("@")
        if _repository(name) == repo and DIGEST.match(digest):
            return digest
    raise PinError(f"docker recorded no digest for {ref.tagged} (RepoDigests: {digests})")


def plan(found: dict[str, list[Path]], new_tags: dict[str, str]) -> dict[str, str]:
    """Old reference -> new reference, for those that change."""
    changes = {}
    for text in found:
        ref = Ref.parse(text)
        short = ref.name.rsplit("/", 1)[-1]
        tag = new_tags.get(ref.name, new_tags.get(short, ref.tag))
        target = Ref(ref.name, tag, None)
        pinned = str(Ref(ref.name, tag, resolve(target)))
        if pinned != text:
            changes[text] = pinned
    return changes


def apply(changes: dict[str, str], root: Path = REPO_ROOT) -> list[Path]:
    """Replace each old reference by its new one wherever FILES hold it (the role's argument
    specs repeat the defaults)."""
    written = []
    for rel in FILES:
        path = root / rel
        if not path.is_file():
            continue
        text = original = path.read_text()
        for old, new in changes.items():
            text = re.sub(re.escape(old) + r'(?=["\s]|$)', new, text)
        if text != original:
            path.write_text(text)
            written.append(path)
    return written


def parse_tags(values: Iterable[str]) -> dict[str, str]:
    tags = {}
    for value in values:
        name, sep, tag = value.partition("=")
        if not sep or not name or not tag:
            raise PinError(f"--tag {value!r}: expected NAME=TAG, e.g. caddy=2.10.3-alpine")
        tags[name] = tag
    return tags


def main(argv: Sequence[str] | None = None, root: Path = REPO_ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", action="store_true", help="rewrite the files")
    parser.add_argument("--tag", action="append", default=[], metavar="NAME=TAG",
                        help="move an image to another tag (NAME: e.g. caddy or pytorch/pytorch)")
    args = parser.parse_args(argv)
    try:
        found = references(root)
        if not found:
            raise PinError("no image references found (has the layout changed?)")
        changes = plan(found, parse_tags(args.tag))
    except PinError as exc:
        print(f"pin_images: {exc}", file=sys.stderr)
        return 2
    for old, new in changes.items():
        print(f"{old}\n  -> {new}")
    if not changes:
        print("every image is pinned to the digest its tag has now")
        return 0
    if args.write:
        for path in apply(changes, root):
            print(f"wrote {path.relative_to(root)}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
