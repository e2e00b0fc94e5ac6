"""The benchmark behind scripts/bench.py, by job:

- common: paths, the stack's names, the targets, BenchError;
- stats: median, nearest-rank percentiles, summaries, docker's size units;
- target: the bench's target (testbed.target's lifecycle, the demo's) and its inventory;
- runner: ansible-playbook (aimakit.ansible) with per-task timings from the callback plugin;
- measure: provisioning, the GPU switch, time to first result, footprint;
- load: the job path (end-to-end latency, upload throughput);
- report: the table;
- cli: the command line, the run and its results file.
"""
