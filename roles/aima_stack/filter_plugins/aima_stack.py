"""Filters for the aima_stack role: the decisions about logins and certificate names.

Kept here, not in Jinja, so that the tests call them directly (tests/aima_stack/test_filters.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

import bcrypt

# bcrypt's cost factor for the hashes in the proxy's config. Caddy caches a verified
# password, so the cost is paid about once per client and password, not per request.
BCRYPT_COST = 12
BCRYPT_MAX_BYTES = 72  # bcrypt ignores (bcrypt>=5 refuses) longer passwords
MIN_PASSWORD_CHARS = 16
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
BCRYPT_HASH_RE = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_STD_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BCRYPT_B64 = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TO_BCRYPT_B64 = bytes.maketrans(_STD_B64, _BCRYPT_B64)


def _bcrypt_salt(seed: str, user: str, cost: int = BCRYPT_COST) -> bytes:
    """A bcrypt salt derived from a secret seed (kept on the host) and the user name.

    bcrypt salts are random by design; deriving it from a stored secret makes the hash of an
    unchanged password the same on every run (no needless proxy restart, changed=0) while
    two users, or two hosts, never share a salt.
    """
    raw = hmac.new(seed.encode(), f"aima-proxy-login:{user}".encode(), hashlib.sha256).digest()
    encoded = base64.b64encode(raw[:16]).rstrip(b"=").translate(_TO_BCRYPT_B64)
    return b"$2b$%02d$" % cost + encoded


def aima_bcrypt(password: str, seed: str, user: str) -> str:
    """The bcrypt hash of a password, stable for the same password, seed and user."""
    if not seed:
        raise ValueError("aima_bcrypt needs a non-empty salt seed")
    secret = str(password).encode()
    if len(secret) > BCRYPT_MAX_BYTES:
        raise ValueError(f"a password may have at most {BCRYPT_MAX_BYTES} bytes")
    return bcrypt.hashpw(secret, _bcrypt_salt(seed, user)).decode()


def _unknown_keys(where: str, entry: Mapping[str, Any], allowed: set[str]) -> list[str]:
    """The error for keys of a settings entry that the role does not know, if any."""
    unknown = sorted(set(entry) - allowed)
    return [f"{where} has unknown keys: {', '.join(unknown)}"] if unknown else []


def aima_auth_user_errors(users: Iterable[Mapping[str, Any]] | None, primary: str) -> list[str]:
    """What is wrong with aima_auth_users (and the generated login's name); [] when all is well.

    The messages name users and fields, never a password.
    """
    errors: list[str] = []
    if not USER_NAME_RE.match(str(primary)):
        errors.append(
            f"aima_auth_user={primary!r} must be 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    seen = {str(primary)}
    for index, user in enumerate(users or []):
        where = f"aima_auth_users[{index}]"
        if not isinstance(user, Mapping):
            errors.append(f"{where} must be a mapping with name and password (or password_hash)")
            continue
        errors += _unknown_keys(where, user, {"name", "password", "password_hash"})
        name = str(user.get("name", ""))
        if not USER_NAME_RE.match(name):
            errors.append(
                f"{where}.name={name!r} must be 1-64 letters, digits, '.', '_', '@' or '-'"
            )
        elif name in seen:
            errors.append(f"{where}.name={name!r} is used twice (aima_auth_user is {primary!r})")
        seen.add(name)
        has_password = bool(user.get("password"))
        has_hash = bool(user.get("password_hash"))
        if has_password == has_hash:
            errors.append(f"{where} ({name}) needs exactly one of password and password_hash")
        elif has_password:
            password = str(user["password"])
            if len(password) < MIN_PASSWORD_CHARS:
                errors.append(
                    f"{where}.password ({name}) is shorter than {MIN_PASSWORD_CHARS} characters"
                )
            if len(password.encode()) > BCRYPT_MAX_BYTES:
                errors.append(f"{where}.password ({name}) is longer than {BCRYPT_MAX_BYTES} bytes")
        elif not BCRYPT_HASH_RE.match(str(user["password_hash"])):
            errors.append(
                f"{where}.password_hash ({name}) is not a bcrypt hash ($2a$/$2b$/$2y$, e.g. from "
                "`caddy hash-password` or htpasswd -B)"
            )
    return errors


def aima_proxy_accounts(
    users: Iterable[Mapping[str, Any]] | None, primary: str, primary_password: str, seed: str
) -> list[dict[str, str]]:
    """Every proxy login as {name, hash}: the primary (generated) one, then the operator's."""
    accounts = [{"name": str(primary), "hash": aima_bcrypt(primary_password, seed, primary)}]
    for user in users or []:
        name = str(user["name"])
        given = user.get("password_hash")
        accounts.append(
            {
                "name": name,
                "hash": str(given) if given else aima_bcrypt(user["password"], seed, name),
            }
        )
    return accounts


def aima_tls_names(
    names: Iterable[str] | None, default_ipv4: Mapping[str, Any] | None
) -> list[str]:
    """Names and addresses for the proxy's internal-CA certificate (HTTPS without aima_domain).

    The operator's list when given; else the host's default IPv4 address, then localhost (an
    SSH tunnel). Order is kept. Clients that connect by IP address send no SNI and always get
    the first name's certificate, so a second IP address in the list is never served.
    """
    chosen = [str(n) for n in names or [] if str(n)]
    if not chosen:
        address = (default_ipv4 or {}).get("address")
        chosen = ([str(address)] if address else []) + ["localhost"]
    unique: list[str] = []
    for name in chosen:
        if name not in unique:
            unique.append(name)
    return unique


def aima_site_address(name: str, scheme: str = "https") -> str:
    """A Caddy site address for a host name or an IP address (IPv6 in brackets)."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return f"{scheme}://{name}"
    return f"{scheme}://[{address}]" if address.version == 6 else f"{scheme}://{address}"


def aima_subject_alt_name(name: str) -> str:
    """A certificate's subjectAltName entry for a host name or an IP address (IP:..., DNS:...)."""
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        return f"DNS:{name}"


def aima_tls_name_errors(names: Iterable[str] | None) -> list[str]:
    """aima_tls_hosts entries that are neither an IP address nor a DNS name."""
    label = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    dns = re.compile(rf"^({label}\.)*{label}$")
    bad = []
    for name in names or []:
        text = str(name)
        try:
            ipaddress.ip_address(text)
        except ValueError:
            if not dns.match(text) or len(text) > 253:
                bad.append(text)
    return bad


_SIZE_RE = re.compile(r"^([0-9]+)([kmg]?)$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def aima_bytes(size: str | int) -> int:
    """A Compose memory size ('512m', '2g', '1048576') in bytes."""
    match = _SIZE_RE.match(str(size).strip().lower())
    if not match:
        raise ValueError(f"not a memory size like 512m or 2g: {size!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def aima_limit_errors(
    limits: Mapping[str, Any] | None, services: Iterable[str], optional: Iterable[str] = ()
) -> list[str]:
    """What is wrong with aima_service_limits; [] when every service has sane limits.

    `services` must have limits; `optional` ones (e.g. the socket proxy, which runs with one
    proxy engine only) are checked when given and are not unknown."""
    errors: list[str] = []
    limits = limits or {}
    services = list(services)
    optional = [name for name in optional if name not in services]
    for service in services + [name for name in optional if name in limits]:
        limit = limits.get(service)
        where = f"aima_service_limits['{service}']"
        if not isinstance(limit, Mapping):
            errors.append(f"{where} is missing (memory, cpus, pids)")
            continue
        errors += _unknown_keys(where, limit, {"memory", "cpus", "pids"})
        try:
            if aima_bytes(limit.get("memory", "")) < 16 << 20:
                errors.append(f"{where}.memory is below 16m")
        except ValueError as exc:
            errors.append(f"{where}.memory: {exc}")
        try:
            if float(limit.get("cpus", -1)) < 0:
                errors.append(f"{where}.cpus must be >= 0 (0 = no CPU limit)")
        except (TypeError, ValueError):
            errors.append(f"{where}.cpus must be a number (e.g. 1.0)")
        pids = limit.get("pids")
        if not isinstance(pids, int) or isinstance(pids, bool) or pids < 16:
            errors.append(f"{where}.pids must be an integer >= 16")
    unknown_services = sorted(set(limits) - set(services) - set(optional))
    if unknown_services:
        errors.append(f"aima_service_limits: unknown services {', '.join(unknown_services)}")
    return errors


def aima_parse_env(text: str | None) -> dict[str, str]:
    """KEY=value lines of an env-style file (comments and other lines are skipped)."""
    values: dict[str, str] = {}
    for line in (text or "").splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(\S+)$", line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


# name[:tag][@sha256:<64 hex>]: lower-case path components (an optional registry host with a
# port first), a tag of word characters, dots and dashes, and an optional content digest.
_IMAGE_REF = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>[^@]*))?$"
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def aima_image_ref_errors(images: Mapping[str, str]) -> list[str]:
    """What is wrong with each image reference ({variable: reference}); empty ones are left to
    the caller (they mean "build it here" for the app images)."""
    errors = []
    for variable, ref in images.items():
        if not ref:
            continue
        match = _IMAGE_REF.match(str(ref))
        if match is None:
            errors.append(
                f"{variable}: {ref!r} is not an image reference (name[:tag][@sha256:...])"
            )
        elif match["digest"] is not None and not _DIGEST.match(match["digest"]):
            errors.append(f"{variable}: the digest of {ref!r} must be sha256: and 64 hex digits")
    return errors


class FilterModule:
    """aima_stack's filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "aima_bcrypt": aima_bcrypt,
            "aima_auth_user_errors": aima_auth_user_errors,
            "aima_proxy_accounts": aima_proxy_accounts,
            "aima_tls_names": aima_tls_names,
            "aima_site_address": aima_site_address,
            "aima_subject_alt_name": aima_subject_alt_name,
            "aima_tls_name_errors": aima_tls_name_errors,
            "aima_parse_env": aima_parse_env,
            "aima_bytes": aima_bytes,
            "aima_limit_errors": aima_limit_errors,
            "aima_image_ref_errors": aima_image_ref_errors,
        }
