"""The shared test kit (testkit/aimakit): its payloads are what they claim, its API client
verifies the proxy's certificate for the right name and keeps its login, its playbook runner
reads the recap."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import os
import ssl
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from aimakit import media
from aimakit.ansible import Runner, parse_recap, total
from aimakit.api import Api, ApiError, basic, env_values
from PIL import Image

from tests.conftest import REPO_ROOT


# ------------------------------------------------------------------------- media
@pytest.mark.parametrize("noise", [False, True])
def test_png_is_valid_and_unique_per_seed(noise: bool) -> None:
    a, b = media.png(seed=1, noise=noise), media.png(seed=2, noise=noise)
    assert a != b and media.png(seed=1, noise=noise) == a
    with Image.open(io.BytesIO(a)) as img:
        img.load()
        assert img.size == (48, 32) and img.mode == "RGB"


def test_noise_png_is_incompressible_and_a_large_png_is_not() -> None:
    assert len(media.png(width=600, height=600, seed=5, noise=True)) > 1_000_000
    big = media.large_png(4000, 3000, seed=1)
    assert len(big) < 200_000
    with Image.open(io.BytesIO(big)) as img:
        assert img.size == (4000, 3000)


def test_png_bomb_claims_many_pixels_in_few_bytes() -> None:
    bomb = media.png_bomb()
    assert len(bomb) < 200_000
    with pytest.warns(Image.DecompressionBombWarning), Image.open(io.BytesIO(bomb)) as img:
        assert img.size[0] * img.size[1] > 100_000_000


def test_wav_has_riff_header() -> None:
    data = media.wav(0.5)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) == 44 + 4000


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGBA"), ("JPEG", "RGB"), ("WEBP", "RGB")])
def test_image_in_pillow_formats(fmt: str, mode: str) -> None:
    data = media.image(fmt, size=(20, 10), seed=3, mode=mode)
    assert data != media.image(fmt, size=(20, 10), seed=4, mode=mode)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == fmt and img.size == (20, 10)


def test_multipart_is_well_formed() -> None:
    body, ctype = media.multipart("a.png", b"DATA", "image/png")
    boundary = ctype.split("boundary=")[1].encode()
    assert body.startswith(b"--" + boundary + b"\r\n")
    assert body.endswith(b"--" + boundary + b"--\r\n")
    assert b'name="file"; filename="a.png"' in body and b"\r\n\r\nDATA\r\n" in body
    bare, _ = media.multipart(None, b"X", "", field_name="other")
    assert b'name="other"\r\n\r\nX' in bare


# ------------------------------------------------------------------------- the API client
def _ca_and_cert(tmp_path: Path, address: str) -> tuple[str, Path, Path]:
    """A root CA (PEM) and a server certificate for ADDRESS (an IP name) signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("kit CA")).issuer_name(name("kit CA"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .add_extension(x509.KeyUsage(
              digital_signature=True, key_cert_sign=True, crl_sign=True,
              content_commitment=False, key_encipherment=False, data_encipherment=False,
              key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("kit server")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_path, key_path


class _Backend(BaseHTTPRequestHandler):
    """A stand-in for the proxy + API: basic auth, POST /api/jobs, GET /api/jobs/<id>."""

    protocol_version = "HTTP/1.1"  # keep-alive
    polls = 0
    ports: ClassVar[set[int]] = set()

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        _Backend.ports.add(self.client_address[1])
        if self.headers.get("Authorization") != basic("op", "secret"):
            self._answer(401, {"error": "proxy_error"})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        _Backend.polls += 1
        self._answer(200, {"id": self.path.rsplit("/", 1)[1],
                           "status": "done" if _Backend.polls >= 3 else "queued"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self._authorized():
            return
        ok = b'filename="a.png"' in body and self.headers["Content-Type"].startswith("multipart")
        self._answer(201 if ok else 400, {"id": "j1", "size": len(body)})


@pytest.fixture
def https_backend(tmp_path: Path) -> Iterator[tuple[int, str]]:
    ca, cert, key = _ca_and_cert(tmp_path, "10.9.8.7")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _Backend.polls, _Backend.ports = 0, set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], ca
    server.shutdown()
    server.server_close()


def test_api_checks_the_certificate_for_the_targets_address(https_backend, tmp_path) -> None:
    port, ca = https_backend
    api = Api("127.0.0.1", port, ca=ca, auth=("op", "secret"), tls_name="10.9.8.7")
    assert api.submit("a.png", media.png())["id"] == "j1"
    assert api.wait_job("j1", every=0.01)["status"] == "done"
    # the certificate names 10.9.8.7, not the address connected to
    with pytest.raises(ssl.SSLCertVerificationError):
        Api("127.0.0.1", port, ca=ca, auth=("op", "secret")).health()
    # and a certificate from another CA is refused
    (tmp_path / "other").mkdir()
    other, _, _ = _ca_and_cert(tmp_path / "other", "10.9.8.7")
    with pytest.raises(ssl.SSLCertVerificationError):
        Api("127.0.0.1", port, ca=other, tls_name="10.9.8.7").health()


def test_api_login_and_errors(https_backend) -> None:
    port, ca = https_backend
    api = Api("127.0.0.1", port, ca=ca, auth=("op", "secret"), tls_name="10.9.8.7")
    assert api.anonymous().request("GET", "/api/jobs/x").status == 401
    assert api.as_user("op", "wrong").request("GET", "/api/jobs/x").status == 401
    with pytest.raises(ApiError):
        api.anonymous().job("x")
    with pytest.raises(ApiError):
        api.anonymous().submit("a.png", b"data")
    raw = api.send("GET", "/api/jobs/y")
    assert raw.status == 200 and raw.json()["id"] == "y"


def test_keep_alive_reuses_one_connection_per_thread(https_backend) -> None:
    port, ca = https_backend
    kept = Api("127.0.0.1", port, ca=ca, auth=("op", "secret"), tls_name="10.9.8.7",
               keep_alive=True)
    for _ in range(4):
        kept.job("k")
    assert len(_Backend.ports) == 1
    fresh = Api("127.0.0.1", port, ca=ca, auth=("op", "secret"), tls_name="10.9.8.7")
    for _ in range(3):
        fresh.job("f")
    assert len(_Backend.ports) == 4


def test_env_values_skip_comments() -> None:
    assert env_values("# x=1\nA=b=c\n\nB = 2\n") == {"A": "b=c", "B": "2"}


# ------------------------------------------------------------------------- the runner
RECAP_TEXT = """
PLAY RECAP *********************************************************************
host-a   : ok=12  changed=3  unreachable=0  failed=0  skipped=4  rescued=0  ignored=1
host-b   : ok=10  changed=0  unreachable=0  failed=1  skipped=2  rescued=0  ignored=0
"""


def test_parse_recap_per_host_and_total() -> None:
    hosts = parse_recap(RECAP_TEXT)
    assert hosts["host-a"] == {"ok": 12, "changed": 3, "unreachable": 0, "failed": 0,
                               "skipped": 4, "rescued": 0, "ignored": 1}
    assert total(hosts)["changed"] == 3 and total(hosts)["failed"] == 1


def test_runner_runs_a_playbook_and_reads_its_recap(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    kit-host:\n      ansible_connection: local\n"
                         f"      ansible_python_interpreter: {sys.executable}\n")
    book = tmp_path / "book.yml"
    book.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.command: 'true'\n"
        "      changed_when: true\n"
        "    - ansible.builtin.debug:\n        msg: hello\n")
    started: list[bool] = []
    runner = Runner(inventory, REPO_ROOT, log_dir=tmp_path / "logs")
    run = runner(playbook_path=str(book), label="kit", on_start=lambda: started.append(True))
    assert run.rc == 0, run.describe()
    assert run.changed == 1 and run.hosts["kit-host"]["ok"] == 2
    assert started == [True] and runner.runs == [run]
    assert (tmp_path / "logs" / "01-kit.log").read_text().startswith("$ ")



def test_molecule_playbook_uses_the_scenarios_inventory_and_extra_vars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aimakit.ansible import molecule_playbook

    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    scenario-host:\n      ansible_connection: local\n"
                         f"      ansible_python_interpreter: {sys.executable}\n")
    monkeypatch.setenv("MOLECULE_INVENTORY_FILE", str(inventory))
    book = tmp_path / "book.yml"
    book.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.assert:\n        that: wanted == 'yes'\n")
    run = molecule_playbook(book, {"wanted": "yes"})
    assert run.rc == 0 and run.recap["failed"] == 0 and "scenario-host" in run.hosts, run.output
    failed = molecule_playbook(book, {"wanted": "no"})
    assert failed.rc != 0 and failed.recap["failed"] == 1, failed.output


# ------------------------------------------------------------------------- the probes
FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$FAKE_DOCKER_LOG"
if [ "$1" = exec ] && [ "$4" = sh ]; then shift 3; exec "$@"; fi
case "$*" in
  *psql*) echo '[{"id": "a", "n": 1}]' ;;
  *XPENDING*) printf '3\\n1-0\\n2-0\\n' ;;
  "inspect aima-database-1") echo '[{"Id": "c1", "RestartCount": 0, "State": {"Status":
    "running", "Running": true, "Health": {"Status": "healthy"}, "ExitCode": 0,
    "StartedAt": "t", "Pid": 7}}]' ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from aimakit.probes import Instance

    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(tmp_path / "docker.log"))
    return Instance("kit-target"), tmp_path / "docker.log"


def test_probes_read_the_database_the_queue_and_container_states(instance) -> None:
    from aimakit.probes import CommandError, wait_for

    target, log = instance
    assert target.sql("SELECT 1") == [{"id": "a", "n": 1}]
    assert target.pending_count() == 3
    assert target.state("database")["health"] == "healthy"
    assert target.healthy(["database"]) and target.state("message-queue") == {}
    with pytest.raises(CommandError):
        target.docker("ps")
    calls = log.read_text()
    assert "exec -i kit-target sh -c" in calls
    assert "psql -U aima -d aima" in calls and "json_agg" in calls
    assert "-e REDISCLI_AUTH aima-message-queue-1 redis-cli --no-auth-warning --user aima-app" \
        in calls
    assert wait_for("a value", lambda: 5, timeout=1) == 5


def test_an_exec_the_runtime_never_started_is_run_once_more(monkeypatch) -> None:
    """rc 126 with runc's "OCI runtime exec failed": nothing ran, so the kit runs it again; any
    other failure (126 included) is reported as it is, after one try."""
    import subprocess

    from aimakit import probes

    calls: list[list[str]] = []
    replies = [
        subprocess.CompletedProcess([], 126, b"OCI runtime exec failed: exec failed: unable to "
                                             b"start container process: read init-p: connection "
                                             b"reset by peer: unknown", b""),
        subprocess.CompletedProcess([], 0, b"ok\n", b""),
    ]

    def fake_run(argv, **_kwargs):
        calls.append(argv)
        return replies[len(calls) - 1]

    monkeypatch.setattr(probes.subprocess, "run", fake_run)
    monkeypatch.setattr(probes.time, "sleep", lambda _s: None)
    assert probes.Instance("target").out("true") == "ok\n"
    assert len(calls) == 2

    calls.clear()
    replies[0] = subprocess.CompletedProcess([], 126, b"", b"sh: 1: ./x: Permission denied")
    with pytest.raises(probes.CommandError, match="rc=126"):
        probes.Instance("target").out("./x")
    assert len(calls) == 1
