"""Streaming multipart upload into a temporary file on the media volume.

The body is parsed as it arrives, so an oversized upload is refused as soon as it passes the
limit, without being buffered anywhere. Exactly one part named ``file`` is accepted.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ApiError

INCOMING = ".incoming"  # the temporary files' folder on the media volume
MAX_FILENAME_BYTES = 255
MAX_OTHER_FIELDS_BYTES = 64 * 1024
SNIFF_BYTES = 64
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def check_filename(raw: str) -> str:
    """A display name for the upload; path tricks are refused, never silently rewritten."""
    name = unicodedata.normalize("NFC", raw).strip()
    if not name:
        raise ApiError(400, "invalid_filename", "the file part has an empty filename")
    if _BAD_NAME.search(name) or name in (".", "..") or name.startswith(".."):
        raise ApiError(
            400, "invalid_filename",
            "filename must be a plain name: no path separators, '..' or control characters",
        )
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise ApiError(
            400, "invalid_filename", f"filename is longer than {MAX_FILENAME_BYTES} bytes"
        )
    return name


class UploadSink:
    """Callbacks for python-multipart's parser; writes the ``file`` part to ``tmp_dir``."""

    def __init__(self, tmp_dir: Path, max_bytes: int) -> None:
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes
        self.size = 0
        self.hasher = hashlib.sha256()
        self.head = b""
        self.filename: str | None = None
        self.declared_type = ""
        self.path: Path | None = None
        self._fh: IO[bytes] | None = None
        self._other_bytes = 0
        self._in_file = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    # parser callbacks --------------------------------------------------------
    def on_part_begin(self) -> None:
        self._headers = {}
        self._in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data":
            raise ApiError(
                400, "invalid_multipart", "each part needs Content-Disposition: form-data"
            )
        if params.get(b"name") != b"file":
            return
        if self.filename is not None:
            raise ApiError(400, "invalid_multipart", "send exactly one 'file' part")
        raw_name = params.get(b"filename")
        if raw_name is None:
            raise ApiError(400, "missing_file", "the 'file' part must be a file (with a filename)")
        self.filename = check_filename(raw_name.decode("utf-8", errors="replace"))
        self.declared_type = self._headers.get(b"content-type", b"").decode("latin-1")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.tmp_dir)
        self.path = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._in_file:
            self._other_bytes += len(chunk)
            if self._other_bytes > MAX_OTHER_FIELDS_BYTES:
                raise ApiError(413, "too_large", "form fields other than 'file' are too large")
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ApiError(413, "too_large", f"file is larger than {self.max_bytes} bytes")
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
        self.hasher.update(chunk)
        assert self._fh is not None
        self._fh.write(chunk)

    def on_part_end(self) -> None:
        if self._in_file and self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        self._in_file = False

    # helpers ------------------------------------------------------------------
    def parser(self, boundary: bytes) -> MultipartParser:
        return MultipartParser(
            boundary,
            {
                "on_part_begin": self.on_part_begin,
                "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value,
                "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished,
                "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end,
            },
        )

    def finish(self) -> None:
        if self.filename is None or self.path is None:
            raise ApiError(400, "missing_file", "multipart field 'file' is required")
        if self._fh is not None:
            raise ApiError(400, "invalid_multipart", "the multipart body ended mid-part")
        if self.size == 0:
            raise ApiError(400, "empty_file", "the uploaded file is empty")

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def boundary_of(content_type: str) -> bytes:
    mime, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise ApiError(
            415, "unsupported_media_type",
            "send multipart/form-data with the file in a field named 'file'",
        )
    return boundary
