"""The backend API against the real PostgreSQL and Redis: uploads, reads, paging, health."""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from aima_common import streams
from aima_common.db import Database
from aima_testkit import assert_no_internals, image_bytes, stream_job_ids, upload


def _media_files(media: Path) -> list[Path]:
    return [p for p in media.rglob("*") if p.is_file()]


def test_upload_creates_job_row_file_and_message(
    client: Any, db: psycopg.Connection[Any], rds: redis.Redis, env: dict[str, str]
) -> None:
    data = image_bytes("PNG", seed=1)
    resp = upload(client, data, "holiday photo.png", "image/png")
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert set(job) >= {
        "id", "filename", "content_type", "size", "sha256", "status", "attempts", "device",
        "result", "error", "created_at", "started_at", "finished_at", "timings",
    }
    assert job["status"] == "queued"
    assert job["filename"] == "holiday photo.png"
    assert job["content_type"] == "image/png"
    assert job["size"] == len(data)
    assert job["sha256"] == hashlib.sha256(data).hexdigest()
    assert job["attempts"] == 0 and job["result"] is None
    uuid.UUID(job["id"])
    row = db.execute(
        "SELECT storage_name, enqueued_at FROM jobs WHERE id = %s", (job["id"],)
    ).fetchone()
    assert row is not None and row[1] is not None
    stored = Path(env["AIMA_MEDIA_DIR"]) / row[0]
    assert stored.read_bytes() == data
    assert row[0] == f"{job['id']}.png"  # never derived from the client's filename
    assert stream_job_ids(rds) == [job["id"]]
    assert _media_files(Path(env["AIMA_MEDIA_DIR"])) == [stored]
    assert client.get(f"/api/jobs/{job['id']}").json() == job


def test_supported_and_other_media_types(client: Any) -> None:
    cases = [
        (image_bytes("JPEG"), "a.jpg", "image/jpeg", "image/jpeg"),
        (image_bytes("WEBP"), "a.webp", "image/webp", "image/webp"),
        (image_bytes("PNG", mode="RGBA"), "a.png", None, "image/png"),
        (image_bytes("GIF"), "a.gif", "image/gif", "image/gif"),
        (b"ID3\x04\x00" + b"\x00" * 100, "song.mp3", "audio/mpeg", "audio/mpeg"),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100, "clip.mp4", "video/mp4", "video/mp4"),
        (image_bytes("JPEG", seed=3), "b.jpeg", "application/octet-stream", "image/jpeg"),
        (image_bytes("JPEG", seed=4), "c.jpg", "image/jpg", "image/jpeg"),
    ]
    for data, name, declared, stored_type in cases:
        resp = upload(client, data, name, declared)
        assert resp.status_code == 201, (name, resp.text)
        assert resp.json()["content_type"] == stored_type


def test_list_is_newest_first_and_paged(client: Any) -> None:
    ids = [upload(client, image_bytes(seed=i), f"f{i}.png").json()["id"] for i in range(5)]
    page = client.get("/api/jobs", params={"limit": 2, "offset": 0}).json()
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 0
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    page2 = client.get("/api/jobs?limit=2&offset=2").json()
    assert [j["id"] for j in page2["items"]] == ids[::-1][2:4]
    assert client.get("/api/jobs?offset=10").json()["items"] == []
    default = client.get("/api/jobs").json()
    assert default["limit"] == 20 and len(default["items"]) == 5


def test_health_ok_counts_jobs_and_workers(client: Any, rds: redis.Redis) -> None:
    upload(client, image_bytes(seed=1))
    upload(client, image_bytes(seed=2))
    resp = client.get("/api/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body == {
        "status": "ok", "database": "ok", "queue": "ok",
        "jobs": {"queued": 2, "running": 0, "done": 0, "failed": 0}, "workers": 0,
    }
    rds.xreadgroup("aima-workers", "w-live", {"aima:jobs": ">"}, count=1)
    assert client.get("/api/health").json()["workers"] == 1


def test_health_during_a_database_outage_names_no_internals(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Only ok/unavailable per part; the reason goes to the server's log, not to the client."""
    backend = client.app.state.backend
    real = backend.db
    backend.db = Database("postgresql://aima:hunter2-not-real@127.0.0.1:1/aima")
    try:
        with caplog.at_level(logging.WARNING, logger="aima_backend"):
            health = client.get("/api/health")
            jobs = client.get("/api/jobs")
    finally:
        backend.db.close()
        backend.db = real
    assert health.status_code == 503
    assert health.json() == {
        "status": "degraded", "database": "unavailable", "queue": "ok",
        "jobs": None, "workers": 0,
    }
    assert_no_internals(health.text, "hunter2-not-real")
    assert jobs.status_code == 503 and jobs.json()["error"] == "database_unavailable"
    assert_no_internals(jobs.text, "hunter2-not-real")
    # the operator still learns why, from the log
    assert "health: database unavailable: OperationalError" in caplog.text
    assert client.get("/api/health").status_code == 200


def test_health_during_a_queue_outage_names_no_internals(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = client.app.state.backend
    real = backend.redis
    backend.redis = streams.connect_redis("redis://:hunter2-not-real@127.0.0.1:1/0")
    try:
        with caplog.at_level(logging.WARNING, logger="aima_backend"):
            health = client.get("/api/health")
    finally:
        backend.redis.close()
        backend.redis = real
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "degraded" and body["database"] == "ok"
    assert body["queue"] == "unavailable" and body["workers"] is None
    assert body["jobs"] == {"queued": 0, "running": 0, "done": 0, "failed": 0}
    assert_no_internals(health.text, "hunter2-not-real")
    assert "health: queue unavailable:" in caplog.text


def test_unexpected_error_is_a_plain_500(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from aima_backend import service as service_mod
    from aima_backend.app import create_app
    from fastapi.testclient import TestClient

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("boom in /opt/app/secret.py: SELECT * FROM jobs")

    monkeypatch.setattr(service_mod, "list_jobs", broken)
    with (
        TestClient(create_app(settings), raise_server_exceptions=False) as c,
        caplog.at_level(logging.ERROR, logger="aima_backend"),
    ):
        resp = c.get("/api/jobs")
    assert resp.status_code == 500
    assert resp.json() == {
        "error": "internal_error",
        "detail": "unexpected server error; retry later or tell the operator",
    }
    assert_no_internals(resp.text)
    assert "boom in /opt/app/secret.py" in caplog.text  # logged with its stack


def test_no_server_header_or_version(live_backend: Any) -> None:
    with httpx.Client(base_url=live_backend.url, timeout=30) as http:
        for path in ("/", "/api/health", "/api/jobs/nope", "/nothing"):
            resp = http.get(path)
            assert "server" not in resp.headers, (path, resp.headers)
            assert resp.headers.get("x-content-type-options") == "nosniff"
        assert "uvicorn" not in http.get("/api/jobs/nope").text.lower()


def test_openapi_and_docs(client: Any) -> None:
    spec = client.get("/api/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/health"} <= set(spec["paths"])
    body = spec["paths"]["/api/jobs"]["post"]["requestBody"]["content"]
    assert "file" in body["multipart/form-data"]["schema"]["properties"]
    assert client.get("/api/docs").status_code == 200


def test_web_page_is_served(client: Any) -> None:
    resp = client.get("/")
    assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
    assert 'id="jobs"' in resp.text
    assert "default-src 'self'" in resp.headers["content-security-policy"]
    assert client.get("/app.js").status_code == 200


def test_unknown_routes_are_json(client: Any) -> None:
    for path in ("/api/nothing", "/nothing.html"):
        resp = client.get(path)
        assert resp.status_code == 404
        assert resp.json() == {"error": "not_found", "detail": "no such resource"}
    resp = client.delete("/api/jobs")
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"
    assert "GET" in resp.headers["allow"]  # Starlette names the first matching route's
    assert_no_internals(resp.text)


def test_proxy_error_pages_give_the_proxy_error_shape(client: Any) -> None:
    """The bodies the Traefik engine sends for the errors it raises itself (errors middleware)."""
    reply = client.get("/api/proxy-error/401")
    assert reply.status_code == 200
    assert reply.json() == {"error": "proxy_error", "detail": "401 Unauthorized"}
    assert reply.headers["www-authenticate"] == 'Basic realm="AIMA"'
    reply = client.get("/api/proxy-error/502")
    assert reply.json() == {"error": "proxy_error", "detail": "502 Bad Gateway"}
    assert "www-authenticate" not in reply.headers
    for status in ("200", "302", "999", "abc"):
        reply = client.get(f"/api/proxy-error/{status}")
        assert reply.status_code in (404, 400), (status, reply.status_code)
        assert set(reply.json()) == {"error", "detail"}, reply.json()
