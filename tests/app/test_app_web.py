"""The web page in a real headless Chromium (Debian's ``chromium`` package).

The first test dumps the page's DOM; the second drives the page over the DevTools protocol:
the page's own upload works, another site's form or script POST to the API is refused.
"""

from __future__ import annotations

import base64
import html
import json
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aima_testkit import image_bytes, wait_until
from aimakit.browser import Browser, chromium_binary


def _chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary: apt-get install chromium")
    return binary


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


# ---------------------------------------------------------------- driving the page
@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    binary = _chromium()
    with tempfile.TemporaryDirectory(prefix="aima-chromium-") as profile:
        b = Browser(binary, profile, tmp_path / "chromium.log")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def other_site() -> Iterator[dict[str, Any]]:
    """A second web server on another origin; tests put pages into the returned dict."""
    pages: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = str(pages.get(self.path, "<!doctype html><title>blank</title>")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # "localhost" is another site than "127.0.0.1" (the backend), not just another port
    pages["url"] = f"http://localhost:{server.server_address[1]}"
    try:
        yield pages
    finally:
        server.shutdown()
        server.server_close()


def _file_js(data: bytes, name: str) -> str:
    """JavaScript that builds a FileList holding one file, as a user's file pick would."""
    b64 = base64.b64encode(data).decode()
    return (f'(() => {{ const bytes = Uint8Array.from(atob("{b64}"), c => c.charCodeAt(0));'
            f' const dt = new DataTransfer();'
            f' dt.items.add(new File([bytes], {json.dumps(name)}, {{type: "image/png"}}));'
            f' return dt.files; }})()')


@pytest.mark.chromium
def test_page_upload_works_and_cross_site_posts_are_refused(
    live_backend: Any, browser: Browser, other_site: dict[str, Any],
    db: psycopg.Connection[Any],
) -> None:
    backend = live_backend.url
    # 1. the page's own upload (a same-origin fetch from app.js) goes through
    browser.goto(backend + "/")
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('file')")
    browser.evaluate(
        f"document.getElementById('file').files = {_file_js(image_bytes(seed=11), 'mine.png')};"
        " document.getElementById('upload-form').requestSubmit(); true"
    )
    status = browser.wait_for(
        "(t => /^(queued as|rejected|upload failed)/.test(t) && t)"
        "(document.getElementById('upload-status').textContent)"
    )
    assert status.startswith("queued as "), status
    assert db.execute("SELECT filename FROM jobs").fetchall() == [("mine.png",)]

    # 2. another site's page auto-submits a form with a file to the backend: refused
    other_site["/form"] = (
        "<!doctype html><form id=f method=post enctype=multipart/form-data"
        f' action="{backend}/api/jobs"><input type=file name=file id=file></form><script>'
        f"document.getElementById('file').files = {_file_js(image_bytes(seed=12), 'evil.png')};"
        " document.getElementById('f').submit();</script>"
    )
    browser.goto(other_site["url"] + "/form")
    shown = browser.wait_for(
        f"location.href.startsWith({json.dumps(backend)}) && document.readyState === 'complete'"
        " && document.body.innerText"
    )
    assert json.loads(shown)["error"] == "cross_site_request", shown

    # 3. the same from script: a no-cors fetch (a "simple" request, no preflight)
    browser.goto(other_site["url"] + "/")
    browser.wait_for("document.readyState === 'complete' && location.host.startsWith('localhost')")
    sent = browser.evaluate(
        f"(async () => {{ const form = new FormData();"
        f" form.append('file', {_file_js(image_bytes(seed=13), 'evil2.png')}[0]);"
        f" await fetch({json.dumps(backend + '/api/jobs')},"
        f" {{method: 'POST', mode: 'no-cors', body: form}}); return 'sent'; }})()"
    )
    assert sent == "sent"
    wait_until(lambda: live_backend.log_path.read_text().count("refused cross-site POST") >= 2,
               timeout=10, what="two refusals in the backend's log")
    assert db.execute("SELECT filename FROM jobs").fetchall() == [("mine.png",)]
