"""The fault suite's payload builders (molecule/faults/tests/faultlib.py) make what they claim:
a valid PNG is valid, the bomb really claims 144 Mpx, a WAV is a WAV, multipart is well formed."""

from __future__ import annotations

import importlib.util
import io
import sys

import pytest
from PIL import Image

from tests.conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location(
    "faultlib", REPO_ROOT / "molecule" / "faults" / "tests" / "faultlib.py"
)
assert _spec and _spec.loader
faultlib = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("faultlib", faultlib)
_spec.loader.exec_module(faultlib)


@pytest.mark.parametrize("noise", [False, True])
def test_png_is_valid_and_unique_per_seed(noise: bool) -> None:
    a, b = faultlib.png(seed=1, noise=noise), faultlib.png(seed=2, noise=noise)
    assert a != b
    with Image.open(io.BytesIO(a)) as img:
        img.load()
        assert img.size == (48, 32) and img.mode == "RGB"


def test_noise_png_is_incompressible() -> None:
    assert len(faultlib.png(width=600, height=600, seed=5, noise=True)) > 1_000_000


def test_png_bomb_claims_many_pixels_in_few_bytes() -> None:
    bomb = faultlib.png_bomb()
    assert len(bomb) < 200_000
    # the header only; Pillow itself calls it a bomb
    with pytest.warns(Image.DecompressionBombWarning), Image.open(io.BytesIO(bomb)) as img:
        assert img.size[0] * img.size[1] > 100_000_000


def test_wav_has_riff_header() -> None:
    data = faultlib.wav()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def test_multipart_is_well_formed() -> None:
    body, ctype = faultlib.multipart("a.png", b"DATA", "image/png")
    boundary = ctype.split("boundary=")[1].encode()
    assert body.startswith(b"--" + boundary + b"\r\n")
    assert body.endswith(b"--" + boundary + b"--\r\n")
    assert b'name="file"; filename="a.png"' in body and b"\r\n\r\nDATA\r\n" in body
