"""Configuration from environment variables, in one place for both services.

Every setting is read here and nowhere else. A secret URL may be given directly
(``AIMA_DATABASE_URL``) or as a path to a file that holds it (``AIMA_DATABASE_URL_FILE``),
as Docker/Compose secrets do; setting both is an error.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEVICE_MODES = ("auto", "gpu", "cpu")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    media_dir: Path
    max_upload_bytes: int
    stream: str
    group: str
    http_port: int
    worker_device: str
    worker_name: str
    claim_idle_ms: int
    max_attempts: int
    shutdown_grace_s: float
    worker_batch: int
    block_ms: int
    heartbeat_file: Path
    recovery_interval_s: float
    outbox_grace_s: float
    max_image_pixels: int
    worker_delay_ms: int

    def redacted(self) -> dict[str, str]:
        """Settings fit for a log line: URLs lose their passwords."""
        out: dict[str, str] = {}
        for key, value in self.__dict__.items():
            text = str(value)
            if key.endswith("_url"):
                text = redact_url(text)
            out[key] = text
        return out


def redact_url(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _secret(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    direct = env.get(name)
    file_name = env.get(f"{name}_FILE")
    if direct and file_name:
        raise ConfigError(f"set only one of {name} and {name}_FILE")
    if file_name:
        try:
            value = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={file_name}: cannot read: {exc.strerror}") from exc
        if not value:
            raise ConfigError(f"{name}_FILE={file_name}: file is empty")
        return value
    if direct:
        return direct.strip()
    if default is not None:
        return default
    raise ConfigError(f"{name} (or {name}_FILE) must be set")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is out of range [{minimum}, {maximum}]")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is out of range [{minimum}, {maximum}]")
    return value


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if len(value) > 200 or any(ch.isspace() for ch in value):
        raise ConfigError(f"{name}={value!r} must be a non-blank name without spaces")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every AIMA_* setting; raise ConfigError with the variable's name on a bad value."""
    env = os.environ if env is None else env
    database_url = _secret(env, "AIMA_DATABASE_URL")
    if not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("AIMA_DATABASE_URL must be a postgresql:// URL")
    redis_url = _secret(env, "AIMA_REDIS_URL")
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("AIMA_REDIS_URL must be a redis:// URL")
    device = env.get("AIMA_WORKER_DEVICE", "").strip().lower() or "auto"
    if device not in DEVICE_MODES:
        raise ConfigError(f"AIMA_WORKER_DEVICE={device!r} must be one of {', '.join(DEVICE_MODES)}")
    media_dir = env.get("AIMA_MEDIA_DIR", "").strip() or "/data/media"
    if not os.path.isabs(media_dir):
        raise ConfigError(f"AIMA_MEDIA_DIR={media_dir!r} must be an absolute path")
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        media_dir=Path(media_dir),
        max_upload_bytes=_int(env, "AIMA_MAX_UPLOAD_BYTES", 52_428_800, 1, 1 << 40),
        stream=_name(env, "AIMA_STREAM", "aima:jobs"),
        group=_name(env, "AIMA_GROUP", "aima-workers"),
        http_port=_int(env, "AIMA_HTTP_PORT", 8000, 1, 65535),
        worker_device=device,
        worker_name=_name(env, "AIMA_WORKER_NAME", socket.gethostname() or "worker"),
        claim_idle_ms=_int(env, "AIMA_CLAIM_IDLE_MS", 60_000, 100, 86_400_000),
        max_attempts=_int(env, "AIMA_MAX_ATTEMPTS", 3, 1, 1000),
        shutdown_grace_s=_float(env, "AIMA_SHUTDOWN_GRACE_S", 20.0, 0.0, 3600.0),
        worker_batch=_int(env, "AIMA_WORKER_BATCH", 8, 1, 256),
        block_ms=_int(env, "AIMA_BLOCK_MS", 2000, 10, 5000),
        heartbeat_file=Path(
            env.get("AIMA_HEARTBEAT_FILE", "").strip() or "/tmp/aima-worker.heartbeat"
        ),
        recovery_interval_s=_float(env, "AIMA_RECOVERY_INTERVAL_S", 30.0, 0.1, 86_400.0),
        outbox_grace_s=_float(env, "AIMA_OUTBOX_GRACE_S", 10.0, 0.0, 86_400.0),
        max_image_pixels=_int(env, "AIMA_MAX_IMAGE_PIXELS", 50_000_000, 1, 1 << 34),
        worker_delay_ms=_int(env, "AIMA_WORKER_DELAY_MS", 0, 0, 3_600_000),
    )
