"""``/api/jobs``: upload a media file (a new job), read one job, list jobs."""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

from fastapi import APIRouter, Query, Request
from python_multipart.exceptions import MultipartParseError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..errors import ApiError
from ..limits import client_address
from ..models import ERRORS, Job, JobList
from ..uploads import UploadSink, boundary_of
from . import BackendDep

log = logging.getLogger("aima_backend")

MULTIPART_OVERHEAD = 64 * 1024

# the body is parsed as it streams in (not by FastAPI), so its schema is written out here
UPLOAD_BODY: dict[str, Any] = {
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
}

router = APIRouter()


@router.post(
    "/api/jobs",
    status_code=201,
    response_model=Job,
    responses=ERRORS,
    summary="Upload a media file (multipart field 'file') and queue its analysis",
    openapi_extra=UPLOAD_BODY,
)
async def create_job(request: Request, backend: BackendDep) -> Job:
    boundary = boundary_of(request.headers.get("content-type", ""))
    length = request.headers.get("content-length")
    limit = backend.s.max_upload_bytes
    declared = int(length) if length and length.isdigit() else None
    if declared is not None and declared > limit + MULTIPART_OVERHEAD:
        raise ApiError(413, "too_large", f"file is larger than {limit} bytes")
    # no Content-Length (chunked): assume the largest upload allowed
    await run_in_threadpool(
        backend.admit, client_address(request), limit if declared is None else declared
    )
    sink = UploadSink(backend.incoming, limit)
    parser = sink.parser(boundary)
    try:
        # A client that never finishes its upload holds a connection and a partial file: the
        # whole body must arrive within AIMA_UPLOAD_TIMEOUT_S.
        async with asyncio.timeout(backend.s.upload_timeout_s):
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
    except TimeoutError as exc:  # before OSError, of which it is a subclass
        log.info("upload refused as upload_timeout after %g s", backend.s.upload_timeout_s)
        raise ApiError(
            408, "upload_timeout",
            f"the upload was not complete after {backend.s.upload_timeout_s:g} s: nothing was"
            " stored; send it again on a faster connection",
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


@router.get("/api/jobs/{job_id}", response_model=Job, responses=ERRORS, summary="One job")
def read_job(job_id: str, backend: BackendDep) -> Job:
    return backend.job(job_id)


@router.get("/api/jobs", response_model=JobList, responses=ERRORS,
            summary="Jobs, newest first")
def read_jobs(
    backend: BackendDep,
    limit: int = Query(20, ge=1, le=200, description="page size, 1..200"),
    offset: int = Query(0, ge=0, le=10_000_000, description="jobs to skip"),
) -> JobList:
    return backend.jobs(limit, offset)
