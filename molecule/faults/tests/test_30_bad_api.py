"""Bad requests through the proxy: 4xx with a reason, no job, no file anywhere but the volume.

The requests go over HTTPS with the login (faultlib.Api.send: a raw, TLS-wrapped socket), so
that each reaches the backend; bad logins and cross-site requests are refused before it."""

from __future__ import annotations

import base64
import json
import re

import faultlib as f
import pytest

PNG = f.png(seed=99)
LIMIT = 4 * 1024 * 1024  # aima_max_upload_bytes in molecule.yml
MP = "multipart/form-data; boundary=aimaFaultsBoundary7MA4YWxk"


def upload(name: str | bytes | None, data: bytes, ctype: str = "image/png", **kw) -> dict:
    body, content_type = f.multipart(name, data, ctype, **kw)
    return {"method": "POST", "path": "/api/jobs", "body": body,
            "headers": {"Content-Type": content_type}}


def post(body: bytes, content_type: str | None, **kw) -> dict:
    headers = {"Content-Type": content_type} if content_type else {}
    return {"method": "POST", "path": "/api/jobs", "body": body, "headers": headers, **kw}


def get(path: str, method: str = "GET") -> dict:
    return {"method": method, "path": path}


_two_parts = (f.multipart("a.png", PNG)[0].rsplit(b"--aimaFaultsBoundary7MA4YWxk--", 1)[0]
              + f.multipart("b.png", PNG)[0])

# (id, request, accepted statuses, error code the backend must name or None)
CASES = [
    ("empty-body", post(b"", MP), {400}, None),
    ("empty-file", upload("empty.png", b""), {400}, "empty_file"),
    ("oversized-declared-length", upload("big.png", PNG + b"\0" * (LIMIT + 200_000)), {413},
     "too_large"),
    ("oversized-chunked", {**upload("big.png", PNG + b"\0" * (LIMIT + 200_000)), "chunked": True},
     {413}, "too_large"),
    ("oversized-beyond-proxy-limit", {**upload("huge.png", PNG + b"\0" * (LIMIT * 2)),
                                      "chunked": True}, {413}, None),
    ("corrupt-png", upload("corrupt.png", PNG[:40] + b"\xde\xad" * 500), {422}, "invalid_image"),
    ("decompression-bomb", upload("bomb.png", f.png_bomb()), {422}, "invalid_image"),
    ("plain-text", upload("notes.txt", b"just some text\n" * 50, "text/plain"), {415},
     "unsupported_media_type"),
    ("html-as-png", upload("page.png", b"<html><script>alert(1)</script></html>"), {415},
     "unsupported_media_type"),
    ("svg-script", upload("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
                          "image/svg+xml"), {415}, "unsupported_media_type"),
    ("elf-binary", upload("tool.png", b"\x7fELF\x02\x01\x01" + b"\0" * 200), {415},
     "unsupported_media_type"),
    ("png-declared-as-wav", upload("sound.wav", PNG, "audio/wav"), {415}, "content_type_mismatch"),
    ("wav-declared-as-jpeg", upload("photo.jpg", f.wav(), "image/jpeg"), {415},
     "content_type_mismatch"),
    ("json-not-multipart", post(b'{"file": "x"}', "application/json"), {415},
     "unsupported_media_type"),
    ("no-content-type", post(b"abc", None), {415}, "unsupported_media_type"),
    ("multipart-without-boundary", post(f.multipart("a.png", PNG)[0], "multipart/form-data"),
     {415}, "unsupported_media_type"),
    ("no-file-part", upload(None, PNG, field_name="other"), {400}, "missing_file"),
    ("file-part-without-filename", upload(None, PNG), {400}, "missing_file"),
    ("two-file-parts", post(_two_parts, MP), {400}, "invalid_multipart"),
    ("truncated-multipart", post(f.multipart("a.png", PNG)[0][:-40], MP), {400}, None),
    ("huge-part-header", upload("a.png", PNG, extra_part_headers=b"X-Junk: " + b"A" * 1_048_576
                                + b"\r\n"), {400, 413, 431}, None),
    ("many-part-headers", upload("a.png", PNG, extra_part_headers=b"".join(
        b"X-H%d: v\r\n" % i for i in range(20_000))), {400, 413, 431}, None),
    ("huge-request-header", {**get("/api/health"), "headers": {"X-Big": "B" * 200_000}},
     {400, 431}, None),
    ("giant-request-header", {**get("/api/health"), "headers": {"X-Big": "B" * 2_000_000}},
     {400, 431}, None),
    ("filename-dotdot", upload("../../../../etc/passwd.png", PNG), {400}, "invalid_filename"),
    ("filename-absolute", upload("/etc/cron.d/evil.png", PNG), {400}, "invalid_filename"),
    ("filename-backslash", upload("..\\..\\windows\\evil.png", PNG), {400}, "invalid_filename"),
    ("filename-subdir", upload("sub/evil.png", PNG), {400}, "invalid_filename"),
    ("filename-dotdot-only", upload("..", PNG), {400}, "invalid_filename"),
    ("filename-control-chars", upload(b"evil\x01\x1b[31m.png", PNG), {400}, "invalid_filename"),
    ("filename-too-long", upload("e" * 300 + ".png", PNG), {400}, "invalid_filename"),
    ("filename-rfc5987-dotdot", post(
        b"--aimaFaultsBoundary7MA4YWxk\r\nContent-Disposition: form-data; name=\"file\"; "
        b"filename*=UTF-8''..%2F..%2Fetc%2Fevil.png\r\nContent-Type: image/png\r\n\r\n"
        + PNG + b"\r\n--aimaFaultsBoundary7MA4YWxk--\r\n", MP), {400}, None),
    ("job-id-traversal", get("/api/jobs/..%2f..%2fetc%2fpasswd"), {404}, "not_found"),
    ("job-id-garbage", get("/api/jobs/%00%ff"), {400, 404}, None),
    ("static-traversal", get("/../../../etc/passwd"), {400, 404}, None),
    ("static-traversal-encoded", get("/%2e%2e/%2e%2e/etc/passwd"), {400, 404}, None),
    ("static-traversal-slashes", get("/..%2f..%2f..%2fetc%2fpasswd"), {400, 404}, None),
    ("list-limit-zero", get("/api/jobs?limit=0"), {400}, "invalid_parameter"),
    ("list-limit-text", get("/api/jobs?limit=all"), {400}, "invalid_parameter"),
    ("list-offset-negative", get("/api/jobs?offset=-1"), {400}, "invalid_parameter"),
    ("delete-jobs", get("/api/jobs", "DELETE"), {405}, "method_not_allowed"),
]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


PROXY_401 = {"error": "proxy_error", "detail": "401 Unauthorized"}

# Refused before the application sees them: bad logins (401 from the proxy, exactly its JSON)
# and cross-site requests with the right login (403 from the backend). {ip}, {user} and
# {password} are filled in at run time. (id, request, anonymous client, status)
REFUSALS = [
    ("auth-bearer-scheme", {**upload("r.png", PNG), "headers": {
        "Content-Type": MP, "Authorization": "Bearer {password}"}}, True, 401),
    ("auth-basic-not-base64", {**get("/api/jobs"), "headers": {
        "Authorization": "Basic !!not*base64!!"}}, True, 401),
    ("auth-basic-without-colon", {**get("/api/jobs"), "headers": {
        "Authorization": "Basic {b64_no_colon}"}}, True, 401),
    ("auth-basic-empty", {**get("/api/jobs"), "headers": {"Authorization": "Basic "}}, True, 401),
    ("auth-basic-user-only", {**get("/api/jobs"), "headers": {
        "Authorization": "Basic {b64_user_only}"}}, True, 401),
    ("auth-basic-nul-in-user", {**get("/api/jobs"), "headers": {
        "Authorization": "Basic {b64_nul_user}"}}, True, 401),
    ("auth-basic-huge", {**get("/api/jobs"), "headers": {
        "Authorization": "Basic " + "QUFB" * 1500}}, True, 401),
    ("anonymous-oversized-chunked-upload", {**upload("big.png", PNG + b"\0" * (LIMIT * 2)),
                                            "chunked": True}, True, 401),
    ("anonymous-delete", get("/api/jobs", "DELETE"), True, 401),
    ("anonymous-static-traversal", get("/%2e%2e/%2e%2e/etc/passwd"), True, 401),
    ("cross-site-origin-null", {**upload("r.png", PNG), "headers": {
        "Content-Type": MP, "Origin": "null"}}, False, 403),
    ("cross-site-same-site", {**upload("r.png", PNG), "headers": {
        "Content-Type": MP, "Sec-Fetch-Site": "same-site"}}, False, 403),
    ("cross-site-http-origin", {**upload("r.png", PNG), "headers": {
        "Content-Type": MP, "Origin": "http://{ip}"}}, False, 403),
    ("cross-site-other-port", {**upload("r.png", PNG), "headers": {
        "Content-Type": MP, "Origin": "https://{ip}:8443"}}, False, 403),
    ("cross-site-lookalike-host", {**upload("r.png", PNG), "headers": {
        "Content-Type": MP, "Origin": "https://{ip}.evil.example"}}, False, 403),
    ("cross-site-fetch-site-wins", {**upload("r.png", PNG), "headers": {
        "Content-Type": MP, "Origin": "https://{ip}", "Sec-Fetch-Site": "cross-site"}},
     False, 403),
    ("cross-site-put", {**upload("r.png", PNG), "method": "PUT", "headers": {
        "Content-Type": MP, "Origin": "https://evil.example"}}, False, 403),
    ("cross-site-delete", {**get("/api/jobs", "DELETE"), "headers": {
        "Origin": "https://evil.example"}}, False, 403),
]


def backend_fs() -> list[str]:
    """The backend container's own file system changes (everything but the volumes), sorted:
    `docker diff` lists them in no fixed order."""
    return sorted(f.docker("diff", f.container("aima-backend")).splitlines())


def escaped_files() -> str:
    find = "find / -xdev \\( -name '*evil.png' -o -name 'passwd.png' \\) -print 2>/dev/null"
    return f.out(
        f"{find} || true; "
        f"docker exec {f.container('aima-backend')} sh -c \"{find}\" || true"
    )


@pytest.fixture(scope="module")
def before() -> dict:
    return {
        "jobs": f.sql("SELECT count(*) AS n FROM jobs")[0]["n"],
        "media": f.media_checksums(),
        "fs": backend_fs(),
        "backend": f.state("aima-backend")["id"],
    }


@pytest.mark.parametrize(("case", "req", "statuses", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_4xx_with_a_reason(
    case: str, req: dict, statuses: set, code: str | None, api: f.Api, before: dict,
    tally: f.Tally,
) -> None:
    tally.bad(f"api: {case}")
    reply = api.send(req["method"], req["path"], req.get("body", b""), req.get("headers"),
                     chunked=req.get("chunked", False))
    if reply.status == 0 and req.get("chunked"):
        # No answer at all: with a chunked body over the proxy's limit, Caddy now and then reads
        # the whole body and closes without a word (4 of 500 tries of 8 MB on the demo target,
        # each after the last byte had gone out, the socket read while sending). Nothing was
        # accepted either way (the checks below `before` compare jobs and media); the answer
        # this test wants is asked for once more.
        reply = api.send(req["method"], req["path"], req.get("body", b""), req.get("headers"),
                         chunked=True)
    assert reply.status in statuses, (case, reply.status_line, reply.body[:300])
    body = reply.json()
    if isinstance(body, dict) and "error" in body:
        assert body.get("detail"), (case, body)
        if code:
            assert body["error"] == code, (case, body)
    else:
        assert code is None, f"{case}: expected the error {code}, got {reply.body[:200]!r}"
        # the proxy or the HTTP server answered: still a reason, in words
        assert reply.body.strip(), f"{case}: {reply.status_line} with an empty body"
    assert "root:" not in reply.body.decode(errors="replace"), "a file's content leaked"


@pytest.mark.parametrize(("case", "req", "anonymous", "status"), REFUSALS,
                         ids=[c[0] for c in REFUSALS])
def test_bad_login_or_cross_site_request_is_refused(
    case: str, req: dict, anonymous: bool, status: int, api: f.Api, before: dict,
    tally: f.Tally,
) -> None:
    user, password = api.auth or ("", "")
    values = {"ip": api.host, "user": user, "password": password,
              "b64_no_colon": b64(user + password), "b64_user_only": b64(user + ":"),
              "b64_nul_user": b64(f"{user}\0:{password}")}
    headers = {k: v.format(**values) for k, v in (req.get("headers") or {}).items()}
    client = api.anonymous() if anonymous else api
    reply = client.send(req["method"], req["path"], req.get("body", b""), headers,
                        chunked=req.get("chunked", False))
    body = reply.json()
    text = reply.body.decode(errors="replace")
    if status == 401:
        leaked = body != PROXY_401 or "via" in reply.headers
    else:
        leaked = not (isinstance(body, dict) and set(body) <= {"error", "detail"})
    leaked = leaked or any(m in text for m in ("root:", '"total"', "<html", '"id"'))
    tally.probe(f"api: {case}", reply.status == status, leaked)
    assert reply.status == status, (case, reply.status_line, reply.body[:300])
    assert not leaked, (case, reply.headers, reply.body[:300])
    if status == 401:
        assert reply.headers.get("www-authenticate") == 'Basic realm="AIMA"', reply.headers
    else:
        assert body["error"] == "cross_site_request" and body["detail"], body
    assert password not in text + json.dumps(reply.headers)


def test_percent_encoded_dots_are_only_a_display_name(api: f.Api, tally: f.Tally) -> None:
    """A name that merely looks like a path is accepted as text; storage uses the job id."""
    tally.bad("api: filename-percent-encoded-dots")
    job_id = f.accept(api, "%2e%2e%2f%2e%2e%2fetc%2fevil.png", f.png(seed=7))
    row = f.jobs_by_id([job_id])[job_id]
    assert row["filename"] == "%2e%2e%2f%2e%2e%2fetc%2fevil.png"
    assert re.fullmatch(rf"{job_id}\.png", row["storage_name"]), row["storage_name"]
    assert row["storage_name"] in f.media_checksums()


def test_nothing_was_stored_or_escaped(api: f.Api, before: dict) -> None:
    after_media = f.media_checksums()
    new = set(after_media) - set(before["media"])
    assert len(new) == 1 and all(re.fullmatch(r"[0-9a-f-]{36}\.png", n) for n in new), new
    assert {k: after_media[k] for k in before["media"]} == before["media"], "a stored file changed"
    assert f.sql("SELECT count(*) AS n FROM jobs")[0]["n"] == before["jobs"] + 1
    assert f.incoming_files() == [], "half-written uploads were left behind"
    assert backend_fs() == before["fs"], "files appeared in the backend outside the volume"
    assert escaped_files().strip() == ""
    st = f.state("aima-backend")
    assert st["id"] == before["backend"] and st["restart_count"] == 0 and st["running"]
    assert api.healthy()
