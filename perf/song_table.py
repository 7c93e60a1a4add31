"""Reproduce Song et al. (2025)'s toy table (Standard and TopK, 5 seeds each) with its wall time.

Trains the two faithful recipes of ``submissions/reproductions/`` (30,000 full-batch Adam steps on all
50,000 samples of the song2025-toy organism, width 32) exactly as the runner does (``train_batched`` on
the organism's full batch), then scores them with the synthetic task's evaluation (GT-MCC against the
true dictionary, decoder PW-MCC over the 10 seed pairs) and prints a table beside the paper's numbers.

    .venv/bin/python perf/song_table.py                         # the full table (both recipes)
    .venv/bin/python perf/song_table.py --steps 300 --previous  # a short run, also on the torch path

Schedules (``--schedule``):
* ``sequential`` trains one recipe after the other, each on every core the kernel self-check finds
  worth using.
* ``concurrent`` trains both at once in two processes on one thread each.
* ``balanced`` splits the ten SAEs into two single-threaded processes of equal measured cost per step
  (seeds train independently). A one-step run of each recipe on one thread times its kernel on the real
  batch, and the split with the smallest larger share wins. Each process trains its share of each
  recipe's seeds; the table scores all five seeds of a recipe together, as the other schedules do.

``--previous`` repeats the run on the implementation before the fused kernel (the torch
path, which the self-check can still pick; forced here) so that the two are compared in one run.
The 1-minute load average is printed before and after each run: the machine may be shared; CPU
seconds (this process and its workers) are printed beside wall seconds because on a shared machine the
wall time measures the other jobs as much as this one. With ``--steps``, the full table's training CPU
time is projected from the per-step cost (constant after the first step: full batch, fixed shapes), and
for the sequential schedule its wall time too (data, self-checks and scoring do not grow with the steps).

Same numbers: with ``--previous`` the two implementations train the same recipes from the same
initialisation on the same batch; the script prints the largest difference of every table entry
(GT-MCC, PW-MCC) and of the final per-seed MSE, and fails unless the MCCs agree within
:data:`MCC_TOLERANCE` and the MSEs within :data:`MSE_RTOL` (relative). The kernels agree to float32
rounding per step (tests/training), not bit for bit, so the trajectories are compared, not the bits.
The MSE check is for short runs: over all 30,000 steps rounding flips some top-k choices, and two
thread counts of the same kernel ended 1.6 % apart in a TopK seed's MSE with the MCCs 3.3e-4 apart.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perf.panel_training_curve import load_average  # noqa: E402 - the training scripts report load alike

RECIPES = {"standard": "submissions/reproductions/song2025-standard.toml",
           "topk": "submissions/reproductions/song2025-topk.toml"}
#: Largest allowed |difference| of a table entry (GT-MCC or PW-MCC, 3 decimals shown) between kernels.
MCC_TOLERANCE = 2e-3
#: Largest allowed relative difference of a seed's final reconstruction MSE between kernels.
MSE_RTOL = 1e-3
FULL_STEPS = 30_000
#: Song et al. (2025), Table 1 (toy model organism): GT-MCC and PW-MCC
PAPER = {"standard": (0.631, 0.609), "topk": (0.968, 0.951)}


def _recipe(name: str, steps: int | None):
    from benchmark.submission.manifest import load_manifest

    recipe = load_manifest(REPO / RECIPES[name]).submission.recipe
    return recipe if steps is None else recipe.with_hyperparameters(steps=steps)


def train_seeds(name: str, steps: int | None, kernel: str | None, kernel_threads: int | None, torch_threads: int | None,
                seeds: list[int] | None = None) -> dict:
    """Train one recipe (or some of its seeds: seeds train independently); the SAEs and the timings."""
    import torch

    from benchmark.data.organisms import Organism
    from benchmark.training import train_batched

    if torch_threads:
        torch.set_num_threads(torch_threads)
    recipe = _recipe(name, steps)
    seeds = list(recipe.seeds if seeds is None else seeds)
    hp = recipe.hyperparameters
    organism = Organism(recipe.presets[0])
    batches = organism.batches(hp.effective_batch_size, hp.steps)
    load_before = load_average()
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_batched(recipe, batches, d_in=organism.d_in, quiet=True, seeds=seeds, kernel=kernel,
                           kernel_threads=kernel_threads)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"recipe": name, "steps": hp.steps, "seeds": seeds, "saes": result.saes, "train_s": wall,
            "train_cpu_s": cpu, "load_before": load_before, "load_after": load_average(),
            "final_mse": result.log["final"]["mse"], "kernel": result.log["kernel"]}


def score(trained: dict) -> dict:
    """The table's row for one recipe's trained SAEs: GT-MCC and decoder PW-MCC (synthetic task's evaluation)."""
    from benchmark.data.organisms import Organism
    from tasks.synthetic import evaluate_preset

    organism = Organism(_recipe(trained["recipe"], None).presets[0])
    metrics, _ = evaluate_preset(trained.pop("saes"), organism)
    value = {m.metric: m.value for m in metrics if m.subset == f"preset={organism.preset.name}"}
    return {**trained, "gt_mcc": value["gt_mcc"], "pw_mcc": value["decoder_pw_mcc"]}


def train_one(name: str, steps: int | None, kernel: str | None, kernel_threads: int | None, torch_threads: int | None) -> dict:
    """Train one recipe and score it; returns the row of the table (seconds, metrics, kernel record)."""
    return score(train_seeds(name, steps, kernel, kernel_threads, torch_threads))


def _worker(args: tuple) -> dict:
    return train_one(*args)


def _train_share(args: tuple) -> list[dict]:
    """One process of the balanced schedule: its share of each recipe's seeds, one after the other, one thread."""
    share, steps, kernel = args
    return [train_seeds(name, steps, kernel, 1, 1, seeds) for name, seeds in share.items()]


def step_costs(kernel: str | None) -> dict[str, float]:
    """Seconds per training step per seed of each recipe on one thread, from the kernel self-check's timing
    of the chosen kernel on the real batch (a one-step training run)."""
    costs = {}
    for name in RECIPES:
        trained = train_seeds(name, 1, kernel, 1, 1)
        # no probe when the self-check had one candidate (the torch path forced): the step's own time
        per_step_ms = (trained["kernel"].get("probe_ms") or {}).get(kernel_label(trained["kernel"]))
        costs[name] = (per_step_ms / 1e3 if per_step_ms else trained["train_s"]) / len(trained["seeds"])
    return costs


def balanced_shares(costs: dict[str, float], seeds: dict[str, list[int]]) -> list[dict[str, list[int]]]:
    """Two shares of the table's SAEs (per recipe, a prefix of its seeds and the rest) whose larger
    total cost per step (``costs``: seconds per seed-step) is the least."""
    names = list(costs)
    best = None
    for counts in itertools.product(*(range(len(seeds[name]) + 1) for name in names)):
        first = sum(count * costs[name] for name, count in zip(names, counts))
        second = sum((len(seeds[name]) - count) * costs[name] for name, count in zip(names, counts))
        if best is None or max(first, second) < best[0]:
            best = (max(first, second), counts)
    counts = dict(zip(names, best[1]))
    return [{name: seeds[name][:counts[name]] for name in names if counts[name]},
            {name: seeds[name][counts[name]:] for name in names if counts[name] < len(seeds[name])}]


def _merge(pieces: list[dict]) -> dict:
    """One recipe's row from the pieces that trained its seeds (seconds add up; SAEs and MSEs by seed)."""
    pieces = sorted(pieces, key=lambda piece: piece["seeds"][0])
    kernels = {kernel_label(p["kernel"]) for p in pieces}
    return {"recipe": pieces[0]["recipe"], "steps": pieces[0]["steps"], "seeds": [s for p in pieces for s in p["seeds"]],
            "saes": {seed: sae for p in pieces for seed, sae in p["saes"].items()},
            "train_s": sum(p["train_s"] for p in pieces), "train_cpu_s": sum(p["train_cpu_s"] for p in pieces),
            "load_before": pieces[0]["load_before"], "load_after": pieces[-1]["load_after"],
            "final_mse": [m for p in pieces for m in p["final_mse"]],
            "kernel": {"name": " + ".join(sorted(kernels)), "pieces": [p["kernel"] for p in pieces]}}


def run_table(steps: int | None, schedule: str, kernel: str | None) -> dict:
    load_before = load_average()
    start = time.perf_counter()
    extra = {}
    if schedule == "concurrent":
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(len(RECIPES)) as pool:
            rows = pool.map(_worker, [(name, steps, kernel, 1, 1) for name in RECIPES])
    elif schedule == "balanced":
        costs = step_costs(kernel)
        shares = balanced_shares(costs, {name: list(_recipe(name, None).seeds) for name in RECIPES})
        extra = {"seed_step_ms": {name: round(cost * 1e3, 3) for name, cost in costs.items()}, "shares": shares,
                 "split_s": time.perf_counter() - start}
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(len(shares)) as pool:
            pieces = [piece for share in pool.map(_train_share, [(share, steps, kernel) for share in shares]) for piece in share]
        rows = [score(_merge([p for p in pieces if p["recipe"] == name])) for name in RECIPES]
    else:
        rows = [train_one(name, steps, kernel, None, None) for name in RECIPES]
    return {"schedule": schedule, "kernel": kernel or "self-check", "wall_s": time.perf_counter() - start,
            "load_before": load_before, "load_after": load_average(), "rows": rows, **extra}


def kernel_label(kernel: dict) -> str:
    """``fused-dense×2``; a recipe trained in pieces names each piece's kernel (the merge already did)."""
    return kernel["name"] if "pieces" in kernel else f"{kernel['name']}×{kernel.get('threads', 1)}"


def markdown(tables: list[dict]) -> str:
    lines = ["| implementation | schedule | recipe | steps | train s | GT-MCC | PW-MCC | paper GT / PW | kernel | load avg (start→end) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for table in tables:
        for row in table["rows"]:
            paper = PAPER[row["recipe"]]
            kernel = row["kernel"]
            lines.append(f"| {table['kernel']} | {table['schedule']} | {row['recipe']} | {row['steps']:,} | {row['train_s']:.0f} "
                         f"| {row['gt_mcc']:.3f} | {row['pw_mcc']:.3f} | {paper[0]:.3f} / {paper[1]:.3f} "
                         f"| {kernel_label(kernel)} | {row['load_before']:.1f}→{row['load_after']:.1f} |")
        lines.append(f"| {table['kernel']} | {table['schedule']} | **table** | | **{table['wall_s']:.0f}** | | | | "
                     f"| {table['load_before']:.1f}→{table['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override the recipes' 30,000 steps (a quick check)")
    parser.add_argument("--schedule", choices=["sequential", "concurrent", "balanced"], default="sequential")
    parser.add_argument("--previous", action="store_true", help="also run the torch path (the implementation before the fused kernel)")
    parser.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared machine
    tables = [run_table(args.steps, args.schedule, None)]
    if args.previous:
        tables.append(run_table(args.steps, args.schedule, "torch"))
    print(markdown(tables))
    for table in tables:
        cpu = sum(row["train_cpu_s"] for row in table["rows"])
        line = f"\n{table['kernel']}: table {table['wall_s']:.0f} s wall, {cpu:.0f} CPU-s of training"
        steps = table["rows"][0]["steps"]
        if steps != FULL_STEPS:
            line += f"; projected to {FULL_STEPS:,} steps: {cpu * FULL_STEPS / steps / 60:.1f} CPU-min of training"
            if table["schedule"] == "sequential":  # data, self-checks and scoring do not grow with the steps
                trained = sum(row["train_s"] for row in table["rows"])
                projected = table["wall_s"] - trained + trained * FULL_STEPS / steps
                line += f", {projected / 60:.1f} min wall here"
        print(line)
    ok = True
    if len(tables) == 2:
        print(f"\nspeed-up (same steps, same schedule): {tables[1]['wall_s'] / tables[0]['wall_s']:.2f}x wall, "
              f"{sum(r['train_cpu_s'] for r in tables[1]['rows']) / sum(r['train_cpu_s'] for r in tables[0]['rows']):.2f}x CPU")
        ok = print_agreement(tables[0], tables[1])
    if args.json:
        args.json.write_text(json.dumps(tables, indent=1, default=str))
    return 0 if ok else 1


def print_agreement(new: dict, previous: dict) -> bool:
    """Print the largest per-recipe differences between two runs of the table; True when within tolerance."""
    ok = True
    for a, b in zip(new["rows"], previous["rows"]):
        d_gt, d_pw = abs(a["gt_mcc"] - b["gt_mcc"]), abs(a["pw_mcc"] - b["pw_mcc"])
        d_mse = max(abs(x - y) / abs(y) for x, y in zip(a["final_mse"], b["final_mse"]))
        within = d_gt <= MCC_TOLERANCE and d_pw <= MCC_TOLERANCE and d_mse <= MSE_RTOL
        ok &= within
        print(f"{a['recipe']}: |ΔGT-MCC| {d_gt:.1e}, |ΔPW-MCC| {d_pw:.1e} (tolerance {MCC_TOLERANCE:g}), "
              f"max relative ΔMSE {d_mse:.1e} (tolerance {MSE_RTOL:g}): {'same numbers' if within else 'DIFFERENT'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
