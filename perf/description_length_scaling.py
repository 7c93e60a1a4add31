"""Scaling of the description-length task's two kernels (CPU), and a naive baseline doing the same work.

    .venv/bin/python perf/description_length_scaling.py                       # 16K and 65K latents, d=768
    .venv/bin/python perf/description_length_scaling.py --sizes 16384 --wide  # also d=2304
    .venv/bin/python perf/description_length_scaling.py --naive 4096         # blocked vs naive at 4K

Every measurement runs in its own subprocess; peak memory is VmHWM minus the resident set once the
inputs exist. Inputs look like SAE decoders rather than iid noise: unit rows with a shared rank-32
component (anisotropy), 2 % near-duplicate pairs (cosine ≈ 0.9), 0.5 % planted triples and 0.1 % rows
that are the difference direction of a near-duplicate pair (the f3 = f2 − α·f1 shape). The description
length runs a TopK SAE (k = 32) on tokens that are sparse combinations of its rows plus noise (see
:func:`topk_sae_and_tokens`).

The naive baselines do the same work the simple way: :func:`naive_two_term` takes the same candidates
and the same closed form from the full ``m × m`` cosine matrix held in memory, with Python loops over
rows; :func:`naive_description_length` decodes a dense code per ladder step and loops over latents. They
are meant for small sizes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sae_like_dictionary(m: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit rows [m, d] (fp32) with SAE-like structure (see the module docstring)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((32, d)).astype(np.float32)
    rows = rng.standard_normal((m, d), dtype=np.float32) + 0.6 * (rng.standard_normal((m, 32), dtype=np.float32) @ basis) / np.sqrt(32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    order = rng.permutation(m)
    n_dup, n_tri, n_diff = int(0.02 * m), int(0.005 * m), int(0.001 * m)
    at = 0
    for _ in range(n_dup):
        p, q = order[at:at + 2]
        at += 2
        noise = rng.standard_normal(d).astype(np.float32)
        rows[p] = rows[q] + 0.45 * noise / np.linalg.norm(noise)
    for _ in range(n_tri):
        i, j, k = order[at:at + 3]
        at += 3
        rows[i] = 0.8 * rows[j] + 0.6 * rows[k]
    for _ in range(n_diff):
        f1, f2, f3 = order[at:at + 3]
        at += 3
        rows[f3] = rows[f2] - 0.05 * rows[f1]
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def naive_two_term(U: np.ndarray, *, tau: float, k: int = 16, gamma: float = 0.5) -> np.ndarray:
    """The same search with the whole cosine matrix in memory and loops over rows: best counted two-term
    cosine per row (NaN where none). Same steps: pairs within each row's top-k list, the planes of
    near-parallel pairs against every row, then a residual list for the rows the certificate leaves open."""
    U = U.astype(np.float64)
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    m, d = U.shape
    from benchmark.metrics.matching._cosine import fp32_cosine_error_bound

    err = fp32_cosine_error_bound(d)  # the blocked search's fp32 bound, so both open the same rows
    C = U @ U.T  # the m × m matrix the blocked search never builds
    A = np.abs(C)
    np.fill_diagonal(A, -1.0)
    order = np.argsort(-A, axis=1, kind="stable")
    first = order[:, :k]
    c_star = np.minimum(A[np.arange(m), order[:, k]] + err, 1.0)
    best = np.full(m, -np.inf)

    def consider(i: int, j: int, kk: int) -> None:
        cj, ck, g = C[i, j], C[i, kk], C[j, kk]
        den = 1 - g * g
        if den <= 1e-12:
            a, b, p2 = (cj, 0.0, cj * cj) if abs(cj) >= abs(ck) else (0.0, ck, ck * ck)
        else:
            a, b = (cj - g * ck) / den, (ck - g * cj) / den
            p2 = (cj * cj + ck * ck - 2 * g * cj * ck) / den
        if a > 0 or b > 0:
            best[i] = max(best[i], np.sqrt(min(max(p2, 0.0), 1.0)))

    for i in range(m):
        for j, kk in itertools.combinations(first[i], 2):
            consider(i, j, kk)
    pairs = {tuple(sorted((i, j))) for i in range(m) for j in first[i] if abs(C[i, j]) > gamma and 1 - C[i, j] ** 2 > 1e-12}
    for j, kk in pairs:
        g = C[j, kk]
        w = (U[j] - g * U[kk]) / np.sqrt(1 - g * g)
        proj = np.sqrt((U @ w) ** 2 + C[:, kk] ** 2)
        for i in np.flatnonzero(proj > tau - 1e-4):
            if i != j and i != kk:
                consider(int(i), int(j), int(kk))
    c_one = np.maximum(A[np.arange(m), first[:, 0]], c_star)
    bound2 = (c_one ** 2 + c_star ** 2 + 2 * gamma * c_one * c_star) / (1 - gamma ** 2)
    for i in np.flatnonzero(~((best > tau) | (bound2 <= tau ** 2))):
        j1 = first[i, 0]
        r = U[i] - C[i, j1] * U[j1]
        r /= np.linalg.norm(r)
        scores = np.abs(U @ r)
        scores[i] = -1.0
        second = np.argsort(-scores, kind="stable")[:k]
        for j, kk in itertools.combinations(sorted(set(first[i]) | set(second)), 2):
            consider(i, j, kk)
    return np.where(np.isfinite(best), best, np.nan)


def naive_description_length(sae, x: np.ndarray, *, epsilon: float, max_bits: int = 16) -> tuple[int | None, float | None]:
    """The same description length with a dense code, a dense decode per ladder step and a loop over
    latents (bins, centroids, plug-in entropies): ``(bins, bits per token)``."""
    import torch

    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x)).double().numpy()
        W = sae.W_dec.double().numpy()
        b = sae.b_dec.double().numpy()
    x = x.astype(np.float64)
    total = ((x - x.mean(0)) ** 2).sum()
    resid = ((x - (z @ W + b)) ** 2).sum()
    active = z > 0
    p = active.mean(0)
    h = np.zeros_like(p)
    inside = (p > 0) & (p < 1)
    h[inside] = -(p[inside] * np.log2(p[inside]) + (1 - p[inside]) * np.log2(1 - p[inside]))
    for bits in range(max_bits + 1):
        B = 2 ** bits
        zq = z.copy()
        H = np.zeros(z.shape[1])
        for i in range(z.shape[1]):
            v = z[active[:, i], i]
            if not len(v):
                continue
            lo, hi = v.min(), v.max()
            idx = np.zeros(len(v), dtype=int) if hi == lo else np.clip(np.floor((v - lo) / (hi - lo) * B), 0, B - 1).astype(int)
            counts = np.bincount(idx, minlength=B)
            sums = np.bincount(idx, weights=v, minlength=B)
            zq[active[:, i], i] = (sums / np.maximum(counts, 1))[idx]
            q = counts[counts > 0] / len(v)
            H[i] = -(q * np.log2(q)).sum()
        if ((x - (zq @ W + b)) ** 2).sum() <= (resid + epsilon * total) * (1 + 1e-9) + 1e-12:
            return B, float((h + p * H).sum())
    return None, None


def topk_sae_and_tokens(U: np.ndarray, n_tokens: int, k: int = 32, seed: int = 1):
    """A TopK SAE (k = 32) whose encoder is half its decoder's transpose, and tokens that are sparse
    combinations of its rows (16 per token, exponential magnitudes) plus noise: explained variance ≈ 0.6
    and a 4-bin quantisation at epsilon = 0.01, like the MiniLM reference SAEs (0.65–0.77, 4–8 bins)."""
    import torch

    from benchmark.sae.model import SAE, SAEConfig

    m, d = U.shape
    W = torch.from_numpy(U)
    sae = SAE(SAEConfig("topk", d, m, k=k), W_enc=0.5 * W.T.contiguous(), W_dec=W)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    acts = torch.zeros(n_tokens, d)
    for start in range(0, n_tokens, 1024):
        rows = min(1024, n_tokens - start)
        idx = torch.from_numpy(rng.integers(0, m, size=(rows, 16)))
        mag = torch.from_numpy(rng.exponential(1.0, size=(rows, 16)).astype(np.float32))
        acts[start:start + rows] = (W[idx] * mag[..., None]).sum(1) + 0.02 * torch.randn(rows, d, generator=gen)
    return sae, acts


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(kind: str, m: int, d: int, n_tokens: int) -> dict:
    """One measurement in this process: ``search`` (blocked, int8 candidates where exact), ``search-fp32``
    (blocked, fp32 candidates), ``naive`` (dense search), ``dl`` or
    ``naive-dl`` (dense description length)."""
    import torch

    torch.manual_seed(0)
    U = sae_like_dictionary(m, d)
    base = _rss()
    started = time.perf_counter()
    out: dict = {"kind": kind, "m": m, "d": d}
    if kind in ("search", "search-fp32"):
        from benchmark.metrics.incoherence import two_term_representations

        found = two_term_representations(U, tau=0.95, k=16, gamma=0.5,
                                         candidates="fp32" if kind == "search-fp32" else "auto")
        out.update(fraction=found.fraction(found.represented), certified=found.fraction(found.certified),
                   near_pairs=found.near_parallel_pairs, crowded=found.crowded, steps=found.seconds,
                   pair_cosine=np.nan_to_num(found.pair_cosine, nan=-1).tolist() if m <= 8192 else None)
    elif kind == "naive":
        best = naive_two_term(U, tau=0.95)
        out.update(fraction=float(np.mean(np.nan_to_num(best, nan=-1) > 0.95)),
                   pair_cosine=np.nan_to_num(best, nan=-1).tolist())
    elif kind in ("dl", "naive-dl"):
        from benchmark.metrics.description_length import description_length

        sae, acts = topk_sae_and_tokens(U, n_tokens)
        base = _rss()
        started = time.perf_counter()
        if kind == "dl":
            res = description_length(sae, [acts[i:i + 1024] for i in range(0, n_tokens, 1024)], epsilon=0.01)
            out.update(bits=res.description_length, bins=res.bins, ev=res.explained_variance, l0=res.l0,
                       steps=res.seconds, tokens=n_tokens)
        else:
            bins, bits = naive_description_length(sae, acts.numpy(), epsilon=0.01)
            out.update(bits=bits, bins=bins, tokens=n_tokens)
    out["seconds"] = time.perf_counter() - started
    out["peak_gib"] = (_peak() - base) / 2**30
    return out


def run_worker(kind: str, m: int, d: int, n_tokens: int = 16384) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, __file__, "--worker", kind, str(m), str(d), str(n_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} {m}x{d} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[16384, 65536])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--wide", action="store_true", help="also d=2304 at the largest size")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--naive", type=int, nargs="*", default=[], help="sizes for the blocked vs naive comparison")
    parser.add_argument("--skip-dl", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="also time the search with fp32 candidates")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, m, d, n = args.worker
        print(json.dumps(worker(kind, int(m), int(d), int(n))))
        return
    print(f"load average at start: {loadavg()}")
    for m in args.naive:
        blocked = run_worker("search-fp32", m, args.dim)  # the naive search uses the fp32 error bound
        naive = run_worker("naive", m, args.dim)
        diff = float(np.max(np.abs(np.array(blocked["pair_cosine"]) - np.array(naive["pair_cosine"]))))
        print(f"[naive] m={m} d={args.dim}: blocked {blocked['seconds']:.1f}s {blocked['peak_gib']:.2f} GiB | naive "
              f"{naive['seconds']:.1f}s {naive['peak_gib']:.2f} GiB | speed-up {naive['seconds'] / blocked['seconds']:.1f}x, "
              f"memory ratio {blocked['peak_gib'] / max(naive['peak_gib'], 1e-9):.3f}, max |Δ cos| {diff:.2e} "
              f"(load {loadavg()})")
        fast = run_worker("dl", m, args.dim, m)
        slow = run_worker("naive-dl", m, args.dim, m)
        print(f"[naive] description length m={m} tokens={m}: module {fast['seconds']:.1f}s {fast['peak_gib']:.2f} GiB | "
              f"naive {slow['seconds']:.1f}s {slow['peak_gib']:.2f} GiB | speed-up {slow['seconds'] / fast['seconds']:.1f}x, "
              f"bins {fast['bins']} vs {slow['bins']}, |Δ bits| {abs(fast['bits'] - slow['bits']):.2e} (load {loadavg()})")
    shapes = [(m, args.dim) for m in args.sizes] + ([(max(args.sizes), 2304)] if args.wide else [])
    for m, d in shapes:
        for kind in ("search", "search-fp32") if args.fp32 else ("search",):
            res = run_worker(kind, m, d)
            print(f"[{kind}] m={m} d={d}: {res['seconds']:.1f}s, peak {res['peak_gib']:.2f} GiB, steps {res['steps']}, "
                  f"represented {res['fraction']:.4f}, certified {res['certified']:.4f}, near-parallel pairs "
                  f"{res['near_pairs']}, crowded {res['crowded']} (load {loadavg()})")
        if not args.skip_dl:
            res = run_worker("dl", m, d, args.tokens)
            print(f"[dl] m={m} d={d} tokens={res['tokens']}: {res['seconds']:.1f}s, peak {res['peak_gib']:.2f} GiB, steps "
                  f"{res['steps']}, {res['bits']:.2f} bits/token at {res['bins']} bins, EV {res['ev']:.3f}, L0 {res['l0']:.1f} "
                  f"(load {loadavg()})")


if __name__ == "__main__":
    main()
