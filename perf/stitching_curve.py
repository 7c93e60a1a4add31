"""The stitched curve of the ``stitching`` task against a plain per-step recomputation.

    .venv/bin/python perf/stitching_curve.py                     # zipf-ladder-sized rung (512 → 1,024, d 64)
    .venv/bin/python perf/stitching_curve.py --narrow 2048 --wide 4096 --d 384 --k 32

Inputs: two random TopK SAEs (unit decoder rows, encoder = decoder transpose plus noise) of the
widths given, and ``--inputs`` samples that are sparse combinations of random directions. Both
sides compute the same thing, the fraction of variance unexplained after every stitching step of
the order :func:`benchmark.metrics.stitching.stitch_rung` chose:

* ours: :func:`stitch_rung` (the whole rung: one encoding pass kept as sparse activations, the
  insertion test, groups, and the curve as running sums of per-input changes);
* baseline: the curve alone, written the direct way: encode, then for each step subtract the moved
  latents' contributions from the residual and take its squared norm (float64, batches of 2,048).

The baseline excludes everything but the curve, so the ratio understates the speed-up of the
curve itself. Reported with the 1-minute load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmark.metrics.stitching import effective_decoder, stitch_rung
from benchmark.sae.model import SAE, SAEConfig


def topk_sae(width: int, d: int, k: int, seed: int) -> SAE:
    g = torch.Generator().manual_seed(seed)
    dec = torch.nn.functional.normalize(torch.randn(width, d, generator=g), dim=1)
    enc = dec.T + 0.1 * torch.randn(d, width, generator=g)
    return SAE(SAEConfig("topk", d, width, k=k), W_enc=enc, W_dec=dec)


def inputs(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(4 * d, d, generator=g)
    codes = torch.rand(n, 4 * d, generator=g) * (torch.rand(n, 4 * d, generator=g) < 8 / (4 * d))
    return codes @ directions


@torch.no_grad()
def baseline_curve(narrow: SAE, wide: SAE, x: torch.Tensor, step_wide: np.ndarray, step_narrow: np.ndarray,
                   batch: int = 2048) -> np.ndarray:
    """FVU after every step 0..n_steps (the last: the wide decoder bias), per step, densely."""
    e_s, e_l = effective_decoder(narrow), effective_decoder(wide)
    n_steps = int(max(step_wide.max(), step_narrow.max())) + 1
    members = [(np.nonzero(step_wide == t)[0], np.nonzero(step_narrow == t)[0]) for t in range(n_steps + 1)]
    xd = x.double()
    total = float(((xd - xd.mean(0)) ** 2).sum())
    sse = np.zeros(n_steps + 1)
    for start in range(0, x.shape[0], batch):
        xb = x[start:start + batch]
        z_s, z_l = narrow.encode(xb).double(), wide.encode(xb).double()
        r = xb.double() - narrow.b_dec.double() - z_s @ e_s
        sse[0] += float((r * r).sum())
        for t in range(1, n_steps + 1):
            add, remove = members[t]
            if len(add):
                r = r - z_l[:, add] @ e_l[add]
            if len(remove):
                r = r + z_s[:, remove] @ e_s[remove]
            shifted = r - (wide.b_dec.double() - narrow.b_dec.double()) if t == n_steps else r
            sse[t] += float((shifted * shifted).sum())
    return sse / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--narrow", type=int, default=512)
    parser.add_argument("--wide", type=int, default=1024)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=16384)
    args = parser.parse_args()
    narrow, wide = topk_sae(args.narrow, args.d, args.k, 1), topk_sae(args.wide, args.d, args.k, 2)
    x = inputs(args.inputs, args.d, 3)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = stitch_rung(narrow, wide, x, max_points=10**9)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    dense = baseline_curve(narrow, wide, x, result.step_wide, result.step_narrow)
    base = time.perf_counter() - started
    diff = float(np.abs(dense - result.steps["fvu"].to_numpy()).max())
    print(f"rung {args.narrow} -> {args.wide}, d={args.d}, k={args.k}, {args.inputs} inputs, "
          f"{int(result.extra['steps'])} steps, load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"stitch_rung (whole rung) {ours:.2f} s | per-step baseline (curve only) {base:.2f} s | "
          f"ratio {base / ours:.1f}x | max |dFVU| {diff:.1e}")


if __name__ == "__main__":
    main()
