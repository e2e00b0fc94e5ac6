"""Configuration from environment variables, in one place for both services.

Every setting is read here and nowhere else. A secret URL may be given directly
(``AIMA_DATABASE_URL``) or as a path to a file that holds it (``AIMA_DATABASE_URL_FILE``),
as Docker/Compose secrets do; setting both is an error. Or the URL carries no credentials and
the password alone comes from a file (``AIMA_DATABASE_PASSWORD_FILE``,
``AIMA_REDIS_PASSWORD_FILE``, with ``AIMA_REDIS_USERNAME`` for a Redis ACL user): the
password is then put into the URL here, percent-encoded, so the rest of the code sees one URL.
Error messages name variables and files, never a secret's value.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

DEVICE_MODES = ("auto", "gpu", "cpu")
GIB = 1 << 30


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    # the URLs may carry passwords: kept out of repr() so no log line can show them
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
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
    block_ms: int
    heartbeat_file: Path
    recovery_interval_s: float
    upload_timeout_s: float
    outbox_grace_s: float
    max_image_pixels: int
    worker_delay_ms: int
    worker_memory_bytes: int
    max_queued_jobs: int
    upload_rate_per_minute: float
    upload_burst: int
    min_free_bytes: int
    min_free_percent: float
    media_retention_days: float

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


def _read_secret_file(name: str, file_name: str) -> str:
    """The stripped content of the file that variable ``name`` points at (never logged)."""
    try:
        value = Path(file_name).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}={file_name}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{name}={file_name}: file is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{name}={file_name}: file is empty")
    if "\n" in value or "\r" in value:
        raise ConfigError(f"{name}={file_name}: file must hold a single line")
    return value


def _secret(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    direct = env.get(name)
    file_name = env.get(f"{name}_FILE")
    if direct and file_name:
        raise ConfigError(f"set only one of {name} and {name}_FILE")
    if file_name:
        return _read_secret_file(f"{name}_FILE", file_name)
    if direct:
        return direct.strip()
    if default is not None:
        return default
    raise ConfigError(f"{name} (or {name}_FILE) must be set")


def _has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "@" in url
    return bool(parts.username or parts.password)


def with_credentials(url: str, username: str, password: str) -> str:
    """``scheme://host/...`` -> ``scheme://user:password@host/...`` (both percent-encoded)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("not a URL")
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{rest}"


def _database_url(env: Mapping[str, str]) -> str:
    url = _secret(env, "AIMA_DATABASE_URL")
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("AIMA_DATABASE_URL must be a postgresql:// URL")
    password_file = env.get("AIMA_DATABASE_PASSWORD_FILE", "").strip()
    if not password_file:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError("AIMA_DATABASE_URL is not a valid URL") from None
    if parts.password is not None:
        raise ConfigError(
            "AIMA_DATABASE_URL carries a password and AIMA_DATABASE_PASSWORD_FILE is set:"
            " set only one"
        )
    if not parts.username:
        raise ConfigError(
            "AIMA_DATABASE_URL must name the user (postgresql://user@host/db)"
            " when AIMA_DATABASE_PASSWORD_FILE is set"
        )
    password = _read_secret_file("AIMA_DATABASE_PASSWORD_FILE", password_file)
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")  # the user as written (already percent-encoded)
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


def _redis_url(env: Mapping[str, str]) -> str:
    url = _secret(env, "AIMA_REDIS_URL")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("AIMA_REDIS_URL must be a redis:// URL")
    password_file = env.get("AIMA_REDIS_PASSWORD_FILE", "").strip()
    username = env.get("AIMA_REDIS_USERNAME", "").strip()
    if username and not password_file:
        raise ConfigError("AIMA_REDIS_USERNAME needs AIMA_REDIS_PASSWORD_FILE")
    if not password_file:
        return url
    if url.startswith("unix://"):
        raise ConfigError("AIMA_REDIS_PASSWORD_FILE works with redis:// URLs only")
    if _has_credentials(url):
        raise ConfigError(
            "AIMA_REDIS_URL carries credentials and AIMA_REDIS_PASSWORD_FILE is set:"
            " set only one"
        )
    if any(ch.isspace() or ch in ":@/" for ch in username):
        raise ConfigError("AIMA_REDIS_USERNAME must be a plain name (no spaces, ':', '@', '/')")
    password = _read_secret_file("AIMA_REDIS_PASSWORD_FILE", password_file)
    return with_credentials(url, username, password)


def _number(
    env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float,
    parse: Callable[[str], float], what: str,
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {what}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is out of range [{minimum}, {maximum}]")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    return int(_number(env, name, default, minimum, maximum, int, "an integer"))


def _float(
    env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float
) -> float:
    return _number(env, name, default, minimum, maximum, float, "a number")


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if len(value) > 200 or any(ch.isspace() for ch in value):
        raise ConfigError(f"{name}={value!r} must be a non-blank name without spaces")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every AIMA_* setting; raise ConfigError with the variable's name on a bad value."""
    env = os.environ if env is None else env
    database_url = _database_url(env)
    redis_url = _redis_url(env)
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
        # An idle worker notices SIGTERM after its blocking read: 0.5 s keeps a graceful stop
        # short (gpu_off, the auto mode's idle stop) for two cheap reads a second while idle.
        block_ms=_int(env, "AIMA_BLOCK_MS", 500, 10, 5000),
        heartbeat_file=Path(
            env.get("AIMA_HEARTBEAT_FILE", "").strip() or "/tmp/aima-worker.heartbeat"
        ),
        recovery_interval_s=_float(env, "AIMA_RECOVERY_INTERVAL_S", 30.0, 0.1, 86_400.0),
        upload_timeout_s=_float(env, "AIMA_UPLOAD_TIMEOUT_S", 600.0, 0.1, 86_400.0),
        outbox_grace_s=_float(env, "AIMA_OUTBOX_GRACE_S", 10.0, 0.0, 86_400.0),
        max_image_pixels=_int(env, "AIMA_MAX_IMAGE_PIXELS", 50_000_000, 1, 1 << 34),
        worker_delay_ms=_int(env, "AIMA_WORKER_DELAY_MS", 0, 0, 3_600_000),
        worker_memory_bytes=_int(env, "AIMA_WORKER_MEMORY_BYTES", GIB, 64 << 20, 1 << 44),
        max_queued_jobs=_int(env, "AIMA_MAX_QUEUED_JOBS", 1000, 0, 100_000_000),
        upload_rate_per_minute=_float(env, "AIMA_UPLOAD_RATE_PER_MINUTE", 30.0, 0.0, 1e6),
        upload_burst=_int(env, "AIMA_UPLOAD_BURST", 10, 1, 1_000_000),
        min_free_bytes=_int(env, "AIMA_MIN_FREE_BYTES", 2 * GIB, 0, 1 << 50),
        min_free_percent=_float(env, "AIMA_MIN_FREE_PERCENT", 5.0, 0.0, 90.0),
        media_retention_days=_float(env, "AIMA_MEDIA_RETENTION_DAYS", 0.0, 0.0, 36_500.0),
    )
