"""The final audit, after every fault: each job the API accepted is done exactly once with its
file intact (or, where retention removed the file on purpose, its row and result kept); the
jobs the suite made fail on purpose failed once, with their reason; no secret in any output."""

from __future__ import annotations

import faultlib as f
import pytest

JOB_TIMEOUT = 240


class TestFinalAudit:
    @pytest.mark.usefixtures("api")
    def test_every_accepted_job_done_exactly_once(self, tally: f.Tally) -> None:
        run = f.playbook("--tags", "gpu_on")
        assert run.rc == 0, run.describe()
        ids = list(f.TALLY.accepted)

        def all_done() -> dict | None:
            rows = f.jobs_by_id(ids)
            return rows if len(rows) == len(ids) and all(
                r["status"] == "done" for r in rows.values()) else None

        rows = f.wait_for(f"{len(ids)} job(s) done", all_done, timeout=JOB_TIMEOUT, interval=2)
        lost = [i for i in ids if i not in rows or rows[i]["status"] != "done"]
        duplicated = [i for i, r in rows.items() if r["done_runs"] != 1]
        media = f.media_checksums()
        removed = f.TALLY.media_removed
        damaged = [i for i, r in rows.items()
                   if r["sha256"] != f.TALLY.accepted[i]
                   or (i not in removed and media.get(r["storage_name"]) != r["sha256"])
                   or (i in removed and r["storage_name"] in media)]
        failed = f.jobs_by_id(f.TALLY.failed_on_purpose)
        wrongly_failed = [i for i, r in failed.items()
                          if r["status"] != "failed" or r["done_runs"] != 0 or not r["error"]]
        total = f.sql("SELECT count(*) AS n FROM jobs")[0]["n"]
        tally.audit = {"jobs_in_database": total, "jobs_lost": len(lost),
                       "jobs_duplicated": len(duplicated), "files_damaged": len(damaged),
                       "files_removed_by_retention": len(removed),
                       "jobs_failed_on_purpose": len(failed)}
        assert (lost, duplicated, damaged, wrongly_failed) == ([], [], [], [])
        assert len(failed) == len(f.TALLY.failed_on_purpose)
        assert total == len(ids) + len(failed), "the database holds jobs nobody was told about"
        assert f.pending_count() == 0

    def test_no_secret_in_any_ansible_output(self) -> None:
        texts = [r.output for r in f.RUNS]
        log = f.EPHEMERAL / "ansible.log"
        texts.append(log.read_text(errors="replace"))
        assert any("-vvv" in r.args for r in f.RUNS)
        for key, value in f.secrets().items():
            for i, text in enumerate(texts):
                assert value not in text, f"{key} appears in Ansible output #{i}"

    def test_no_secret_in_container_logs(self) -> None:
        # whole logs: the proxy's access log has a line per request (Authorization redacted)
        logs = "".join(
            f.out(f"docker logs {c['Name'].lstrip('/')} 2>&1")
            for c in f.project_containers())
        assert '"Authorization":["REDACTED"]' in logs, "no authenticated request logged?"
        for key, value in f.secrets().items():
            assert value not in logs, f"{key} appears in a container log"
