"""The bench's SSH target, pure parts: the known_hosts entry, the SSH login's inventory
variables, the inventory writer for both connection types, the per-run key pair, the image
transfer's figures and the two-connection report."""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from aimabench import cli, report
from aimabench import target as bench_target
from aimabench.measure import transfer_figures, transfer_method
from testbed.ssh import SSH_USER, SshLogin, known_hosts_line, make_key_pair
from testbed.target import TargetError, run_args

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBT38TUYF3QxbUBuZZXcN6gInnXXQtYEk6VR3nUxdQYH root@x"


def test_known_hosts_line_names_the_port_and_drops_the_comment():
    line = known_hosts_line("127.0.0.1", 18194, HOST_KEY)
    assert line == f"[127.0.0.1]:18194 {' '.join(HOST_KEY.split()[:2])}\n"
    assert known_hosts_line("server", 22, HOST_KEY).startswith("server ssh-ed25519 ")


@pytest.mark.parametrize("text", ["", "garbage", "-----BEGIN OPENSSH PRIVATE KEY-----"])
def test_known_hosts_line_refuses_what_is_not_a_public_key(text):
    with pytest.raises(TargetError):
        known_hosts_line("127.0.0.1", 2222, text)


def test_ssh_login_host_vars_keep_host_key_checking(tmp_path):
    login = SshLogin.at(18194, tmp_path)
    hv = login.host_vars()
    assert hv["ansible_connection"] == "ssh"
    assert (hv["ansible_host"], hv["ansible_port"], hv["ansible_user"]) == (
        "127.0.0.1", 18194, SSH_USER)
    assert SSH_USER != "root"
    assert hv["ansible_become"] is True
    assert hv["ansible_ssh_private_key_file"] == str(tmp_path / "id_ed25519")
    args = str(hv["ansible_ssh_common_args"])
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in args
    assert "StrictHostKeyChecking=yes" in args
    assert "StrictHostKeyChecking=no" not in args
    cmd = login.command("true")
    assert cmd[0] == "ssh" and f"{SSH_USER}@127.0.0.1" in cmd and "18194" in cmd


@pytest.fixture
def archives(tmp_path, monkeypatch):
    """The bench's archive directory with an empty file per archive the demo names, and one
    per image (the copy baseline's)."""
    directory = tmp_path / "images"
    directory.mkdir()
    for entry in yaml.safe_load(bench_target.ARCHIVE_LIST.read_text()):
        (directory / Path(entry["path"]).name).write_bytes(b"")
        (directory / bench_target.archive_name(entry["name"])).write_bytes(b"")
    monkeypatch.setattr(bench_target, "ARCHIVES", directory)
    return directory


def read_inventory(inventory: Path) -> tuple[dict, dict]:
    hosts = yaml.safe_load(inventory.read_text())
    group_vars = yaml.safe_load((inventory.parent / "group_vars" / "aima" / "main.yml").read_text())
    return hosts, group_vars


def test_write_inventory_over_ssh(tmp_path, archives):
    inventory = tmp_path / "inv" / "hosts.yml"
    inventory.parent.mkdir()
    login = SshLogin.at(18194, tmp_path / "ssh")
    bench_target.write_inventory(inventory, "aima-bench-ssh", login)
    hosts, group_vars = read_inventory(inventory)
    assert hosts == {"aima": {"hosts": {"aima-bench-ssh": login.host_vars()}}}
    paths = [Path(e["path"]) for e in group_vars["aima_image_archives"]]
    assert paths and all(p.parent == archives and p.is_file() for p in paths)
    assert group_vars["aima_upload_rate_per_minute"] == 0
    # The copy baseline: the same images, one archive each (the stack's share one archive).
    baseline = yaml.safe_load((inventory.parent / bench_target.BASELINE_ARCHIVES).read_text())
    each = baseline["aima_image_archives"]
    assert [e["name"] for e in each] == [e["name"] for e in group_vars["aima_image_archives"]]
    assert len({e["path"] for e in each}) == len(each) > len(set(paths))
    assert Path(each[0]["path"]).name == "aima-testbed_postgres_trixie.tar"


def test_write_inventory_over_docker(tmp_path, archives):
    inventory = tmp_path / "inv" / "hosts.yml"
    inventory.parent.mkdir()
    bench_target.write_inventory(inventory, "aima-bench", None)
    hosts, _ = read_inventory(inventory)
    host = hosts["aima"]["hosts"]["aima-bench"]
    assert host["ansible_connection"] == "community.docker.docker"
    assert "ansible_ssh_private_key_file" not in host


def test_write_inventory_names_missing_archives(tmp_path, archives):
    next(archives.iterdir()).unlink()
    with pytest.raises(bench_target.BenchError, match="archives missing"):
        bench_target.write_inventory(tmp_path / "hosts.yml", "aima-bench", None)


def test_ssh_target_runs_the_sshd_image_and_publishes_sshd_on_loopback(tmp_path):
    target = bench_target.BenchTarget("b-ssh", 18193, ssh_port=18194, key_dir=tmp_path)
    assert target.connection == "ssh" and target.image == "aima-testbed/sshd:trixie"
    args = run_args(target.name, target.volume, target.port, "x=true", image=target.image,
                    ssh_port=target.ssh_port)
    assert args[-1] == "aima-testbed/sshd:trixie"
    assert "127.0.0.1:18194:22" in args and "127.0.0.1:18193:443" in args
    docker = bench_target.BenchTarget("b", 18192)
    assert docker.connection == "docker" and docker.image is None
    plain = run_args("b", "b-docker", 18192, "x=true")
    assert plain[-1] == "aima-testbed/platform:trixie"
    assert not any(a.endswith(":22") for a in plain)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")
def test_key_pair_is_private_and_new_each_time(tmp_path):
    key_dir = tmp_path / "ssh"
    key = make_key_pair(key_dir)
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.with_suffix(".pub").read_text()
    assert first.startswith("ssh-ed25519 ")
    make_key_pair(key_dir)
    assert key.with_suffix(".pub").read_text() != first


def task(name: str, seconds: float, role: str = "aima_stack") -> dict:
    return {"name": name, "role": role, "seconds": seconds, "changed": True}


def test_transfer_figures_sum_the_transfer_and_load_tasks():
    tasks = [
        task("Install rsync on the host for the archive transfer", 2.0),
        task("Send the archives of the missing images to the host (rsync, compressed)", 9.0),
        task("Load the archives of the missing images", 13.0),
        task("Copy the archives of the missing images to the host", 0.5),
        task("Install Docker Engine", 15.0, role="docker_host"),
    ]
    assert transfer_figures(tasks) == {"transfer_s": 11.5, "load_s": 13.0}
    assert transfer_figures([]) == {"transfer_s": 0.0, "load_s": 0.0}
    assert transfer_method(tasks) == "rsync"
    assert transfer_method(tasks[3:]) == "copy"
    assert transfer_method([]) == "none"


def test_switch_repeat_defaults_to_repeat():
    assert cli.parse_args(["--quick"], "d").switch_repeat == 1
    assert cli.parse_args(["--quick", "--switch-repeat", "5"], "d").switch_repeat == 5
    assert cli.parse_args(["--repeat", "2"], "d").switch_repeat == 2
    with pytest.raises(SystemExit):
        cli.parse_args(["--switch-repeat", "0"], "d")


def test_connections_option():
    assert cli.parse_args([], "d").connections == ["docker", "ssh"]
    assert cli.parse_args(["--connections", "ssh"], "d").connections == ["ssh"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--connections", "telnet"], "d")


def fake_bench(first: bool) -> SimpleNamespace:
    r: dict = {
        "provision_s": [100.0], "transfer_s": [10.0], "transfer_mib": [1300.0], "load_s": [14.0],
        "provision_role:aima_stack": [60.0], "rerun_s": [14.0], "rerun_changed": [0],
        "gpu_on_ours_s": [3.0], "gpu_on_raw_s": [0.4], "gpu_on_raw_healthy_s": [1.5],
        "gpu_on_ratio_raw": [7.5], "gpu_on_ratio_raw_healthy": [2.0], "gpu_off_ours_s": [3.0],
        "gpu_off_raw_s": [2.0], "gpu_off_ratio_raw": [1.5], "ttfr_ours_s": [4.0],
        "ttfr_raw_s": [1.5], "transfer_method": "rsync", "ansible_floor_s": [1.2],
        "gpu_on_ratio_floor": [1.8], "gpu_off_ratio_floor": [1.6]}
    if first:
        r.update({"rest_base_mib": [100.0], "image_mib": {"a:b": 10.0},
                  "upload_jobs_per_s": [60.0], "upload_ms": [50.0], "e2e_client_ms": [70.0],
                  "analysis_ms": [1.0], "overhead_ms": [9.0], "queue_wait_ms": [4.0],
                  "worker_total_minus_analysis_ms": [2.0]})
    return SimpleNamespace(results=r, profiles={})


def test_report_shows_both_connections_with_the_transfer():
    meta = {"date": "today", "machine": "2 cores", "repeat": 1, "quick": True}
    text = report.report({"docker": fake_bench(True), "ssh": fake_bench(False)}, meta)
    assert "Docker connection" in text and "SSH connection" in text
    assert text.count("1. fresh provision site.yml") == 2
    assert text.count("image archives to the host, rsync (s)") == 2
    assert "130.0" in text  # 1300 MiB in 10 s
    assert text.count("4. base stack memory at rest") == 1
    assert text.count("best any playbook can do, gpu_off ratio") == 2
