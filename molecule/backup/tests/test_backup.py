"""Backup on host A, restore on host B: the move to another server (issue 15).

The tests run in file order and build on each other. Every step is a real `ansible-playbook
site.yml --limit <host> --tags ...` run; the state is read with psql and redis-cli in the
instances' containers (aimakit.probes) and through the proxy (aimakit.api). None of them takes
testinfra's `host` fixture: it would run the whole file once per platform.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aimakit.ansible import Run, Runner
from aimakit.api import Api, env_values
from aimakit.media import png
from aimakit.probes import Instance, wait_for

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
SCENARIO = os.environ.get("MOLECULE_SCENARIO_NAME", "backup")
MEDIA = "/var/lib/docker/volumes/aima_media/_data"
A = Instance(f"aima-molecule-{SCENARIO}-a", media_dir=MEDIA)
B = Instance(f"aima-molecule-{SCENARIO}-b", media_dir=MEDIA)
FETCHED = EPHEMERAL / "backups"
RUNNER = Runner(EPHEMERAL / "inventory", PROJECT, log_dir=EPHEMERAL / "backup-runs")
BASE = ("reverse-proxy", "aima-backend", "database", "message-queue")
STATE: dict[str, Any] = {}

JOBS_SQL = "SELECT * FROM jobs ORDER BY id"
RUNS_SQL = "SELECT * FROM job_runs ORDER BY id"
DEAD_SQL = "SELECT * FROM dead_letters ORDER BY id"


@pytest.fixture(scope="module", autouse=True)
def _needs_molecule():
    if not (EPHEMERAL / "inventory").exists():
        pytest.skip("runs as the Molecule verifier (MOLECULE_EPHEMERAL_DIRECTORY)")


def play(target: Instance, *args: str, label: str = "") -> Run:
    return RUNNER("--limit", target.name, *args, label=label)


def ok(run: Run) -> Run:
    assert run.rc == 0, run.describe()
    return run


def refused(run: Run, *words: str) -> Run:
    """A run that failed before changing anything, with a message naming the problem."""
    assert run.rc != 0, run.describe()
    for word in words:
        assert word in run.output, (word, run.describe())
    return run


def restore_on_b_refused(source: str | Path, label: str, *words: str) -> Run:
    """--tags restore on B from source: refused (refused()), naming the problem."""
    return refused(play(B, "--tags", "restore", "-e", f"aima_restore_from={source}",
                        label=label), *words)


def snapshot(target: Instance) -> dict[str, Any]:
    """Every row of the three tables and the sha256 of every media file."""
    return {"jobs": {r["id"]: r for r in target.sql(JOBS_SQL)},
            "runs": target.sql(RUNS_SQL), "dead": target.sql(DEAD_SQL),
            "media": target.media_checksums()}


def containers(target: Instance) -> dict[str, tuple[str, str]]:
    return {c["Name"]: (c["Id"], c["State"]["StartedAt"]) for c in target.project_containers()}


def secrets_of(target: Instance) -> set[str]:
    values = env_values(target.read("/opt/aima/.env"))
    found = {v for k, v in values.items() if k.endswith("_PASSWORD")}
    found.add(env_values(target.read("/opt/aima/credentials"))["AIMA_LOGIN_PASSWORD"])
    restic = target.sh("cat /var/backups/aima/password", check=False)
    if restic.returncode == 0:
        found.add(restic.stdout.decode().strip())
    return {v for v in found if len(v) >= 16}


def copy_backup(name: str) -> Path:
    """A copy of the fetched backup, to damage."""
    dest = EPHEMERAL / "damaged" / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(STATE["fetched"], dest)
    return dest


# ----------------------------------------------------------------- A: data, then the backup
def test_a_holds_done_queued_and_dead_jobs_and_media():
    # The controller's side starts empty (Molecule keeps its ephemeral directory across runs).
    for leftover in (FETCHED, EPHEMERAL / "damaged"):
        shutil.rmtree(leftover, ignore_errors=True)
    api = Api.for_container(A.name)
    ok(play(A, "--tags", "gpu_on", label="a-gpu-on"))
    done = [api.submit(f"done-{i}.png", png(40, 30, seed=i)) for i in range(4)]
    for job in done:
        assert api.wait_job(job["id"], timeout=90)["status"] == "done"
    # A message that names no job: the worker keeps it as a dead letter.
    A.redis("XADD", "aima:jobs", "*", "job_id", str(uuid.uuid4()), "v", "1")
    wait_for("the dead letter",
             lambda: A.sql("SELECT count(*) AS n FROM dead_letters")[0]["n"] == 1)
    ok(play(A, "--tags", "gpu_off", label="a-gpu-off"))
    queued = [api.submit(f"queued-{i}.png", png(64, 48, seed=100 + i, noise=True))
              for i in range(3)]
    time.sleep(2)
    assert {api.job(j["id"])["status"] for j in queued} == {"queued"}
    # One left `running` with an open attempt, as a worker killed mid-job leaves it: the dump
    # holds it so, and on B it must run again, once.
    running = queued[0]["id"]
    A.sql_exec(
        "UPDATE jobs SET status = 'running', attempts = 1, started_at = clock_timestamp(),"
        f" worker = 'gpu-worker-1', device = 'cpu' WHERE id = '{running}';"
        " INSERT INTO job_runs (job_id, attempt, worker, device, message_id)"
        f" VALUES ('{running}', 1, 'gpu-worker-1', 'cpu', '0-1')")
    assert api.job(running)["status"] == "running"
    STATE["running"] = running
    STATE["api_a"] = api
    STATE["done"] = [j["id"] for j in done]
    STATE["queued"] = [j["id"] for j in queued]
    STATE["secrets"] = secrets_of(A) | secrets_of(B)


def test_backup_of_a_while_uploads_go_on_is_fetched_to_the_controller():
    """The base services stay up: uploads during the backup are answered 201."""
    api: Api = STATE["api_a"]
    before = snapshot(A)
    during: list[dict[str, Any]] = []
    stop = threading.Event()

    def upload_while_backing_up() -> None:
        seed = 1000
        while not stop.is_set():
            during.append(api.submit(f"during-{seed}.png", png(32, 32, seed=seed)))
            seed += 1
            time.sleep(1.0)

    uploader = threading.Thread(target=upload_while_backing_up, daemon=True)
    uploader.start()
    try:
        run = ok(play(A, "--tags", "backup", label="a-backup"))
    finally:
        stop.set()
        uploader.join(30)
    assert during, "no upload was answered while the backup ran"
    assert "Backup " in run.output and "Fetched to the controller" in run.output, run.output[-3000:]
    stamps = sorted((FETCHED / A.name).iterdir())
    assert len(stamps) == 1, stamps
    fetched = stamps[0]
    assert {p.name for p in fetched.iterdir()} == {"repository.tar", "backup.json", "password"}
    assert fetched.stat().st_mode & 0o777 == 0o700
    for item in fetched.iterdir():
        assert item.stat().st_mode & 0o777 == 0o600, item
    record = json.loads((fetched / "backup.json").read_text())
    assert record["repository_tar"]["size"] == (fetched / "repository.tar").stat().st_size
    assert record["content"]["counts"]["dead_letters"] == 1
    assert record["content"]["media_files"] >= len(before["media"])
    # On the host: root only.
    modes = A.out("stat -c '%n %a %U' /var/backups/aima /var/backups/aima/password "
                  "/var/backups/aima/repository").split("\n")
    assert modes[:3] == ["/var/backups/aima 700 root", "/var/backups/aima/password 600 root",
                         "/var/backups/aima/repository 700 root"], modes
    STATE.update(fetched=fetched, before=before, during=[j["id"] for j in during],
                 backup_run=run)


def test_backups_are_pruned_to_aima_backup_keep():
    refused(play(A, "--tags", "backup", "-e", "aima_backup_keep=0", label="a-keep-0"),
            "aima_backup_keep=0 must be 1 or more")
    ok(play(A, "--tags", "backup", "-e", "aima_backup_keep=1", "-e", "aima_backup_fetch_dir=",
            label="a-backup-keep-1"))
    listing = A.out("RESTIC_PASSWORD_FILE=/var/backups/aima/password restic --no-cache "
                    "-r /var/backups/aima/repository snapshots --json")
    assert len(json.loads(listing)) == 1, listing


def test_a_is_wiped():
    STATE["after_backup_a"] = snapshot(A)
    ok(play(A, "--tags", "teardown", "-e", "aima_teardown_purge_volumes=true", label="a-purge"))
    assert "aima_media" not in A.docker("volume", "ls", "-q")


# ----------------------------------------------------------------- B: bad inputs first
def test_b_refuses_a_missing_backup():
    STATE["b_containers"] = containers(B)
    run = restore_on_b_refused("/nonexistent/aima-backup", "b-missing", "no backup there")
    assert run.changed == 0, run.describe()


def test_b_refuses_an_incomplete_backup():
    damaged = copy_backup("incomplete")
    (damaged / "repository.tar").unlink()
    run = restore_on_b_refused(damaged, "b-incomplete", "is incomplete, missing: repository.tar")
    assert run.changed == 0, run.describe()


def test_b_refuses_a_truncated_archive():
    damaged = copy_backup("truncated")
    tar = damaged / "repository.tar"
    os.truncate(tar, tar.stat().st_size // 2)
    run = restore_on_b_refused(damaged, "b-truncated", "is truncated")
    assert run.changed == 0, run.describe()


def test_b_refuses_a_tampered_archive():
    damaged = copy_backup("tampered")
    tar = damaged / "repository.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    run = restore_on_b_refused(damaged, "b-tampered", "does not match its checksum in backup.json")
    assert run.changed == 0, run.describe()


def test_b_refuses_a_repository_damaged_inside_a_consistent_archive():
    """A pack file changed inside the tar and backup.json made to fit: restic check finds it."""
    damaged = copy_backup("repacked")
    work = damaged / "unpacked"
    work.mkdir()
    shutil.unpack_archive(damaged / "repository.tar", work, "tar")
    packs = sorted((work / "repository" / "data").rglob("*"), key=lambda p: p.stat().st_size)
    pack = [p for p in packs if p.is_file()][-1]
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0xFF
    pack.write_bytes(bytes(data))
    (damaged / "repository.tar").unlink()
    shutil.make_archive(str(damaged / "repository"), "tar", work)
    shutil.rmtree(work)
    record = json.loads((damaged / "backup.json").read_text())
    tar = damaged / "repository.tar"
    record["repository_tar"] = {"size": tar.stat().st_size,
                                "sha256": hashlib.sha256(tar.read_bytes()).hexdigest()}
    (damaged / "backup.json").write_text(json.dumps(record))
    restore_on_b_refused(damaged, "b-repacked", "restic check found the backup repository")
    assert containers(B) == STATE["b_containers"]
    assert B.sql("SELECT count(*) AS n FROM jobs")[0]["n"] == 0
    assert B.out("ls -A /var/backups/aima").split() == [], "the staging directory was left"


# ----------------------------------------------------------------- B: the restore
def test_restore_on_b_brings_back_every_row_and_file():
    started = time.monotonic()
    run = ok(play(B, "--tags", "restore", "-e", f"aima_restore_from={STATE['fetched']}",
                  label="b-restore"))
    STATE["restore_s"] = time.monotonic() - started
    assert "Restored " in run.output, run.output[-3000:]
    a_before, a_after, b = STATE["before"], STATE["after_backup_a"], snapshot(B)
    # Every job from before the backup, identical; of those uploaded during it, each is either
    # there (row and file, identical) or not at all; nothing else.
    assert set(a_before["jobs"]) <= set(b["jobs"])
    assert set(b["jobs"]) <= set(a_before["jobs"]) | set(STATE["during"])
    for job_id, row in b["jobs"].items():
        assert row == a_after["jobs"][job_id] or row == a_before["jobs"].get(job_id), job_id
    assert b["runs"] == [r for r in a_after["runs"] if r["job_id"] in b["jobs"]]
    assert b["dead"] == a_before["dead"] and len(b["dead"]) == 1
    # Media: exactly the restored jobs' files, each identical to A's and to its row's sha256.
    assert set(b["media"]) == {row["storage_name"] for row in b["jobs"].values()}
    for job_id, row in b["jobs"].items():
        assert b["media"][row["storage_name"]] == row["sha256"] == \
            a_after["media"][row["storage_name"]], job_id
    STATE["b_restored"] = b
    # The login is A's.
    credentials = "/opt/aima/credentials"
    assert env_values(B.read(credentials)) == env_values(A.read(credentials))
    assert B.healthy(BASE)


def test_gpu_on_b_works_off_the_queued_jobs_once():
    ok(play(B, "--tags", "gpu_on", label="b-gpu-on"))
    api = Api.for_container(B.name)
    waiting = [i for i, r in STATE["b_restored"]["jobs"].items() if r["status"] != "done"]
    assert set(STATE["queued"]) <= set(waiting)
    for job_id in waiting:
        assert api.wait_job(job_id, timeout=120)["status"] == "done", job_id
    rows = B.jobs_by_id(list(STATE["b_restored"]["jobs"]))
    assert len(rows) == len(STATE["b_restored"]["jobs"])
    assert all(r["status"] == "done" and r["done_runs"] == 1 for r in rows.values()), rows
    # The job the dump held as running: its open attempt closed as abandoned, then done once.
    again = rows[STATE["running"]]
    assert again["attempts"] == 2 and again["runs"] == 2, again
    assert len(B.sql(DEAD_SQL)) == 1  # no message twice, none unknown
    wait_for("an empty queue", lambda: B.pending_count() == 0 and
             B.redis("XLEN", "aima:jobs").strip() == "0", timeout=30)


def test_site_yml_on_b_after_the_restore_changes_nothing():
    run = ok(play(B, label="b-site"))
    assert run.changed == 0, run.describe()


def test_restore_onto_b_with_data_is_refused_without_the_override():
    before = containers(B)
    run = restore_on_b_refused(STATE["fetched"], "b-has-data", "holds data",
                               "aima_restore_overwrite=true")
    assert run.changed == 0, run.describe()
    assert containers(B) == before


def test_a_comes_back_from_its_own_backup_directory_after_the_purge():
    """The host-path form: A, purged, restored from /var/backups/aima (its repository and
    password), newest snapshot: the one taken after the uploads had stopped."""
    run = ok(play(A, "--tags", "restore", "-e", "aima_restore_from=/var/backups/aima",
                  label="a-restore-host"))
    assert "(host)" in run.output, run.output[-3000:]
    want, got = STATE["after_backup_a"], snapshot(A)
    assert got["jobs"] == want["jobs"] and got["runs"] == want["runs"]
    assert got["dead"] == want["dead"] and got["media"] == want["media"]
    assert A.healthy(BASE)


def test_no_secret_in_any_output():
    secrets = STATE["secrets"] | secrets_of(B)
    assert len(secrets) >= 5
    for run in RUNNER.runs:
        for value in secrets:
            assert value not in run.output, f"a secret in the output of {run.args}"


def test_report_figures():
    record = json.loads((STATE["fetched"] / "backup.json").read_text())
    print(f"\nbackup figures: backup {STATE['backup_run'].seconds:.1f} s, restore "
          f"{STATE['restore_s']:.1f} s, {record['content']['total_files']} files, "
          f"{record['content']['total_bytes']} bytes, repository tar "
          f"{record['repository_tar']['size']} bytes")
