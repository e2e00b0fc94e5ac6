"""The FastAPI application: the API under /api and the web page at /."""

from __future__ import annotations

import errno
import http
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import psycopg
import redis
from aima_common import __version__, memory, streams
from aima_common.config import Settings, load_settings
from aima_common.db import (
    Database,
    get_job,
    insert_job,
    job_counts,
    job_to_json,
    list_jobs,
    mark_enqueued,
    migrate,
    parse_uuid,
    unfinished_jobs,
)
from aima_common.imaging import ImageError, image_size, load_image
from aima_common.media import EXTENSIONS, declared_matches, is_supported_image, sniff
from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from python_multipart.exceptions import MultipartParseError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .csrf import CrossSiteGuard
from .errors import ApiError, error_response
from .limits import RateLimiter, client_address, retry_after, storage_shortfall
from .retention import remove_expired_media
from .uploads import UploadSink, boundary_of

log = logging.getLogger("aima_backend")

STATIC_DIR = Path(__file__).parent / "static"
INCOMING = ".incoming"
ORPHAN_MIN_AGE_S = 3600.0
MULTIPART_OVERHEAD = 64 * 1024
UNAVAILABLE = "unavailable"
DECODES_AT_ONCE = 2  # uploads whose image is being decoded for the check at the same time
QUEUE_FULL_RETRY_S = 60


# ---------------------------------------------------------------- response models (OpenAPI)
class Job(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    status: str
    attempts: int
    device: str | None
    worker: str | None
    result: dict[str, Any] | None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    timings: dict[str, Any] | None
    media_removed: bool = False


class JobList(BaseModel):
    items: list[Job]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unavailable"]
    queue: Literal["ok", "unavailable"]
    jobs: dict[str, int] | None
    workers: int | None


class ErrorBody(BaseModel):
    error: str
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 403, 404, 413, 415, 422, 429, 503, 507)
}


# ---------------------------------------------------------------- the service around the app
class Backend:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.db = Database(settings.database_url, max_idle=8)
        self.redis = streams.connect_redis(settings.redis_url, socket_timeout=5.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rate = RateLimiter(settings.upload_rate_per_minute, settings.upload_burst)
        # each check decodes a whole image: bound how many are in memory at once
        self._decodes = threading.BoundedSemaphore(DECODES_AT_ONCE)

    @property
    def incoming(self) -> Path:
        return self.s.media_dir / INCOMING

    def start(self) -> None:
        self.s.media_dir.mkdir(parents=True, exist_ok=True)
        self._migrate_with_retry()
        try:
            streams.ensure_group(self.redis, self.s.stream, self.s.group)
        except redis.RedisError as exc:
            log.warning("queue not reachable at start (%s); the outbox will catch up", exc)
        sweep_orphans(self.db, self.s.media_dir, ORPHAN_MIN_AGE_S)
        self.recover_once()
        self.retain_once()
        self._thread = threading.Thread(target=self._recovery_loop, name="outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.db.close()
        self.redis.close()

    def _migrate_with_retry(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with self.db.connection() as conn:
                    migrate(conn)
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("database not reachable yet (%s); retrying", exc)
                time.sleep(1.0)

    def recover_once(self) -> int:
        try:
            return streams.recover_unsent(self.db, self.redis, self.s)
        except (redis.RedisError, psycopg.Error) as exc:
            log.warning("outbox pass skipped: %s", exc)
            return 0

    def retain_once(self) -> int:
        try:
            return remove_expired_media(self.db, self.s.media_dir, self.s.media_retention_days)
        except (psycopg.Error, OSError) as exc:
            log.warning("retention pass skipped: %s", exc)
            return 0

    def _recovery_loop(self) -> None:
        while not self._stop.wait(self.s.recovery_interval_s):
            self.recover_once()
            self.retain_once()

    # ------------------------------------------------------------ upload -> job
    def admit(self, client: str, incoming_bytes: int) -> None:
        """Refuse an upload before its body is read: rate, queue length, free space."""
        wait = self.rate.take(client)
        if wait > 0:
            log.info("upload refused as rate_limited for %s", client)
            raise ApiError(
                429, "rate_limited",
                f"too many uploads from your address (at most {self.s.upload_burst} at once,"
                f" {self.s.upload_rate_per_minute:g} per minute); retry after the time in"
                " the Retry-After header",
                retry_after(wait),
            )
        cap = self.s.max_queued_jobs
        if cap > 0:
            with self.db.connection() as conn:
                waiting = unfinished_jobs(conn, cap)
            if waiting >= cap:
                log.warning("upload refused as queue_full: %d jobs waiting", waiting)
                raise ApiError(
                    429, "queue_full",
                    f"{cap} jobs are already waiting for analysis: nothing was stored; retry"
                    " after the time in the Retry-After header",
                    retry_after(QUEUE_FULL_RETRY_S),
                )
        short = storage_shortfall(
            self.s.media_dir, incoming_bytes, self.s.min_free_bytes, self.s.min_free_percent
        )
        if short is not None:
            log.error("upload refused as insufficient_storage: %s", short)
            raise ApiError(507, "insufficient_storage", short)

    def check_image(self, path: Path, content_type: str) -> None:
        """422 when the image is corrupt, above the pixel cap, or above what the worker's
        memory budget allows (``AIMA_WORKER_MEMORY_BYTES``, see aima_common.memory)."""
        size = image_size(path, content_type)
        if size is not None:
            width, height = size
            pixels = width * height
            if (pixels <= self.s.max_image_pixels
                    and not memory.fits(pixels, self.s.worker_memory_bytes)):
                reason = memory.too_large_reason(width, height, self.s.worker_memory_bytes)
                log.info("upload refused as image_too_large: %s", reason)
                raise ApiError(422, "image_too_large", reason)
        with self._decodes:
            try:
                load_image(path, content_type, self.s.max_image_pixels).close()
            except ImageError as exc:
                log.info("upload refused as invalid_image: %s (%s)", exc, exc.__cause__)
                raise ApiError(422, "invalid_image", str(exc)) from exc

    def store_upload(self, sink: UploadSink) -> dict[str, Any]:
        """Validate the received file, then: file in place -> row committed -> message sent."""
        assert sink.path is not None and sink.filename is not None
        sniffed = sniff(sink.head)
        if sniffed is None:
            raise ApiError(
                415, "unsupported_media_type",
                "the file is not a recognised image, video or audio format",
            )
        if not declared_matches(sink.declared_type, sniffed):
            raise ApiError(
                415, "content_type_mismatch",
                f"declared Content-Type {sink.declared_type[:100]!r} but the file is {sniffed}",
            )
        if is_supported_image(sniffed):
            self.check_image(sink.path, sniffed)
        job_id = uuid.uuid4()
        storage_name = f"{job_id}{EXTENSIONS[sniffed]}"
        final = self.s.media_dir / storage_name
        os.chmod(sink.path, 0o644)
        os.replace(sink.path, final)
        sink.path = None
        _fsync_dir(self.s.media_dir)
        try:
            with self.db.connection() as conn:
                row = insert_job(
                    conn, job_id, sink.filename, sniffed, sink.size, sink.hasher.hexdigest(),
                    storage_name,
                )
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        # The row is committed: from here on the job cannot be lost. If XADD fails (or this
        # process dies before it), the outbox pass sends the message later.
        try:
            streams.enqueue(self.redis, self.s.stream, job_id)
            with self.db.connection() as conn:
                mark_enqueued(conn, job_id)
        except (redis.RedisError, psycopg.Error) as exc:
            log.warning("job %s stored; message deferred to the outbox pass: %s", job_id, exc)
        return job_to_json(row)

    def health(self) -> tuple[int, dict[str, Any]]:
        """Each part is "ok" or "unavailable"; why a part is unavailable goes to the log only."""
        body: dict[str, Any] = {"status": "ok", "database": "ok", "queue": "ok",
                                "jobs": None, "workers": None}
        try:
            with self.db.connection() as conn:
                body["jobs"] = job_counts(conn)
        except (psycopg.Error, OSError) as exc:
            log.warning("health: database unavailable: %s", _short(exc))
            body["database"] = UNAVAILABLE
        try:
            self.redis.ping()
            body["workers"] = streams.active_consumers(self.redis, self.s.stream, self.s.group)
        except (redis.RedisError, OSError) as exc:
            log.warning("health: queue unavailable: %s", _short(exc))
            body["queue"] = UNAVAILABLE
        if body["database"] != "ok" or body["queue"] != "ok":
            body["status"] = "degraded"
            return 503, body
        return 200, body


def _short(exc: BaseException) -> str:
    """One line for the server's log (never for a response body)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_orphans(db: Database, media_dir: Path, min_age_s: float) -> int:
    """Delete half-finished uploads and media files whose job row was never committed."""
    removed = 0
    cutoff = time.time() - min_age_s
    incoming = media_dir / INCOMING
    if incoming.is_dir():
        for p in incoming.iterdir():
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink(missing_ok=True)
                removed += 1
    candidates: dict[uuid.UUID, Path] = {}
    if media_dir.is_dir():
        for p in media_dir.iterdir():
            job_id = parse_uuid(p.name.split(".", 1)[0])
            if job_id is not None and p.is_file() and p.stat().st_mtime < cutoff:
                candidates[job_id] = p
    if candidates:
        with db.connection() as conn:
            known = {
                r["id"] for r in conn.execute(
                    "SELECT id FROM jobs WHERE id = ANY(%s)", (list(candidates),)
                )
            }
        for job_id, p in candidates.items():
            if job_id not in known:
                p.unlink(missing_ok=True)
                removed += 1
    if removed:
        log.warning("removed %d orphaned upload file(s)", removed)
    return removed


HTTP_ERRORS = {
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "this method is not allowed here (see the Allow header)"),
}
VALIDATION_LOCATIONS = ("query", "path", "header", "cookie", "body")


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase.lower()
    except ValueError:
        return "the request was refused"


def _validation_detail(exc: RequestValidationError) -> str:
    """"limit: Input should be ...": the parameter's name and the rule, not the input echoed."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in VALIDATION_LOCATIONS)
        parts.append(f"{loc[:100]}: {str(err.get('msg', 'invalid'))[:200]}")
    return "; ".join(parts[:10]) or "invalid request"


# ---------------------------------------------------------------- the app
def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    backend = Backend(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(backend.start)
        try:
            yield
        finally:
            await run_in_threadpool(backend.stop)

    app = FastAPI(
        title="AIMA API",
        version=__version__,
        description="Upload media for analysis; read jobs and their results.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url="/api/redoc",
        lifespan=lifespan,
    )
    app.state.backend = backend

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the framework's own detail text is not passed on: a fixed phrase per status
        code, detail = HTTP_ERRORS.get(exc.status_code, ("http_error", _phrase(exc.status_code)))
        allow = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
        return error_response(exc.status_code, code, detail, allow)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_parameter", _validation_detail(exc))

    @app.exception_handler(psycopg.OperationalError)
    async def _db_down(_r: Request, exc: psycopg.OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc)
        return error_response(
            503, "database_unavailable", "the database is not reachable; retry later"
        )

    @app.exception_handler(Exception)
    async def _internal(_r: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(
            500, "internal_error", "unexpected server error; retry later or tell the operator"
        )

    # added first, so it runs inside _headers below: its 403 gets the same headers
    app.add_middleware(CrossSiteGuard)

    @app.middleware("http")
    async def _headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if not request.url.path.startswith("/api/"):
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            )
        return response

    @app.post(
        "/api/jobs",
        status_code=201,
        response_model=Job,
        responses=ERRORS,
        summary="Upload a media file (multipart field 'file') and queue its analysis",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            }
        },
    )
    async def create_job(request: Request) -> dict[str, Any]:
        boundary = boundary_of(request.headers.get("content-type", ""))
        length = request.headers.get("content-length")
        limit = settings.max_upload_bytes
        declared = int(length) if length and length.isdigit() else None
        if declared is not None and declared > limit + MULTIPART_OVERHEAD:
            raise ApiError(413, "too_large", f"file is larger than {limit} bytes")
        # no Content-Length (chunked): assume the largest upload allowed
        await run_in_threadpool(
            backend.admit, client_address(request), limit if declared is None else declared
        )
        sink = UploadSink(backend.incoming, settings.max_upload_bytes)
        parser = sink.parser(boundary)
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
            sink.finish()
            return await run_in_threadpool(backend.store_upload, sink)
        except MultipartParseError as exc:
            log.info("upload refused as invalid_multipart: %s", exc)
            raise ApiError(
                400, "invalid_multipart",
                "malformed multipart/form-data body: check the boundary and the part headers",
            ) from exc
        except ClientDisconnect as exc:
            raise ApiError(400, "client_disconnected", "the upload was interrupted") from exc
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.error("upload refused: the media volume is full (%s)", exc)
            raise ApiError(
                507, "insufficient_storage",
                "the media volume is full: nothing was stored; retry when space is freed",
            ) from exc
        finally:
            sink.discard()

    @app.get("/api/jobs/{job_id}", response_model=Job, responses=ERRORS, summary="One job")
    def read_job(job_id: str) -> dict[str, Any]:
        parsed = parse_uuid(job_id)
        row = None
        if parsed is not None:
            with backend.db.connection() as conn:
                row = get_job(conn, parsed)
        if row is None:
            raise ApiError(404, "not_found", f"no job with id {job_id[:100]!r}")
        return job_to_json(row)

    @app.get("/api/jobs", response_model=JobList, responses=ERRORS,
             summary="Jobs, newest first")
    def read_jobs(
        limit: int = Query(20, ge=1, le=200, description="page size, 1..200"),
        offset: int = Query(0, ge=0, le=10_000_000, description="jobs to skip"),
    ) -> dict[str, Any]:
        with backend.db.connection() as conn:
            rows, total = list_jobs(conn, limit, offset)
        return {"items": [job_to_json(r) for r in rows], "total": total,
                "limit": limit, "offset": offset}

    @app.get("/api/health", response_model=Health, responses={503: {"model": Health}},
             summary="Database, queue, job counts and live workers")
    def health(response: Response) -> dict[str, Any]:
        status, body = backend.health()
        response.status_code = status
        return body

    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
    return app
