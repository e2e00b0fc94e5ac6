"""Cross-site state-changing requests are refused (403 cross_site_request), reads are not.

The decision table of aima_backend.csrf first (a pure function of method, headers and the
connection's scheme), then the same rules through the real app and a real uvicorn backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from aima_backend.csrf import cross_site_refusal, normalise_origin
from aima_testkit import assert_no_internals, image_bytes

HOST = "aima.example"

# (id, method, headers, connection scheme, allowed)
TABLE: list[tuple[str, str, dict[str, str], str, bool]] = [
    # safe methods are never refused
    ("get-cross-site", "GET", {"sec-fetch-site": "cross-site"}, "http", True),
    ("head-foreign-origin", "HEAD", {"origin": "https://evil.example"}, "http", True),
    ("options-foreign-origin", "OPTIONS", {"origin": "https://evil.example"}, "http", True),
    # neither header: not a browser (curl, scripts)
    ("post-no-headers", "POST", {"host": HOST}, "http", True),
    ("delete-no-headers", "DELETE", {}, "http", True),
    # Sec-Fetch-Site decides when present
    ("post-same-origin", "POST", {"sec-fetch-site": "same-origin"}, "http", True),
    ("post-none", "POST", {"sec-fetch-site": "none"}, "http", True),
    ("post-same-origin-upper", "POST", {"sec-fetch-site": " Same-Origin "}, "http", True),
    ("post-same-site", "POST", {"sec-fetch-site": "same-site"}, "http", False),
    ("post-cross-site", "POST", {"sec-fetch-site": "cross-site"}, "http", False),
    ("post-empty-fetch-site", "POST", {"sec-fetch-site": ""}, "http", False),
    ("post-garbage-fetch-site", "POST", {"sec-fetch-site": "same-origin, x"}, "http", False),
    ("put-cross-site", "PUT", {"sec-fetch-site": "cross-site"}, "http", False),
    ("patch-cross-site", "PATCH", {"sec-fetch-site": "cross-site"}, "http", False),
    ("delete-cross-site", "DELETE", {"sec-fetch-site": "cross-site"}, "http", False),
    ("lowercase-method-cross-site", "post", {"sec-fetch-site": "cross-site"}, "http", False),
    ("fetch-site-wins-over-origin", "POST",
     {"sec-fetch-site": "same-origin", "origin": "https://evil.example", "host": HOST},
     "https", True),
    ("cross-site-with-matching-origin", "POST",
     {"sec-fetch-site": "cross-site", "origin": f"https://{HOST}", "host": HOST}, "https", False),
    # no Sec-Fetch-Site: Origin against scheme (X-Forwarded-Proto, else connection) + Host
    ("origin-matches", "POST", {"origin": f"http://{HOST}", "host": HOST}, "http", True),
    ("origin-matches-forwarded-https", "POST",
     {"origin": f"https://{HOST}", "host": HOST, "x-forwarded-proto": "https"}, "http", True),
    ("origin-http-but-forwarded-https", "POST",
     {"origin": f"http://{HOST}", "host": HOST, "x-forwarded-proto": "https"}, "http", False),
    ("origin-https-connection-https", "POST", {"origin": f"https://{HOST}", "host": HOST},
     "https", True),
    ("origin-https-connection-http", "POST", {"origin": f"https://{HOST}", "host": HOST},
     "http", False),
    ("forwarded-list-first-wins", "POST",
     {"origin": f"https://{HOST}", "host": HOST, "x-forwarded-proto": "https, http"}, "http",
     True),
    ("forwarded-garbage-falls-back", "POST",
     {"origin": f"https://{HOST}", "host": HOST, "x-forwarded-proto": "gopher"}, "https", True),
    ("default-port-in-host", "POST",
     {"origin": f"https://{HOST}", "host": f"{HOST}:443", "x-forwarded-proto": "https"}, "http",
     True),
    ("default-port-in-origin", "POST", {"origin": f"http://{HOST}:80", "host": HOST}, "http",
     True),
    ("origin-case-insensitive", "POST", {"origin": "HTTP://AIMA.Example", "host": HOST}, "http",
     True),
    ("same-port", "POST", {"origin": f"http://{HOST}:8443", "host": f"{HOST}:8443"}, "http",
     True),
    ("other-port", "POST", {"origin": f"http://{HOST}:8080", "host": f"{HOST}:8443"}, "http",
     False),
    ("ipv6-host", "POST", {"origin": "http://[::1]:8000", "host": "[::1]:8000"}, "http", True),
    ("ipv6-other-port", "POST", {"origin": "http://[::1]:9000", "host": "[::1]:8000"}, "http",
     False),
    ("foreign-origin", "POST", {"origin": "https://evil.example", "host": HOST}, "https", False),
    ("suffix-trick", "POST", {"origin": f"https://{HOST}.evil.example", "host": HOST}, "https",
     False),
    ("origin-null", "POST", {"origin": "null", "host": HOST}, "http", False),
    ("origin-null-upper", "POST", {"origin": "NULL", "host": HOST}, "http", False),
    ("origin-empty", "POST", {"origin": "", "host": HOST}, "http", False),
    ("origin-with-path", "POST", {"origin": f"http://{HOST}/", "host": HOST}, "http", False),
    ("origin-with-userinfo", "POST", {"origin": f"http://x@{HOST}", "host": HOST}, "http",
     False),
    ("origin-not-http", "POST", {"origin": f"file://{HOST}", "host": HOST}, "http", False),
    ("origin-without-host-header", "POST", {"origin": f"http://{HOST}"}, "http", False),
    ("delete-foreign-origin", "DELETE", {"origin": "https://evil.example", "host": HOST},
     "https", False),
]


@pytest.mark.parametrize(
    ("method", "headers", "scheme", "allowed"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE]
)
def test_decision_table(method: str, headers: dict[str, str], scheme: str, allowed: bool) -> None:
    reason = cross_site_refusal(method, headers, scheme)
    assert (reason is None) == allowed, reason
    if reason is not None:
        assert reason.strip()


@pytest.mark.parametrize(
    ("origin", "normalised"),
    [
        ("https://aima.example", "https://aima.example"),
        ("https://aima.example:443", "https://aima.example"),
        ("http://aima.example:0080", "http://aima.example"),
        ("https://aima.example:8443", "https://aima.example:8443"),
        ("http://[::1]", "http://[::1]"),
        ("http://aima.example:", None),
        ("http://aima.example:x", None),
        ("http://", None),
        ("aima.example", None),
        ("ws://aima.example", None),
        ("http://a b", None),
    ],
)
def test_normalise_origin(origin: str, normalised: str | None) -> None:
    assert normalise_origin(origin) == normalised


# ---------------------------------------------------------------- through the app
def _nothing_stored(db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str]) -> None:
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    assert rds.xlen("aima:jobs") == 0
    assert [p for p in Path(env["AIMA_MEDIA_DIR"]).rglob("*") if p.is_file()] == []


def _post_file(client: Any, headers: dict[str, str]) -> Any:
    return client.post(
        "/api/jobs", files={"file": ("pic.png", image_bytes(seed=1), "image/png")},
        headers=headers,
    )


def _assert_refused(resp: Any) -> None:
    assert resp.status_code == 403, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["error"] == "cross_site_request", body
    assert body["detail"]
    assert resp.headers.get("x-content-type-options") == "nosniff"
    assert_no_internals(resp.text)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://other.testserver"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "https://testserver"},  # right host, wrong scheme
    ],
    ids=["cross-site", "same-site", "foreign-origin", "null-origin", "scheme-mismatch"],
)
def test_cross_site_upload_is_refused_and_stores_nothing(
    client: Any, db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str],
    headers: dict[str, str],
) -> None:
    _assert_refused(_post_file(client, headers))
    _nothing_stored(db, rds, env)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
        {"Sec-Fetch-Site": "none"},
        {"Origin": "http://testserver"},
        {"Origin": "https://testserver", "X-Forwarded-Proto": "https"},
    ],
    ids=["no-headers", "same-origin", "user-typed", "matching-origin", "behind-https-proxy"],
)
def test_same_origin_and_non_browser_uploads_pass(
    client: Any, db: psycopg.Connection[Any], headers: dict[str, str]
) -> None:
    resp = _post_file(client, headers)
    assert resp.status_code == 201, resp.text
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


def test_other_unsafe_methods_are_refused_before_routing(client: Any) -> None:
    cross = {"Sec-Fetch-Site": "cross-site"}
    for method in ("PUT", "PATCH", "DELETE"):
        _assert_refused(client.request(method, "/api/jobs", headers=cross))
        _assert_refused(client.request(method, "/", headers={"Origin": "https://evil.example"}))
    # without the cross-site marks the same requests reach the router: 405, not 403
    assert client.delete("/api/jobs").status_code == 405


def test_cross_site_reads_still_work(client: Any) -> None:
    """A link from another site may open the page and its reads (nothing changes state)."""
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    assert client.get("/", headers=cross).status_code == 200
    assert client.get("/api/jobs", headers=cross).status_code == 200
    assert client.get("/api/health", headers=cross).status_code == 200


def test_through_uvicorn_behind_a_proxy(
    live_backend: Any, db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str]
) -> None:
    """The real server: the proxy's X-Forwarded-Proto and the client's Host make the origin."""
    host = "aima.example"
    files = {"file": ("pic.png", image_bytes(seed=2), "image/png")}
    with httpx.Client(base_url=live_backend.url, timeout=30) as http:
        evil = http.post("/api/jobs", files=files, headers={
            "Host": host, "X-Forwarded-Proto": "https", "Origin": "https://evil.example"})
        _assert_refused(evil)
        assert "server" not in evil.headers
        plain = http.post("/api/jobs", files=files, headers={
            "Host": host, "X-Forwarded-Proto": "https", "Origin": f"http://{host}"})
        _assert_refused(plain)
        _nothing_stored(db, rds, env)
        ok = http.post("/api/jobs", files=files, headers={
            "Host": host, "X-Forwarded-Proto": "https", "Origin": f"https://{host}",
            "Sec-Fetch-Site": "same-origin"})
        assert ok.status_code == 201, ok.text
        ok2 = http.post("/api/jobs", files=files, headers={
            "Host": host, "X-Forwarded-Proto": "https", "Origin": f"https://{host}"})
        assert ok2.status_code == 201, ok2.text
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (2,)
    assert "refused cross-site POST /api/jobs" in live_backend.log_path.read_text()
