"""The API's response bodies (and so its OpenAPI schemas)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from aima_common.jobs import JobState
from pydantic import BaseModel, PlainSerializer, WithJsonSchema


def _iso(value: datetime) -> str:
    return value.isoformat()


# datetime.isoformat() in JSON ("+00:00", as the API has always written it, not pydantic's "Z")
Timestamp = Annotated[
    datetime,
    PlainSerializer(_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
PartState = Literal["ok", "unavailable"]


class Job(BaseModel):
    id: uuid.UUID
    filename: str
    content_type: str
    size: int
    sha256: str
    status: JobState
    attempts: int
    device: str | None
    worker: str | None
    result: dict[str, Any] | None
    error: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    timings: dict[str, Any] | None
    media_removed: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        """A row with :data:`aima_common.jobs.PUBLIC_JOB_COLUMNS` as the API shows it."""
        values: dict[str, Any] = {
            name: row.get(name) for name in cls.model_fields if name != "media_removed"
        }
        return cls(**values, media_removed=row.get("media_removed_at") is not None)


class JobList(BaseModel):
    items: list[Job]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: PartState
    queue: PartState
    jobs: dict[JobState, int] | None
    workers: int | None


class ErrorBody(BaseModel):
    error: str
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 403, 404, 413, 415, 422, 429, 503, 507)
}
