"""Scaling of the exact dictionary matcher against scipy's dense ``linear_sum_assignment``.

Every measurement runs in its own subprocess so that peak memory (VmHWM, which covers numpy
and torch allocations alike) belongs to one solver only. Reported memory is the peak resident set
minus the resident set after the two dictionaries were built (inputs are the same for both).

    .venv/bin/python perf/matching_scaling.py                 # full table (~15 min on 2 cores)
    .venv/bin/python perf/matching_scaling.py --sizes 4096 16384 --dense-max 16384

Dictionaries ("seed-like"): ``a`` has iid Gaussian unit rows; ``b`` is a random permutation of ``a``
plus Gaussian noise (matched cosine ≈ 0.89), with a fraction (default 15 %) of its rows replaced by
unrelated random rows, so MCC ≈ 0.78, like two SAE seeds (PW-MCC 0.80 in Song et al. 2025).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def seed_like_pair(n: int, d: int, *, unrelated: float = 0.15, noise: float = 0.5, seed: int = 0):
    """Two fp32 dictionaries [n, d] whose cosine structure resembles two SAE seeds (see module doc)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d), dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = a[rng.permutation(n)]
    b += np.float32(noise / np.sqrt(d)) * rng.standard_normal((n, d), dtype=np.float32)
    replaced = rng.choice(n, int(unrelated * n), replace=False)
    b[replaced] = rng.standard_normal((len(replaced), d), dtype=np.float32) / np.float32(np.sqrt(d))
    return a, b


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """Peak resident set of this process image (VmHWM). Unlike ru_maxrss it is not inherited
    across fork + exec: a worker started from a large parent (pytest after the in-process dense
    run) would otherwise report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def dense_scipy_value(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Baseline: fp32 cosine matrix (torch) → scipy dense assignment. Returns (MCC, LSA seconds)."""
    import torch
    from scipy.optimize import linear_sum_assignment

    ua = torch.nn.functional.normalize(torch.from_numpy(a), dim=1)
    ub = torch.nn.functional.normalize(torch.from_numpy(b), dim=1)
    cos = (ua @ ub.T).numpy()
    start = time.perf_counter()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    lsa_seconds = time.perf_counter() - start
    del cos
    # the matched cosines again in fp64, so both solvers are scored identically
    a64 = a.astype(np.float64) / np.linalg.norm(a.astype(np.float64), axis=1, keepdims=True)
    b64 = b.astype(np.float64) / np.linalg.norm(b.astype(np.float64), axis=1, keepdims=True)
    return float(np.einsum("ij,ij->i", a64[rows], b64[cols]).mean()), lsa_seconds


def worker(solver: str, n: int, d: int, device: str, candidates: str = "auto") -> dict:
    import scipy.optimize  # noqa: F401  (imports are not part of the measurement)
    import torch

    # one torch thread per core this process may use (both solvers alike)
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    from benchmark.metrics.matching import match_dictionaries

    a, b = seed_like_pair(n, d)
    base_rss = _rss_bytes()
    start = time.perf_counter()
    extra: dict = {}
    if solver == "dense":
        value, extra["lsa_seconds"] = dense_scipy_value(a, b)
    else:
        match = match_dictionaries(a, b, method="sparse", device=device, candidates=candidates)
        value = match.value
        extra = {"certified": match.certified, "method": match.method, "candidates": match.details.get("candidates"),
                 "fine_checked_rows": match.details.get("fine_checked_rows"),
                 "residual_rows": match.details.get("residual_rows"), "rounds": match.details.get("rounds"),
                 "timings": match.details.get("timings")}
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    return {"solver": solver, "n": n, "d": d, "value": value, "seconds": seconds,
            "peak_bytes": peak - base_rss, "peak_rss_bytes": peak, **extra}


def run_worker(solver: str, n: int, d: int, device: str, candidates: str = "auto") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", solver, "--n", str(n), "--d", str(d),
           "--device", device, "--candidates", candidates]
    # Idle OpenMP threads sleep instead of spinning (the same for both solvers): on a shared,
    # oversubscribed machine spinning threads steal the cores the working ones need (measured
    # 2-9× slower element-wise passes with libgomp's default under load 10 on 2 cores).
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["omp_wait_policy"] = env["OMP_WAIT_POLICY"]
    result["load_avg_1min_after"] = os.getloadavg()[0]
    return result


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--d", type=int, default=768, help="dimension for every size except --wide")
    parser.add_argument("--wide", type=int, nargs="*", default=[65536],
                        help="sizes also run at d=2304 (Gemma-2-2B width)")
    parser.add_argument("--dense-max", type=int, default=16384, help="largest size also run with scipy dense")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--candidates", default="auto", choices=["auto", "int8", "fp32"],
                        help="arithmetic of the exact matcher's first pass")
    parser.add_argument("--worker", choices=["dense", "sparse"])
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.d, args.device, args.candidates)))
        return

    jobs = [(n, args.d) for n in args.sizes] + [(n, 2304) for n in args.wide]
    rows = []
    for n, d in jobs:
        sparse = run_worker("sparse", n, d, args.device, args.candidates)
        dense = run_worker("dense", n, d, args.device) if n <= args.dense_max else None
        rows.append((sparse, dense))
        print(json.dumps({"sparse": sparse, "dense": dense}), file=sys.stderr, flush=True)

    print("| latents | d | exact matcher s | peak GiB | scipy dense s (LSA only) | peak GiB | speed-up "
          "(vs LSA only) | memory ratio | |Δ MCC| | MCC | certified |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for sparse, dense in rows:
        if dense:
            cells = [f"{dense['seconds']:.1f} ({dense['lsa_seconds']:.1f})", _gib(dense["peak_bytes"]),
                     f"{dense['seconds'] / sparse['seconds']:.1f}× ({dense['lsa_seconds'] / sparse['seconds']:.1f}×)",
                     f"{sparse['peak_bytes'] / dense['peak_bytes']:.3f}", f"{abs(dense['value'] - sparse['value']):.1e}"]
        else:
            cells = ["—", "—", "—", "—", "—"]
        print(f"| {sparse['n']:,} | {sparse['d']} | {sparse['seconds']:.1f} | {_gib(sparse['peak_bytes'])} | "
              + " | ".join(cells) + f" | {sparse['value']:.6f} | {sparse['certified']} |")


if __name__ == "__main__":
    main()
