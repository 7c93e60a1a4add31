"""Wall time of the same units on the local executor and on a local Ray cluster, cold and warm caches.

Each configuration runs ``canonbench run`` on the same submissions and tasks in its own subprocess,
one after another (never side by side), and reports its wall time, the load average around it and
the ratio Ray / local for the same cache state:

* ``local-cold`` / ``ray-cold``: an empty ``--cache-dir`` (corpus activations computed and every
  recipe trained during the run); each executor has its own cache folder;
* ``local-warm`` / ``ray-warm``: the cache its cold run filled, a new results folder (only the units
  themselves run).

Beside the wall time it reports the CPU seconds the run's processes used (the driver and, for Ray,
the local cluster's processes), which tells a faster run from one that got a larger share of a
shared machine.

The Ray configurations start their cluster in the driver process (``ray.init(address="local", num_cpus=N)``: N worker
slots on this machine) before the clock starts; the start-up is reported apart. Usage::

    .venv/bin/python perf/ray_executor_walltime.py                       # MiniLM references, cross-seed
    .venv/bin/python perf/ray_executor_walltime.py --only local-warm ray-warm --workdir /tmp/rw
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("local-cold", "ray-cold", "local-warm", "ray-warm")


def run_one(config: str, args: argparse.Namespace) -> dict:
    """Run one configuration in this process; returns its timings."""
    from benchmark import cli

    executor, cache_state = config.split("-")
    work = Path(args.workdir)
    cache = work / f"cache-{executor}"
    if cache_state == "cold":
        shutil.rmtree(cache, ignore_errors=True)
    results = work / f"results-{config}"
    shutil.rmtree(results, ignore_errors=True)
    startup = 0.0
    argv = ["run", *args.submissions, "--tasks", args.tasks, "--results", str(results), "--cache-dir", str(cache), "--quiet"]
    if executor == "ray":
        import ray

        started = time.perf_counter()
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR")
        startup = time.perf_counter() - started
        argv += ["--executor", "ray"]
    cpu_before = tree_cpu_s()
    started = time.perf_counter()
    code = cli.main(argv)
    wall = time.perf_counter() - started
    return {"config": config, "exit": code, "wall_s": wall, "cluster_start_s": startup, "cpu_s": tree_cpu_s() - cpu_before}


def tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and its live descendants (a local Ray
    cluster's raylet and workers are; their waited-for children are counted in theirs)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        ppid, cpu = int(fields[1]), sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
        stats[int(entry.name)] = (ppid, cpu)
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in mine:
                mine.add(pid)
                frontier.append(pid)
    return sum(stats[pid][1] for pid in mine if pid in stats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", nargs="*", default=sorted(glob.glob(str(REPO / "submissions/reference/minilm-*.toml"))))
    parser.add_argument("--tasks", default="cross-seed")
    parser.add_argument("--workdir", default="/tmp/canonbench-ray-walltime")
    parser.add_argument("--num-cpus", type=int, default=2, help="worker slots of the local Ray cluster")
    parser.add_argument("--only", nargs="*", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--run", choices=CONFIGS, help=argparse.SUPPRESS)  # one configuration, in a subprocess
    args = parser.parse_args()
    if args.run:
        print("RESULT " + json.dumps(run_one(args.run, args)), flush=True)
        return 0
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    rows = []
    for config in [c for c in CONFIGS if c in args.only]:
        load_before = os.getloadavg()
        cmd = [sys.executable, __file__, "--run", config, "--workdir", args.workdir, "--tasks", args.tasks,
               "--num-cpus", str(args.num_cpus), "--submissions", *args.submissions]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{config} failed")
        row = json.loads(line[len("RESULT "):])
        row["load_before"], row["load_after"] = load_before[0], os.getloadavg()[0]
        rows.append(row)
        print(f"{config:<11} exit {row['exit']}  wall {row['wall_s']:7.1f} s  CPU {row['cpu_s']:7.1f} s  "
              f"cluster start {row['cluster_start_s']:5.1f} s  "
              f"load {row['load_before']:.1f} -> {row['load_after']:.1f}", flush=True)
    by = {r["config"]: r for r in rows}
    for state in ("cold", "warm"):
        if f"local-{state}" in by and f"ray-{state}" in by:
            ratio = by[f"ray-{state}"]["wall_s"] / by[f"local-{state}"]["wall_s"]
            print(f"ray / local ({state} cache): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
