"""Abuse and resource limits (issue 11), on the same instance, after the faults: the pixel cap,
a job over the worker's memory, concurrent uploads, a fork bomb in the worker, a slow upload,
then (one redeploy with tight limits) the free-space guard, the queue cap, the rate limit and
media retention. Every accepted job is audited at the end (test_90)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import faultlib as f
import pytest

JOB_TIMEOUT = 240
PIXEL_CAP = 50_000_000  # AIMA_MAX_IMAGE_PIXELS' default
MIB = 1 << 20


def gpu(tag: str) -> f.Run:
    run = f.playbook("--tags", tag)
    assert run.rc == 0, run.describe()
    return run


def wait_status(ids: list[str], status: str = "done",
                timeout: float = JOB_TIMEOUT) -> dict[str, dict]:
    def reached() -> dict | None:
        rows = f.jobs_by_id(ids)
        return rows if len(rows) == len(ids) and all(
            r["status"] == status for r in rows.values()) else None

    return f.wait_for(f"{len(ids)} job(s) {status}", reached, timeout=timeout, interval=2)


def job_count() -> int:
    return f.sql("SELECT count(*) AS n FROM jobs")[0]["n"]


def worker_up() -> None:
    if not (f.state(f.WORKER).get("running") and f.state(f.WORKER).get("health") == "healthy"):
        gpu("gpu_on")


class TestMemory:
    def test_image_just_under_the_pixel_cap(self, api: f.Api, tally: f.Tally) -> None:
        worker_up()
        side = 7000  # 49 Mpx
        assert side * side < PIXEL_CAP
        tally.fault("image just under the pixel cap")
        job = f.accept(api, "under-cap.png", f.large_png(side, side, seed=6000))
        row = wait_status([job])[job]
        assert row["result"]["width"] == side and row["result"]["height"] == side, row["result"]
        peak = f.memory_peak(f.WORKER)
        limit = f.inspect(f.container(f.WORKER))["HostConfig"]["Memory"]
        tally.figures["worker_memory_peak_mib_49mpx"] = peak // MIB
        assert peak < limit, (peak, limit)
        # one row of pixels more than the cap: refused at upload, with the reason
        over = api.upload("over-cap.png", f.large_png(side + 143, side, seed=6001))
        assert over.status == 422, (over.status, over.body[:300])
        assert "pixels" in over.json()["detail"], over.json()

    def test_job_over_the_workers_memory_fails_cleanly(self, api: f.Api,
                                                      tally: f.Tally) -> None:
        """The worker's limit lowered by hand below what a queued image needs: that job fails
        at once with the reason (no OOM kill, no retry loop), the rest of the queue is done."""
        worker_up()
        name = f.container(f.WORKER)
        before = f.state(f.WORKER)
        host = f.inspect(name)["HostConfig"]
        tally.fault("job over the worker's memory limit")
        f.docker("update", "--memory", "768m", "--memory-swap", "768m", name)
        try:
            big = f.large_png(7000, 7000, seed=6100)
            reply = api.upload("over-memory.png", big)
            assert reply.status == 201, (reply.status, reply.body[:300])
            big_id = reply.json()["id"]
            tally.failed_on_purpose[big_id] = reply.json()["sha256"]
            small = [f.accept(api, f"after-over-memory-{i}.png", f.png(seed=6200 + i))
                     for i in range(2)]
            failed = wait_status([big_id], "failed")[big_id]
            assert "memory budget" in (failed["error"] or ""), failed["error"]
            assert failed["done_runs"] == 0 and failed["runs"] == 1, failed
            wait_status(small)
        finally:
            f.docker("update", "--memory", str(host["Memory"]),
                     "--memory-swap", str(host["MemorySwap"]), name)
        after = f.state(f.WORKER)
        assert after["id"] == before["id"] and after["running"], after
        assert after["restart_count"] == before["restart_count"], "the worker was restarted"
        assert not f.inspect(name)["State"]["OOMKilled"]


class TestLoad:
    def test_twenty_concurrent_uploads(self, api: f.Api, tally: f.Tally) -> None:
        worker_up()
        tally.fault("20 concurrent uploads")
        replies: list[tuple[int, dict]] = []
        lock = threading.Lock()
        payloads = [f.png(width=64, height=48, seed=6300 + i) for i in range(20)]
        start = threading.Barrier(20)

        def one(i: int) -> None:
            start.wait()
            reply = api.upload(f"concurrent-{i}.png", payloads[i], timeout=60)
            with lock:
                replies.append((reply.status, reply.json() if reply.body else {}))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        statuses = sorted(s for s, _ in replies)
        assert statuses == [201] * 20, statuses
        ids = [body["id"] for _, body in replies]
        assert len(set(ids)) == 20
        for _, body in replies:
            f.TALLY.accepted[body["id"]] = body["sha256"]
        rows = wait_status(ids)
        assert all(r["done_runs"] == 1 for r in rows.values())
        assert f.healthy_base() and api.healthy()

    def test_fork_bomb_in_the_worker_is_stopped_by_the_pid_limit(
        self, api: f.Api, tally: f.Tally
    ) -> None:
        worker_up()
        name = f.container(f.WORKER)
        pids_limit = f.inspect(name)["HostConfig"]["PidsLimit"]
        ids = [f.accept(api, f"during-fork-bomb-{i}.png", f.png(seed=6400 + i))
               for i in range(3)]
        max_before = f.pid_limit_hits(f.WORKER)
        tally.fault("process forking without end in the worker")
        # Forks until the kernel refuses, holds every PID for 5 s, then ends its children.
        bomb = (
            "import errno, os, signal, time\n"
            "kids, err = [], 0\n"
            "while True:\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError as exc:\n"
            "        err = exc.errno\n"
            "        break\n"
            "    if pid == 0:\n"
            "        time.sleep(120)\n"
            "        os._exit(0)\n"
            "    kids.append(pid)\n"
            "time.sleep(5)\n"
            "for pid in kids:\n"
            "    os.kill(pid, signal.SIGKILL)\n"
            "for pid in kids:\n"
            "    os.waitpid(pid, 0)\n"
            "print(len(kids), errno.errorcode.get(err, err))\n"
        )
        report = f.sh(f"docker exec -i {name} python3 -", stdin=bomb.encode(),
                      timeout=180).stdout.decode().split()
        forks, error = int(report[0]), report[1]
        tally.figures["fork_bomb_processes_before_refused"] = forks
        assert error == "EAGAIN" and 0 < forks < pids_limit, report
        max_after = f.pid_limit_hits(f.WORKER)
        assert max_after > max_before, "the PID limit never fired"
        f.wait_for("the worker healthy again", lambda: f.state(f.WORKER).get("health")
                   == "healthy", timeout=120, interval=2)
        rows = wait_status(ids)
        assert all(r["done_runs"] == 1 for r in rows.values())
        assert f.healthy_base(), "the fork bomb reached another service"

    def test_slow_upload_is_dropped_and_leaves_nothing(self, api: f.Api,
                                                      tally: f.Tally) -> None:
        """A client that starts an upload and never finishes it: after aima_upload_timeout_s
        (20 s in this scenario) it gets 408 and the connection closes; the partial file goes."""
        timeout_s = 20
        rows_before = job_count()
        boundary = uuid.uuid4().hex
        preamble = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\";"
                    f" filename=\"slow.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
        head = (f"POST /api/jobs HTTP/1.1\r\nHost: {api.host}\r\n"
                f"Authorization: {f.basic(*f.login())}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {1 << 20}\r\n\r\n").encode()
        tally.fault("slow upload that never finishes")
        sock = api.connect(timeout=timeout_s + 30)
        started = time.monotonic()
        try:
            sock.sendall(head + preamble + f.png(seed=6500)[:2000])
            f.wait_for("the partial upload on the media volume", f.incoming_files,
                       timeout=15, interval=0.5)
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except (TimeoutError, socket.timeout):  # noqa: UP041 (both names, for clarity)
                pytest.fail(f"the stalled upload was still open after {timeout_s + 30} s")
            except OSError:
                pass  # reset: dropped as well
            held = time.monotonic() - started
        finally:
            sock.close()
        tally.figures["slow_upload_dropped_after_s"] = round(held, 1)
        assert held < timeout_s + 15, held
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b'"upload_timeout"' in answer and b"nosniff" in answer.lower(), answer[:600]
        f.wait_for("the partial file removed", lambda: f.incoming_files() == [], timeout=30)
        assert job_count() == rows_before
        assert api.healthy()


class TestTightLimits:
    """One redeploy with tight limits (as an operator would set them), the checks, then
    site.yml with the scenario's own settings again."""

    def test_redeploy_with_tight_limits(self, tally: f.Tally) -> None:
        gpu("gpu_off")  # the queue must hold jobs
        waiting = f.sql("SELECT count(*) AS n FROM jobs WHERE status IN ('queued', 'running')")
        assert waiting[0]["n"] == 0, waiting
        extra = {
            "aima_upload_rate_per_minute": 1,
            "aima_max_queued_jobs": 3,
            "aima_min_free_bytes": 16 * MIB,
            "aima_media_retention_days": 30,
            "aima_backend_extra_env": {"AIMA_MIN_FREE_PERCENT": "0",
                                       "AIMA_RECOVERY_INTERVAL_S": "2"},
        }
        run = f.playbook("-e", json.dumps(extra))
        assert run.rc == 0 and run.changed >= 1, run.describe()
        env = f.inspect(f.container("aima-backend"))["Config"]["Env"]
        assert "AIMA_MAX_QUEUED_JOBS=3" in env and "AIMA_MEDIA_RETENTION_DAYS=30" in env

    def test_free_space_guard_refuses_before_the_disk_is_full(self, api: f.Api,
                                                              tally: f.Tally) -> None:
        rows_before = job_count()
        free = int(f.out(f"df -B1 --output=avail {f.MEDIA_HOST_DIR} | tail -1"))
        filler = free - 10 * MIB  # leaves 10 MiB: below the 16 MiB reserve, far from full
        assert filler > 0, free
        tally.fault("media disk below the free-space reserve")
        f.sh(f"dd if=/dev/zero of={f.MEDIA_HOST_DIR}/.filler bs=1M count={filler // MIB}"
             " 2>/dev/null")
        try:
            reply = api.upload("guarded.png", f.png(seed=6600))
            assert reply.status == 507, (reply.status, reply.body[:300])
            body = reply.json()
            assert body["error"] == "insufficient_storage" and "kept free" in body["detail"]
            still_free = int(f.out(f"df -B1 --output=avail {f.MEDIA_HOST_DIR} | tail -1"))
            assert still_free > 8 * MIB, "the guard let the disk fill"
        finally:
            f.sh(f"rm -f {f.MEDIA_HOST_DIR}/.filler")
        assert job_count() == rows_before and f.incoming_files() == []

    def test_queue_cap_then_rate_limit_answer_429(self, api: f.Api, tally: f.Tally) -> None:
        rows_before = job_count()
        tally.fault("queue cap and upload rate limit")
        accepted = [f.accept(api, f"capped-{i}.png", f.png(seed=6700 + i)) for i in range(3)]
        replies = []
        for i in range(12):  # the burst of 10 is spent by the 507, 3 accepted and these
            reply = api.upload(f"refused-{i}.png", f.png(seed=6800 + i))
            replies.append(reply)
            if reply.status == 429 and reply.json()["error"] == "rate_limited":
                break
        errors = [(r.status, r.json()["error"]) for r in replies]
        assert errors[0] == (429, "queue_full"), errors
        assert errors[-1] == (429, "rate_limited"), errors
        assert set(errors) == {(429, "queue_full"), (429, "rate_limited")}, errors
        for reply in (replies[0], replies[-1]):
            assert int(reply.headers["retry-after"]) >= 1, reply.headers
            assert reply.json()["detail"], reply.json()
        assert job_count() == rows_before + len(accepted), "a refused upload stored a job"

    def test_retention_removes_only_old_files_and_keeps_rows(self, tally: f.Tally) -> None:
        done = f.sql("SELECT id::text AS id, storage_name FROM jobs WHERE status = 'done'"
                     " AND media_removed_at IS NULL ORDER BY finished_at LIMIT 4")
        assert len(done) == 4, done
        old, old_row_new_file, young = done[:2], done[2], done[3]

        def backdate(job: dict, row_days: int, file_days: int | None) -> None:
            f.sql_exec(f"UPDATE jobs SET finished_at = now() - interval '{row_days} days'"
                       f" WHERE id = '{uuid.UUID(job['id'])}'")
            if file_days is not None:
                f.sh(f"touch -d '{file_days} days ago' {f.MEDIA_HOST_DIR}/{job['storage_name']}")

        media_before = f.media_checksums()
        tally.fault("media retention (30 days)")
        for job in old:
            backdate(job, 31, 31)
        backdate(old_row_new_file, 31, None)  # the file itself is new: kept
        backdate(young, 29, 29)
        ids = [j["id"] for j in old]
        f.wait_for("retention to remove the old files", lambda: all(
            r["media_removed_at"] for r in f.sql(
                "SELECT media_removed_at FROM jobs WHERE id::text IN ('" + "','".join(ids)
                + "')")), timeout=30)
        f.TALLY.media_removed.update(ids)
        media = f.media_checksums()
        for job in old:
            assert job["storage_name"] not in media, job
        kept = {name: digest for name, digest in media_before.items()
                if name not in {j["storage_name"] for j in old}}
        assert media == kept, "retention touched a file it had to keep"
        rows = f.jobs_by_id(ids)
        assert all(r["status"] == "done" and r["result"] for r in rows.values()), rows
        stamps = f.sql("SELECT id::text, media_removed_at FROM jobs"
                       " WHERE media_removed_at IS NOT NULL ORDER BY id")
        time.sleep(5)  # two more passes: nothing changes
        assert f.sql("SELECT id::text, media_removed_at FROM jobs"
                     " WHERE media_removed_at IS NOT NULL ORDER BY id") == stamps
        assert f.media_checksums() == kept

    def test_site_yml_restores_the_scenarios_settings(self, api: f.Api) -> None:
        run = f.playbook()
        assert run.rc == 0 and run.changed >= 1, run.describe()
        env = f.inspect(f.container("aima-backend"))["Config"]["Env"]
        assert "AIMA_MAX_QUEUED_JOBS=1000" in env and "AIMA_MEDIA_RETENTION_DAYS=0" in env
        assert f.healthy_base() and api.healthy()
