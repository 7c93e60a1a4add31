"""The exact dictionary matcher against scipy's dense ``linear_sum_assignment``, on realistic pairs.

Every measurement runs in its own subprocess so that peak memory (VmHWM, which covers numpy and
torch allocations alike) belongs to one solver only. Reported memory is the peak resident set minus
the resident set after the two dictionaries were built (inputs are the same for both solvers).

    .venv/bin/python perf/matching_scaling.py --sweep                 # 16K, d=768, unshared 0…90 %
    .venv/bin/python perf/matching_scaling.py --sweep --n 8192 --unshared 0.3 0.9
    .venv/bin/python perf/matching_scaling.py --big                   # 131,072² at d=2304, exact only

Pairs ("seed-like", ``benchmark.metrics.matching._synthetic.seed_like_pair``): rows drawn from an
anisotropic, clustered law (a shared mean direction, a rank-64 power-law subspace, clusters of ~16
rows), so unrelated rows still have many moderately high cosines; ``b`` holds perturbed copies of
``a``'s rows (cosine U(0.7, 0.95)) except for a fraction ``unshared`` of fresh rows from the law.
Paulo & Belrose find ~30 % of latents shared between seeds at 131K latents (unshared ≈ 0.7).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SWEEP = (0.0, 0.15, 0.3, 0.5, 0.7, 0.9)


def seed_like_pair(n: int, d: int, unshared: float = 0.3, seed: int = 0):
    """(a, b): fp32 dictionaries [n, d] resembling two SAE seeds (see the module doc)."""
    from benchmark.metrics.matching._synthetic import seed_like_pair as draw

    pair = draw(n, d, unshared=unshared, seed=seed)
    return pair.a, pair.b


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


# Where the exact matcher's time goes, from SolveStats.timings (seconds; the cert_* keys split
# "certificate"): price estimate, the candidate pass over all m·n kernel values, the column passes
# (candidate columns and the certificate's outlier columns), exact fp64 values, sparse LAPJV solves,
# LP duals (shortest paths), the certificate's row passes, and the certificate's bookkeeping.
PHASES = {
    "prices": ("prices",),
    "candidate_pass": ("kernel_setup", "candidates"),
    "column_passes": ("column_candidates", "cert_column_pass"),
    "exact_values": ("exact_values", "cert_exact"),
    "sparse_solve": ("solve",),
    "duals": ("duals",),
    "certificate_row_passes": ("cert_row_pass",),
    "certificate_other": ("cert_pool", "cert_bounds", "cert_bookkeeping"),
}


def phases(timings: dict) -> dict:
    """The phase breakdown (``PHASES``) of one solve's timings, in seconds."""
    return {name: round(sum(timings.get(k, 0.0) for k in keys), 3) for name, keys in PHASES.items()}


def worker(solver: str, n: int, d: int, unshared: float, device: str, candidates: str = "auto") -> dict:
    import scipy.optimize  # noqa: F401  (imports are not part of the measurement)
    import torch

    # one torch thread per core this process may use (both solvers alike)
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    from benchmark.metrics.matching import match_dictionaries

    a, b = seed_like_pair(n, d, unshared)
    base_rss = _rss_bytes()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    cpu_start = time.process_time()
    extra: dict = {}
    if solver == "dense":
        value, extra["lsa_seconds"] = dense_scipy_value(a, b)
    else:
        match = match_dictionaries(a, b, method="sparse", device=device, candidates=candidates)
        value = match.value
        det = match.details
        extra = {"certified": match.certified, "method": match.method, "kernel": match.kernel,
                 "kernel_timings": match.kernel_timings, "candidate_error": det.get("candidate_error"),
                 **{key: det.get(key) for key in ("rounds", "solves", "warm_solves", "warm_rows", "repairs", "row_pass_rows", "column_pass_cols",
                                                  "column_candidate_cols", "graph_edges", "known_entries",
                                                  "exact_entries", "completions", "dual_search", "bf_iterations")},
                 "outlier_cols_cleared": det.get("outlier_cols_cleared"),
                 "timings": det.get("timings"), "phases": phases(det.get("timings") or {})}
    seconds = time.perf_counter() - start
    # CPU seconds of all this process's threads: on a shared, overloaded machine the wall time
    # mostly measures the other tenants; CPU time says how much work each solver did
    cpu_seconds = time.process_time() - cpu_start
    peak = _peak_rss_bytes()
    return {"solver": solver, "n": n, "d": d, "unshared": unshared, "value": value, "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "peak_bytes": peak - base_rss, "peak_rss_bytes": peak, "load_before": load_before,
            "load_after": os.getloadavg()[0], **extra}


def run_worker(solver: str, n: int, d: int, unshared: float, device: str = "cpu", candidates: str = "auto") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", solver, "--n", str(n), "--d", str(d),
           "--unshared", str(unshared), "--device", device, "--candidates", candidates]
    # Idle OpenMP threads sleep instead of spinning (the same for both solvers): on a shared,
    # oversubscribed machine spinning threads steal the cores the working ones need.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"worker {solver} n={n} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["omp_wait_policy"] = env["OMP_WAIT_POLICY"]
    return result


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


SPLIT = ("prices", "candidate_pass", "column_passes", "exact_values", "sparse_solve", "duals", "certificate_row_passes",
         "certificate_other")


def sweep_table(rows: list[tuple[dict, dict | None]]) -> str:
    lines = ["| unshared | exact matcher s | kernel | prices / candidate pass / column passes / exact / solve / duals / cert. row passes / cert. other s "
             "| row passes (rows) | solves: scipy + warm (+repairs) | peak GiB | scipy dense s (LSA) | peak GiB | speed-up | "
             "CPU s exact / dense (ratio) | memory ratio | |Δ MCC| | MCC | certified | load 1-min (before→after) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for sparse, dense in rows:
        t = sparse.get("phases") or phases(sparse["timings"] or {})
        split = " / ".join(f"{t.get(k, 0.0):.2f}" for k in SPLIT)
        if dense:
            cells = [f"{dense['seconds']:.1f} ({dense['lsa_seconds']:.1f})", _gib(dense["peak_bytes"]),
                     f"{dense['seconds'] / sparse['seconds']:.1f}×",
                     f"{sparse['cpu_seconds']:.1f} / {dense['cpu_seconds']:.1f} ({dense['cpu_seconds'] / sparse['cpu_seconds']:.1f}×)",
                     f"{sparse['peak_bytes'] / dense['peak_bytes']:.3f}",
                     f"{abs(dense['value'] - sparse['value']):.1e}"]
            load = f"{sparse['load_before']:.1f}→{sparse['load_after']:.1f}; dense {dense['load_before']:.1f}→{dense['load_after']:.1f}"
        else:
            cells = ["—"] * 3 + [f"{sparse['cpu_seconds']:.1f} / —"] + ["—"] * 2
            load = f"{sparse['load_before']:.1f}→{sparse['load_after']:.1f}"
        lines.append(f"| {sparse['unshared']:.0%} | {sparse['seconds']:.2f} | {sparse['kernel']} | {split} | "
                     f"{sparse['row_pass_rows']:,} | {sparse['solves']} + {sparse.get('warm_solves') or 0} (+{sparse['repairs']}) | {_gib(sparse['peak_bytes'])} | "
                     + " | ".join(cells) + f" | {sparse['value']:.6f} | {sparse['certified']} | {load} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="exact matcher and scipy dense over --unshared at --n")
    parser.add_argument("--big", action="store_true", help="one 131,072² pair at d=2304, exact matcher only")
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--unshared", type=float, nargs="+", default=list(SWEEP))
    parser.add_argument("--no-dense", action="store_true", help="skip the scipy baseline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--candidates", default="auto", choices=["auto", "int8", "bf16", "fp32"],
                        help="kernel of the exact matcher's passes")
    parser.add_argument("--worker", choices=["dense", "sparse"])
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.d, args.unshared[0], args.device, args.candidates)))
        return
    if args.big:
        n, d = (args.n if args.n != 16384 else 131072), (args.d if args.d != 768 else 2304)
        for share in args.unshared if args.unshared != list(SWEEP) else [0.7]:
            result = run_worker("sparse", n, d, share, args.device, args.candidates)
            print(json.dumps(result), file=sys.stderr, flush=True)
            print(sweep_table([(result, None)]).replace("| unshared |", f"| {n:,}² d={d}, unshared |"))
        return
    rows = []
    for share in args.unshared:
        sparse = run_worker("sparse", args.n, args.d, share, args.device, args.candidates)
        dense = None if args.no_dense else run_worker("dense", args.n, args.d, share, args.device)
        rows.append((sparse, dense))
        print(json.dumps({"sparse": sparse, "dense": dense}), file=sys.stderr, flush=True)
    print(f"{args.n:,} × {args.n:,}, d = {args.d}")
    print(sweep_table(rows))


if __name__ == "__main__":
    main()
