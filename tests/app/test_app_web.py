"""The web page in a real headless Chromium (Debian's ``chromium`` package)."""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from typing import Any

import httpx
import pytest
from aima_testkit import image_bytes

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary: apt-get install chromium")


def dump_dom(url: str, budget_ms: int = 3000) -> str:
    """Load the page, let its scripts run (virtual time), and return the resulting DOM."""
    binary = _chromium()
    with tempfile.TemporaryDirectory(prefix="aima-chromium-") as profile:
        proc = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
             f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True, text=True, timeout=90,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.chromium
def test_page_shows_the_job_list_from_the_backend(live_backend: Any) -> None:
    _chromium()
    with httpx.Client(base_url=live_backend.url, timeout=30) as http:
        names = ["sunset <img src=x onerror=alert(1)>.png", "cat.jpg"]
        first_resp = http.post(
            "/api/jobs", files={"file": (names[0], image_bytes("PNG", seed=1), "image/png")}
        )
        assert first_resp.status_code == 201, first_resp.text
        http.post("/api/jobs", files={"file": (names[1], image_bytes("JPEG", seed=2),
                                               "image/jpeg")})
    dom = dump_dom(live_backend.url + "/")
    assert 'id="job-rows"' in dom
    rows = dom.split('id="job-rows"', 1)[1]
    # the file names were rendered as text (escaped), newest first
    first, second = (html.escape(n, quote=False) for n in names[::-1])
    assert first in rows and second in rows
    assert rows.index(first) < rows.index(second)
    assert "<img src" not in rows
    assert "status-queued" in rows
    assert "(2)" in dom  # the total
    assert 'class="health ok"' in dom or 'class="health degraded"' not in dom
