"""``GET /api/health``: the database, the queue, job counts and live workers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..models import Health
from . import BackendDep

router = APIRouter()


@router.get("/api/health", response_model=Health, responses={503: {"model": Health}},
            summary="Database, queue, job counts and live workers")
def health(response: Response, backend: BackendDep) -> dict[str, Any]:
    status, body = backend.health()
    response.status_code = status
    return body
