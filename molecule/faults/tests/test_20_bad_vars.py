"""Bad role variables: each run fails in validation, names the variable, changes nothing."""

from __future__ import annotations

import json

import faultlib as f
import pytest

# (case id, extra vars as JSON, text the failure must show, via site.yml instead of stack.yml)
CASES = [
    ("port-wrong-type", {"aima_http_port": "eighty"}, "aima_http_port", False),
    ("port-out-of-range", {"aima_http_port": 70000}, "aima_http_port", False),
    ("https-port-zero", {"aima_https_port": 0}, "aima_https_port", False),
    ("same-ports", {"aima_http_port": 8080, "aima_https_port": 8080}, "aima_https_port", False),
    ("device-unknown-value", {"aima_worker_device": "tpu"}, "aima_worker_device", False),
    ("bool-wrong-type", {"aima_teardown_purge_volumes": "maybe"}, "aima_teardown_purge_volumes",
     False),
    ("int-wrong-type", {"aima_worker_max_attempts": "three"}, "aima_worker_max_attempts", False),
    ("negative-upload-limit", {"aima_max_upload_bytes": -5}, "aima_max_upload_bytes", False),
    ("domain-with-scheme", {"aima_domain": "https://aima.example.org/",
                            "aima_acme_email": "ops@example.org"}, "aima_domain", False),
    ("domain-is-ip", {"aima_domain": "203.0.113.7", "aima_acme_email": "ops@example.org"},
     "aima_domain", False),
    ("domain-with-space", {"aima_domain": "aima example.org", "aima_acme_email": "a@b.org"},
     "aima_domain", False),
    ("https-without-email", {"aima_domain": "aima.example.org"}, "aima_acme_email", True),
    ("bind-address-not-ip", {"aima_bind_address": "eth0"}, "aima_bind_address", False),
    ("project-name-invalid", {"aima_project_name": "AIMA Prod"}, "aima_project_name", False),
    ("grace-too-short", {"aima_worker_stop_grace_period_s": 10},
     "aima_worker_stop_grace_period_s", False),
    ("password-too-weak", {"aima_db_password": "weak!Pw#1"}, "aima_db_password", False),
    ("tls-not-a-bool", {"aima_tls": "sometimes"}, "aima_tls", False),
    ("auth-user-without-password", {"aima_auth_users": [{"name": "alice"}]}, "aima_auth_users",
     False),
    ("auth-password-too-short", {"aima_auth_password": "Sh0rtPassw0rd"}, "aima_auth_password",
     False),
    ("auth-users-password-too-short", {"aima_auth_users": [{"name": "bob",
                                                            "password": "Sh0rtBobPass"}]},
     "aima_auth_users", False),
    ("bind-address-ipv6", {"aima_bind_address": "2001:db8::7"}, "aima_bind_address", False),
    ("tls-hosts-garbage", {"aima_tls_hosts": ["https://aima.example.org/", "a b", "-x-"]},
     "aima_tls_hosts", False),
]

# Values that must not appear in the output of the failed run (the rejected passwords).
SECRET_VALUES = {"Sh0rtPassw0rd", "Sh0rtBobPass", "weak!Pw#1"}

SNAPSHOT = rf"""
set -e
cd {f.STACK_DIR}
find . -xdev -path ./images -prune -o -printf '%p %m %U %G %s %T@\n' | sort
find . -xdev -path ./images -prune -o -type f -print0 | sort -z | xargs -0 -r sha256sum
ls -l --time-style=full-iso images 2>/dev/null || true
sha256sum /etc/docker/daemon.json
ls -l --time-style=full-iso /etc/docker
docker ps -a --no-trunc --format '{{{{.ID}}}} {{{{.Names}}}} {{{{.Status}}}}' \
  | sed -E 's/(Up|Exited \([0-9]+\)) .*/\1/'
docker inspect -f '{{{{.Id}}}} {{{{.State.StartedAt}}}} {{{{.RestartCount}}}}' $(docker ps -aq)
docker volume ls -q
docker network ls -q
"""


@pytest.fixture(scope="module")
def before() -> str:
    return f.out(SNAPSHOT)


@pytest.mark.parametrize(
    ("case", "extra", "names", "via_site"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_variable_fails_before_any_change(
    case: str, extra: dict, names: str, via_site: bool, before: str, tally: f.Tally
) -> None:
    tally.bad(f"role variable: {case}")
    run = f.playbook(
        "-e", json.dumps(extra),
        playbook_path="site.yml" if via_site else "playbooks/stack.yml",
    )
    assert run.rc != 0, run.describe()
    assert run.recap.get("failed") == 1 and run.changed == 0, run.describe()
    # what the operator sees about the failure: the failed task's title and its message
    fatal = run.output.find("fatal:")
    assert fatal >= 0, run.describe()
    failure = run.output[run.output.rfind("TASK [", 0, fatal):run.output.find("PLAY RECAP")]
    assert names in failure, f"the failure does not name {names}:\n{run.describe()}"
    # the validation is what failed, not some later step
    assert "argument" in failure.lower() or "TASK [aima_stack : Check " in failure, run.describe()
    secret = [v for v in SECRET_VALUES if v in json.dumps(extra)]
    assert bool(secret) == case.endswith(("password-too-weak", "password-too-short")), case
    for value in secret:
        assert value not in run.output, "the rejected password is printed"
    assert f.out(SNAPSHOT) == before, "the failed run changed the host"
