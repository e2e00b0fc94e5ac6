"""Headless Chromium driven over the DevTools protocol on a pipe (no extra packages).

With ``--remote-debugging-pipe`` Chromium reads commands from fd 3 and writes answers and
events to fd 4, one JSON object per message, each ended by a NUL byte. One page target,
attached in flat mode, is all the tests need. Events can be handled (``on``), which is how a
test answers an HTTP login challenge the way a user types into the browser's dialog.

Stdlib only: the app tests and the Molecule verifiers use it alike (aimakit.browser).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
Handler = Callable[[dict[str, Any]], None]


def chromium_binary() -> str | None:
    """The first Chromium on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one attached page."""

    def __init__(self, binary: str, profile: str, log: Path, *extra_args: str) -> None:
        to_chrome, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome = os.pipe()
        # the child's ends, at fds >= 10 so that moving them to 3 and 4 cannot clobber them
        r = fcntl.fcntl(to_chrome, fcntl.F_DUPFD_CLOEXEC, 10)
        w = fcntl.fcntl(from_chrome, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome)
        os.close(from_chrome)
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--no-default-browser-check",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", *extra_args,
                "about:blank"]
        shim = (f"import os, sys; os.dup2({r}, 3); os.dup2({w}, 4); os.close({r});"
                f" os.close({w}); os.execv(sys.argv[1], sys.argv[1:])")
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", shim, *argv], pass_fds=(r, w),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        os.close(r)
        os.close(w)
        self._next_id = 0
        self._buffer = b""
        self._replies: dict[int, dict[str, Any]] = {}
        self._handlers: dict[str, Handler] = {}
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]

    def on(self, method: str, handler: Handler) -> None:
        """Call handler(params) for every event `method` (e.g. Fetch.authRequired)."""
        self._handlers[method] = handler

    def post(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> int:
        """Send a command without waiting for its answer (for event handlers)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send a command and return its result (events meanwhile go to their handlers)."""
        wanted = self.post(method, params, session)
        deadline = time.monotonic() + timeout
        while wanted not in self._replies:
            self._pump(deadline, method, timeout)
        reply = self._replies.pop(wanted)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def _pump(self, deadline: float, method: str, timeout: float) -> None:
        """Dispatch the buffered messages; when there are none, read more (until deadline)."""
        if b"\0" in self._buffer:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    self._replies[message["id"]] = message
                elif message.get("method") in self._handlers:
                    self._handlers[message["method"]](message.get("params", {}))
            # answers to post() that nobody waits for: keep only the recent ones
            if len(self._replies) > 256:
                self._replies = {k: v for k, v in self._replies.items() if k > self._next_id - 64}
            return
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
            raise AssertionError(f"chromium did not answer {method} within {timeout:.0f} s")
        chunk = os.read(self._from_chrome, 1 << 16)
        if not chunk:
            raise AssertionError(f"chromium exited while answering {method}")
        self._buffer += chunk

    def login_with(self, user: str, password: str) -> list[str]:
        """Answer HTTP login challenges with these credentials, as a user would in the
        browser's dialog. Returns the list of URLs that asked (filled as it happens)."""
        asked: list[str] = []

        def paused(params: dict[str, Any]) -> None:
            self.post("Fetch.continueRequest", {"requestId": params["requestId"]}, self.session)

        def auth(params: dict[str, Any]) -> None:
            asked.append(params["request"]["url"])
            self.post("Fetch.continueWithAuth", {
                "requestId": params["requestId"],
                "authChallengeResponse": {
                    "response": "ProvideCredentials", "username": user, "password": password,
                },
            }, self.session)

        self.on("Fetch.requestPaused", paused)
        self.on("Fetch.authRequired", auth)
        self.send("Fetch.enable", {"handleAuthRequests": True, "patterns": [{"urlPattern": "*"}]},
                  self.session)
        return asked

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        reply = self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        }, self.session)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression[:80]}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll until the expression is truthy (across navigations, which reset the page)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except RuntimeError as exc:  # the page is between two documents
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s: {expression} (last: {last!r})")

    def close(self) -> None:
        with contextlib.suppress(AssertionError, RuntimeError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
