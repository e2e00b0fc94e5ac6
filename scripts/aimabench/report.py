"""The printed table: median and spread (or p50/p99) per figure, against the targets."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aimabench import auto
from aimabench.common import TARGETS
from aimabench.measure import Bench
from aimabench.runner import PlaybookRun
from aimabench.stats import median, percentile


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(label: str, values: Sequence[float], digits: int = 1, target: str = "",
        verdict: str = "", pct: bool = False) -> str:
    med = median(values)
    spread = (f"{fmt(percentile(values, 50), digits)} / {fmt(percentile(values, 99), digits)}"
              if pct else f"{fmt(min(values) if values else None, digits)}.."
              f"{fmt(max(values) if values else None, digits)}")
    return (f"{label:<46} {fmt(med, digits):>9} {spread:>17} {len(values):>4}  "
            f"{target:<14}{verdict}")


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "?"
    return "MET" if value <= limit else "NOT MET"


def top_tasks(runs: Iterable[PlaybookRun], n: int) -> list[tuple[str, float]]:
    per: dict[str, list[float]] = {}
    for run_ in runs:
        seen: dict[str, float] = {}
        for task in run_.tasks:
            key = f"{task['role']} : {task['name']}"
            seen[key] = seen.get(key, 0.0) + float(task["seconds"])
        for key, seconds in seen.items():
            per.setdefault(key, []).append(seconds)
    ranked = sorted(((k, statistics.median(v)) for k, v in per.items()), key=lambda kv: -kv[1])
    return ranked[:n]


def switch_rows(bench: Bench) -> list[str]:
    """Figures 1-3 of one connection type: provision with the image transfer, re-run, GPU
    switch against the raw compose commands (run in the target, the same for both)."""
    r = bench.results
    t = TARGETS
    lines = [row("1. fresh provision site.yml (s)", r["provision_s"])]
    add = lines.append
    if r.get("transfer_s"):
        add(row(f"     image archives to the host, {r.get('transfer_method', '?')} (s)",
                r["transfer_s"]))
        add(row("     archives moved (MiB)", r.get("transfer_mib", []), 0))
        rates = [mib / s for mib, s in zip(r.get("transfer_mib", []), r["transfer_s"],
                                             strict=False) if s > 0]
        add(row("     transfer rate (MiB/s)", rates))
        add(row("     docker load of the archives (s)", r.get("load_s", [])))
    if r.get("provision_copy_s"):
        add(row("   baseline: the same with copy (s)", r["provision_copy_s"]))
        add(row("     image archives to the host, copy (s)", r.get("transfer_copy_s", [])))
        add(row("   ratio baseline / ours, transfer", r.get("transfer_ratio_copy", []), 2))
        ratio = median(r.get("provision_ratio_copy", []))
        add(row("   ratio baseline / ours, site.yml", r.get("provision_ratio_copy", []), 2,
                f">= {t['provision_ratio_copy']:.0f}x",
                "?" if ratio is None else
                "MET" if ratio >= t["provision_ratio_copy"] else "NOT MET"))
    for key in sorted(k for k in r if k.startswith("provision_role:")):
        add(row(f"     role {key.split(':', 1)[1]} (s)", r[key]))
    add(row("2. idempotent re-run site.yml (s)", r["rerun_s"], target=f"<= {t['rerun_s']:.0f} s",
            verdict=verdict(median(r["rerun_s"]), t["rerun_s"])))
    changed_ok = max(r["rerun_changed"]) == 0
    add(row("   re-run changed count", r["rerun_changed"], digits=0, target="0",
            verdict="MET" if changed_ok else "NOT MET"))
    add(row("3. gpu_on ours (s)", r["gpu_on_ours_s"]))
    add(row("   raw compose up -d --no-deps (s)", r["gpu_on_raw_s"], 2))
    add(row("   raw up -d + wait until healthy (s)", r["gpu_on_raw_healthy_s"], 2))
    add(row("   ratio ours / raw up -d", r["gpu_on_ratio_raw"], 2))
    add(row("   ratio ours / (raw up -d + healthy)", r["gpu_on_ratio_raw_healthy"], 2,
            f"<= {t['gpu_on_ratio']:.0f}x",
            verdict(median(r["gpu_on_ratio_raw_healthy"]), t["gpu_on_ratio"])))
    add(row("   gpu_off ours (s)", r["gpu_off_ours_s"]))
    add(row("   raw compose stop (s)", r["gpu_off_raw_s"], 2))
    add(row("   ratio ours / raw stop", r["gpu_off_ratio_raw"], 2, f"<= {t['gpu_off_ratio']}x",
            verdict(median(r["gpu_off_ratio_raw"]), t["gpu_off_ratio"])))
    if r.get("ansible_floor_s"):
        add(row("   ansible-playbook floor: one raw task (s)", r["ansible_floor_s"], 2))
        add(row("   best any playbook can do, gpu_on ratio", r["gpu_on_ratio_floor"], 2))
        add(row("   best any playbook can do, gpu_off ratio", r["gpu_off_ratio_floor"], 2))
    add(row("   time to first result, gpu_on (s)", r["ttfr_ours_s"],
            target=f"<= {t['ttfr_s']:.0f} s", verdict=verdict(median(r["ttfr_ours_s"]),
                                                              t["ttfr_s"])))
    add(row("   same with the raw compose up (s)", r["ttfr_raw_s"]))
    return lines


def rest_rows(bench: Bench) -> list[str]:
    """Figures 4-7: footprint, job path and auto mode (measured on one connection type: they
    do not depend on it)."""
    r = bench.results
    t = TARGETS
    lines: list[str] = []
    add = lines.append
    add(row("4. base stack memory at rest (MiB)", r["rest_base_mib"], target="<= 300 MiB",
            verdict=verdict(median(r["rest_base_mib"]), t["base_mem_mib"])))
    for key in sorted(k for k in r if k.startswith("rest_mem:")):
        add(row(f"     {key.split(':', 1)[1]} (MiB)", r[key]))
    add(row("   worker memory, idle (MiB)", r.get("worker_on_worker_mib", [])))
    for tag, mib in sorted(r["image_mib"].items()):
        add(f"   image {tag:<41} {mib:>9.1f} MiB")
    add(row("5. upload throughput (jobs/s)", r["upload_jobs_per_s"]))
    add(row("   upload latency p50/p99 (ms)", r["upload_ms"], pct=True))
    add(row("   end-to-end job latency p50/p99 (ms)", r["e2e_client_ms"], pct=True))
    add(row("   analysis: decode + analyse p50/p99 (ms)", r["analysis_ms"], pct=True))
    add(row("   overhead outside analysis p50/p99 (ms)", r["overhead_ms"], pct=True,
            target="<= 20 ms p50",
            verdict=verdict(percentile(r["overhead_ms"], 50), t["overhead_p50_ms"])))
    add(row("     of which queue pick-up p50/p99 (ms)", r["queue_wait_ms"], pct=True))
    add(row("     of which in-worker, not analysis (ms)", r["worker_total_minus_analysis_ms"],
            pct=True))
    add(row("6. auto mode: upload -> result, worker off (s)", r.get("auto_cold_s", []), 2))
    add(row("   same, worker running (s)", r.get("auto_warm_s", []), 2))
    add(row("   idle running time after the last job (s)", r.get("auto_idle_run_s", []),
            target=f"= {auto.IDLE_S} s idle timeout"))
    add(row("   of which beyond the idle timeout (s)", r.get("auto_idle_margin_s", [])))
    return lines


TITLES = {"docker": "Docker connection (community.docker.docker, root)",
          "ssh": "SSH connection (127.0.0.1, non-root user, sudo)"}


def report(benches: dict[str, Bench], meta: dict[str, Any]) -> str:
    switches = meta.get("switch_repeat", meta["repeat"])
    lines = [
        f"AIMA benchmark {meta['date']} on {meta['machine']} "
        f"(repeat {meta['repeat']}"
        f"{f', GPU switch {switches}' if switches != meta['repeat'] else ''}"
        f"{', quick' if meta['quick'] else ''})",
        f"{'figure':<46} {'median':>9} {'spread/p50/p99':>17} {'n':>4}  {'target':<14}verdict",
    ]
    for i, (connection, bench) in enumerate(benches.items()):
        lines += ["-" * 104, f"{TITLES.get(connection, connection)}:"]
        lines += switch_rows(bench)
        if i == 0:
            lines += rest_rows(bench)
    for connection, bench in benches.items():
        lines += ["", f"What dominates, {connection} (median seconds per task):"]
        for key, title in (("provision", "fresh provision"), ("rerun", "re-run"),
                           ("gpu_on", "gpu_on"), ("gpu_off", "gpu_off")):
            lines.append(f"  {title}:")
            for name, seconds in top_tasks(bench.profiles.get(key, []), 5):
                lines.append(f"    {seconds:7.2f}  {name}")
        if bench.results.get("rerun_changed_tasks"):
            lines.append(f"  re-run changed tasks: {bench.results['rerun_changed_tasks'][-1]}")
    return "\n".join(lines)


def machine() -> str:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return f"{os.cpu_count()} cores, {mem_kib / 2**20:.0f} GiB"
