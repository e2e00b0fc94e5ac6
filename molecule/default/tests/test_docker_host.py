"""Verify docker_host on the Molecule instance: engine, Compose v2, daemon.json, a container."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

# What the scenario's variables say daemon.json must hold: the role's defaults plus the
# operator extras set in molecule.yml, and nothing contributed (no GPU in the testbed).
EXPECTED_DAEMON = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "live-restore": True,
    "default-address-pools": [{"base": "172.30.0.0/16", "size": 24}],
}
TEST_IMAGE = "aima-testbed/debian:trixie"


def test_docker_service_is_running_and_enabled(host):
    service = host.service("docker")
    assert service.is_running
    assert service.is_enabled


def test_compose_v2_plugin_answers(host):
    out = host.check_output("docker compose version --short")
    major = int(out.strip().lstrip("v").split(".")[0])
    assert major >= 2, out


def test_python_docker_sdk_is_importable(host):
    host.run_test("python3 -c 'import docker; print(docker.__version__)'")


def test_daemon_json_holds_exactly_the_merged_variables(host):
    daemon_json = host.file("/etc/docker/daemon.json")
    assert daemon_json.user == "root"
    assert daemon_json.mode == 0o644
    assert json.loads(daemon_json.content_string) == EXPECTED_DAEMON


def test_engine_runs_with_the_rendered_settings(host):
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["LiveRestoreEnabled"] is True
    assert info["LoggingDriver"] == "json-file"
    assert info["ServerVersion"]


@pytest.fixture(scope="module")
def nested_image(host):
    """Copy a testbed image from the controller's engine into the nested engine."""
    instance = host.ansible.get_variables()["inventory_hostname"]
    if not host.run(f"docker image inspect {TEST_IMAGE}").succeeded:
        save = subprocess.Popen(["docker", "save", TEST_IMAGE], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "exec", "-i", instance, "docker", "load"],
            stdin=save.stdout,
            check=True,
            capture_output=True,
        )
        assert save.wait() == 0
    return TEST_IMAGE


def test_nested_container_runs_on_a_bridge_network(host, nested_image):
    out = host.check_output(
        f"docker run --rm --network bridge {nested_image} "
        "sh -c 'echo nested-ok; cat /etc/debian_version'"
    )
    assert out.startswith("nested-ok")


def test_nested_container_logs_are_rotated(host, nested_image):
    cid = host.check_output(f"docker create {nested_image} true")
    try:
        log_config = json.loads(
            host.check_output(f"docker inspect --format '{{{{json .HostConfig.LogConfig}}}}' {cid}")
        )
    finally:
        host.run(f"docker rm {cid}")
    assert log_config == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}


@pytest.mark.skipif(os.environ.get("MOLECULE_SCENARIO_NAME") != "default", reason="default only")
def test_no_nvidia_runtime_without_a_gpu(host):
    info = json.loads(host.check_output("docker info --format '{{json .Runtimes}}'"))
    assert "nvidia" not in info
