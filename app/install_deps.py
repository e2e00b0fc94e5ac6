"""Build step of both app images: a venv in /opt/venv with the image's locked requirements.

    python3 install_deps.py REQUIREMENTS [EXTRA_CA]

The venv sees the base image's site packages (PyTorch on the worker's base). REQUIREMENTS is a
lock generated from pyproject.toml (`make lock`), installed with --require-hashes. EXTRA_CA, when
the file exists and is not empty, is added to pip's CA bundle for this build only (a
TLS-inspecting proxy, the offline testbed); it does not stay in the image.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

VENV = Path("/opt/venv")
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def main(requirements: str, extra_ca: str = "") -> None:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)],
                   check=True)
    python = str(VENV / "bin" / "python")
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as work:
        extra = Path(extra_ca) if extra_ca else None
        if extra is not None and extra.is_file() and extra.stat().st_size > 0:
            pip_bundle = subprocess.run(
                [python, "-c", "import pip._vendor.certifi as c; print(c.where())"],
                check=True, capture_output=True, text=True).stdout.strip()
            bundle = Path(work) / "ca-bundle.pem"
            parts = [Path(pip_bundle), *([SYSTEM_CA] if SYSTEM_CA.is_file() else []), extra]
            bundle.write_text("".join(p.read_text() for p in parts))
            env["PIP_CERT"] = str(bundle)
        subprocess.run([python, "-m", "pip", "install", "--require-hashes", "--no-deps",
                        "-r", requirements], check=True, env=env)


if __name__ == "__main__":
    main(*sys.argv[1:3])
