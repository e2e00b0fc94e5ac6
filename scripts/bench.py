#!/usr/bin/env python3
"""Benchmark AIMA's deployment: provisioning, the GPU switch, the job path and the footprint.

    bench.py [--repeat N] [--quick] [--keep] [--port PORT] [--seconds S] [--clients C]
             [--connections docker,ssh]

Builds the testbed images (scripts/testbed/build.py build + save), then, on a fresh Debian 13
target container made like scripts/demo.py makes the demo's (the Molecule recipe in
.config/molecule/config.yml, a nested Docker engine, the images loaded from archives), measures:

1. fresh provision: site.yml from a clean target to a healthy stack, split by role;
2. idempotent re-run: a second site.yml, wall time and changed count;
3. GPU switch: --tags gpu_on / gpu_off against the raw compose commands run in the target,
   alternated in one run, as ratios ours/raw (raw also with a wait until the worker is healthy);
4. time to first result: a job queued while the worker is off, from the start of gpu_on to done;
5. footprint: memory of the base stack at rest and of the worker, image sizes;
6. job path: upload throughput and latency through the proxy, end-to-end job latency with the
   worker on (CPU here), and the per-job overhead outside the analysis (from the job's timings).

Figures 1-3 are measured over both connection types, each on its own fresh target: the Docker
API (community.docker.docker, as the demo) and SSH (the aima-testbed/sshd image: sshd published
on 127.0.0.1:PORT+2, a non-root user with passwordless sudo, a key pair made for the run and a
known_hosts file written from the target's host key; scripts/testbed/ssh.py). Figure 1 shows the
image archives' transfer (time, MiB, rate) and load within the first site.yml.

Prints a table (median and spread over the runs) and writes .cache/bench/results-<time>.json.
It is not a test: slow figures never fail it; it exits non-zero only when something is broken.
The target (default name aima-bench, its own nested-Docker volume, proxy on 127.0.0.1:PORT) is
removed on exit unless --keep.

The code is the package scripts/aimabench/ (one module per job); the media, the API client and
the playbook runner come from the shared test kit (testkit/aimakit/).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import aimakit  # noqa: F401  (installed into the project's environment)
except ModuleNotFoundError:  # a checkout whose environment does not carry the kit
    sys.path.append(str(Path(__file__).resolve().parents[1] / "testkit"))

from aimabench.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__.splitlines()[0]))
