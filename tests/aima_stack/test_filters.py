"""aima_stack's filter plugin: the login and certificate-name decisions, called directly."""

from __future__ import annotations

import importlib.util

import bcrypt
import pytest

from tests.conftest import REPO_ROOT

_SPEC = importlib.util.spec_from_file_location(
    "aima_stack_filters", REPO_ROOT / "roles" / "aima_stack" / "filter_plugins" / "aima_stack.py"
)
assert _SPEC and _SPEC.loader
filters = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(filters)


def test_bcrypt_is_stable_per_seed_and_user_and_verifies():
    a = filters.aima_bcrypt("a-password-of-some-length", "seed-1", "aima")
    assert a == filters.aima_bcrypt("a-password-of-some-length", "seed-1", "aima")
    assert a.startswith("$2b$12$")
    assert bcrypt.checkpw(b"a-password-of-some-length", a.encode())
    assert a != filters.aima_bcrypt("a-password-of-some-length", "seed-2", "aima")
    assert a != filters.aima_bcrypt("a-password-of-some-length", "seed-1", "alice")


def test_bcrypt_refuses_an_empty_seed_and_overlong_passwords():
    with pytest.raises(ValueError, match="seed"):
        filters.aima_bcrypt("x" * 20, "", "aima")
    with pytest.raises(ValueError, match="72 bytes"):
        filters.aima_bcrypt("x" * 73, "seed", "aima")


@pytest.mark.parametrize(
    ("users", "expected"),
    [
        ([], []),
        ([{"name": "alice", "password": "p" * 16}], []),
        ([{"name": "alice", "password_hash": "$2y$10$" + "a" * 53}], []),
        ([{"name": "al ice", "password": "p" * 16}], ["aima_auth_users[0].name"]),
        ([{"name": "aima", "password": "p" * 16}], ["used twice"]),
        ([{"name": "a", "password": "tiny9"}], ["shorter than 16"]),
        ([{"name": "a", "password": "p" * 80}], ["longer than 72 bytes"]),
        ([{"name": "a"}], ["exactly one of password and password_hash"]),
        ([{"name": "a", "password": "p" * 16, "password_hash": "$2b$"}], ["exactly one"]),
        ([{"name": "a", "password_hash": "md5:abc"}], ["not a bcrypt hash"]),
        ([{"name": "a", "password": "p" * 16, "role": "x"}], ["unknown keys: role"]),
        (["alice"], ["must be a mapping"]),
    ],
)
def test_user_errors(users, expected):
    errors = filters.aima_auth_user_errors(users, "aima")
    assert len(errors) == len(expected), errors
    for error, fragment in zip(errors, expected, strict=True):
        assert fragment in error
    for user in users:
        if isinstance(user, dict) and user.get("password"):
            assert all(user["password"] not in e for e in errors), "a password leaked"


def test_primary_user_name_is_checked():
    assert filters.aima_auth_user_errors([], "bad name") != []


def test_accounts_keep_given_hashes():
    given = "$2b$10$" + "b" * 53
    accounts = filters.aima_proxy_accounts(
        [{"name": "bob", "password_hash": given}], "aima", "p" * 32, "seed"
    )
    assert [a["name"] for a in accounts] == ["aima", "bob"]
    assert accounts[1]["hash"] == given


def test_tls_names_default_and_given():
    assert filters.aima_tls_names([], {"address": "198.51.100.4"}) == [
        "198.51.100.4",
        "localhost",
    ]
    assert filters.aima_tls_names([], {}) == ["localhost"]
    assert filters.aima_tls_names(["a.lan", "a.lan", "10.0.0.1"], {"address": "x"}) == [
        "a.lan",
        "10.0.0.1",
    ]


def test_site_address_brackets_ipv6():
    assert filters.aima_site_address("2001:db8::1") == "https://[2001:db8::1]"
    assert filters.aima_site_address("10.1.2.3") == "https://10.1.2.3"
    assert filters.aima_site_address("aima.lan") == "https://aima.lan"


def test_subject_alt_name_tells_addresses_from_names():
    assert filters.aima_subject_alt_name("10.1.2.3") == "IP:10.1.2.3"
    assert filters.aima_subject_alt_name("2001:db8::1") == "IP:2001:db8::1"
    assert filters.aima_subject_alt_name("aima.lan") == "DNS:aima.lan"
    assert filters.aima_subject_alt_name("localhost") == "DNS:localhost"


def test_tls_name_errors():
    assert filters.aima_tls_name_errors(["10.0.0.1", "::1", "aima.lan", "localhost"]) == []
    assert filters.aima_tls_name_errors(["http://x", "a b", "-bad-.lan"]) == [
        "http://x",
        "a b",
        "-bad-.lan",
    ]


def test_parse_env_reads_key_value_lines_only():
    text = "# comment\nA_B=xyz\nlower=no\nC=with space\nD=p@ss!word\n"
    assert filters.aima_parse_env(text) == {"A_B": "xyz", "D": "p@ss!word"}


def test_bytes_and_limit_errors():
    assert filters.aima_bytes("512m") == 512 << 20
    assert filters.aima_bytes("2G") == 2 << 30
    assert filters.aima_bytes(1048576) == 1 << 20
    with pytest.raises(ValueError):
        filters.aima_bytes("1.5g")
    services = ["a", "b"]
    good = {
        "a": {"memory": "64m", "cpus": 0.5, "pids": 32},
        "b": {"memory": "1g", "cpus": 0, "pids": 64},
    }
    assert filters.aima_limit_errors(good, services) == []
    bad = {"a": {"memory": "1k", "cpus": -1, "pids": 2, "swap": 1}, "c": {}}
    errors = filters.aima_limit_errors(bad, services)
    assert any("unknown keys: swap" in e for e in errors)
    assert any("below 16m" in e for e in errors)
    assert any("cpus must be >= 0" in e for e in errors)
    assert any("pids must be an integer" in e for e in errors)
    assert any("['b'] is missing" in e for e in errors)
    assert any("unknown services c" in e for e in errors)
    # an optional service (the socket proxy) is checked when given, and never unknown
    assert filters.aima_limit_errors(good, services, ["c"]) == []
    assert filters.aima_limit_errors({**good, "c": {"memory": "64m", "cpus": 0, "pids": 16}},
                                     services, ["c"]) == []
    errors = filters.aima_limit_errors({**good, "c": {"memory": "1k"}}, services, ["c"])
    assert any("['c'].memory is below 16m" in e for e in errors), errors


def test_image_ref_errors():
    digest = "sha256:" + "ab" * 32
    good = {
        "a": "postgres:17.9-bookworm",
        "b": f"caddy:2.10.2-alpine@{digest}",
        "c": f"registry.example.invalid:5000/team/app@{digest}",
        "d": "aima-testbed/postgres:trixie",
        "e": "",
    }
    assert filters.aima_image_ref_errors(good) == []
    bad = {
        "short": "caddy@sha256:abc",
        "upper": "Caddy:2",
        "two": f"caddy:2@{digest}@{digest}",
        "algo": "caddy:2@md5:" + "ab" * 16,
    }
    errors = filters.aima_image_ref_errors(bad)
    assert len(errors) == 4 and all(e.split(":")[0] in bad for e in errors), errors
    assert any("64 hex digits" in e and e.startswith("short") for e in errors)
