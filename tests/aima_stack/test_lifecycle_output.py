"""What gpu_on and gpu_off read from their shell's output, as Ansible hands it over from `raw`
over SSH: one stream (the terminal mixes stderr in) with CR LF line ends. The role's own
variables (vars/main.yml) and filters evaluate it in a real ansible-playbook run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

# What the shells print over SSH: compose's progress, the tagged lines, CR LF line ends.
GPU_OFF_STDOUT = (
    "aima-event: worker stopped\r\n"
    'aima-worker: {"State":"exited","Status":"exited (exit code 0)","ExitCode":0}\r\n'
    "aima-event: no process holds the GPU\r\n"
)
GPU_ON_STDOUT = (
    " Container aima-aima-gpu-worker-1  Starting\r\n"
    " Container aima-aima-gpu-worker-1  Started\r\n"
    "aima-event: worker started\r\n"
    "aima-reservation: null\r\n"
    'aima-health: {"status": "ok", "workers": 1, "jobs": {"queued": 2}}\r\n'
)


def raw_result(stdout: str) -> dict:
    # Ansible's own split (str.splitlines): the CR goes with the line break.
    return {"rc": 0, "stdout": stdout, "stdout_lines": stdout.splitlines()}


def test_events_and_the_workers_state_read_from_a_terminals_output(tmp_path: Path, playbook_runner):
    out = tmp_path / "read.json"
    playbook = tmp_path / "read.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost",
        "gather_facts": False,
        "vars_files": [str(REPO_ROOT / "roles/aima_stack/vars/main.yml")],
        "vars": {
            "aima_stack__gpu_off": raw_result(GPU_OFF_STDOUT),
            "aima_stack__gpu_on": raw_result(GPU_ON_STDOUT),
        },
        "tasks": [{
            "name": "Write what the tasks read",
            "ansible.builtin.copy": {
                "dest": str(out),
                "mode": "0600",
                "content": "{{ {'off': aima_stack__gpu_off_events,"
                           " 'after': aima_stack__worker_after, 'on': aima_stack__gpu_on_events,"
                           " 'stopped': aima_stack__gpu_off_events is contains('worker stopped'),"
                           " 'health': aima_stack__gpu_on.stdout_lines | aima_tagged('health')"
                           " | map('from_json') | first} | to_json }}",
            },
        }],
    }]))
    filters = REPO_ROOT / "roles/aima_stack/filter_plugins"
    proc = playbook_runner(playbook, env_extra={"ANSIBLE_FILTER_PLUGINS": str(filters)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    read = json.loads(out.read_text())
    assert read["off"] == ["worker stopped", "no process holds the GPU"]
    assert read["stopped"] is True
    assert read["after"] == [{"State": "exited", "Status": "exited (exit code 0)", "ExitCode": 0}]
    assert read["on"] == ["worker started"]
    assert read["health"]["workers"] == 1
