"""Training curve of the zipf-hierarchy reliability panel: how explained variance and PW-MCC grow with steps.

Issue 13 asks for a panel trained "long enough that explained variance on held-out activations
plateaus (report the curve)" and for how PW-MCC grows with training length. This script trains each
architecture's panel recipe (``submissions/panel/zipf-*.toml``: width 1,024, batch 512, Adam 1e-3,
unit-norm decoder rows) ONCE, up to the largest step count asked, on the seeds asked (default 3 of
the panel's 5), and evaluates the SAEs at every checkpoint through ``train_batched``'s checkpoint
hook (the SAEs at step N equal those of a plain N-step run: constant learning rate;
tests/training/test_training.py). Evaluation is the synthetic task's own
(:func:`tasks.synthetic.evaluate_preset`, task seed 0): on the organism's held-out samples,
explained variance and L0; GT-MCC against the true dictionary (mean ± std over seeds); decoder
PW-MCC over the seed pairs (mean ± std over pairs) and their chance baselines (independent random
unit dictionaries of the same shapes).

    .venv/bin/python perf/panel_training_curve.py                                   # all six, 250..4,000 steps, seeds 0-2
    .venv/bin/python perf/panel_training_curve.py --architectures standard,gated \\
        --steps 500,1000 --seeds 0 --set standard.l1_coefficient=1e-2               # calibrate a sparsity penalty
    .venv/bin/python perf/panel_training_curve.py --json curve.json

Training seconds are cumulative at each checkpoint (evaluation excluded) and per recipe with the
seeds asked; the 1-minute load average is printed at the start and end of each recipe (the machine
may be shared). ``--set ARCH.FIELD=VALUE`` overrides a recipe hyperparameter (to find the sparsity
penalty giving an L0 near the TopK k); the JSON records every recipe as trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PANEL = REPO / "submissions" / "panel"
#: architecture → its zipf-hierarchy panel manifest
MANIFESTS = {
    "standard": "zipf-standard.toml",
    "topk": "zipf-topk-k8.toml",
    "batchtopk": "zipf-batchtopk-k8.toml",
    "jumprelu": "zipf-jumprelu.toml",
    "gated": "zipf-gated.toml",
    "matryoshka": "zipf-matryoshka.toml",
}
DEFAULT_STEPS = (250, 500, 1000, 2000, 4000)
#: columns of a curve row (besides architecture and steps) read from the task's per-preset rows
METRICS = ("explained_variance", "l0", "gt_mcc", "decoder_pw_mcc", "chance_mcc", "gt_mcc_chance", "shared_fraction",
           "never_fired_fraction")


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def panel_recipe(architecture: str, *, steps: int, seeds: list[int], overrides: dict[str, Any] | None = None,
                 panel: Path = PANEL):
    """The panel manifest's recipe with ``steps``, ``seeds`` and hyperparameter ``overrides``."""
    from benchmark.submission.manifest import load_manifest

    recipe = load_manifest(panel / MANIFESTS[architecture]).submission.recipe
    return recipe.with_hyperparameters(steps=steps, **(overrides or {})).model_copy(update={"seeds": list(seeds)})


def evaluate(saes: dict[int, Any], organism, *, eval_samples: int | None = None) -> dict[str, Any]:
    """The synthetic task's per-preset values (and stds) for ``{seed: SAE}`` (task seed 0)."""
    from tasks.synthetic import evaluate_preset

    rows, tables = evaluate_preset(saes, organism, eval_samples=eval_samples)
    subset = f"preset={organism.preset.name}"
    out: dict[str, Any] = {}
    for row in rows:
        if row.subset == subset and row.metric in METRICS:
            out[row.metric] = row.value
            out[f"{row.metric}_std"] = row.std
    out["l0_per_seed"] = [float(v) for v in tables["per_seed"]["l0"]]
    return out


def curve(recipe, organism, checkpoints: list[int], *, kernel: str | None = None, eval_samples: int | None = None,
          on_row=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``recipe`` once to its ``steps``; evaluate at every step count of ``checkpoints``.
    Returns the curve rows (one per checkpoint) and the training log; ``on_row(rows)`` after each row."""
    from benchmark.training import train_batched

    hp = recipe.hyperparameters
    rows: list[dict[str, Any]] = []
    clock = {"start": time.perf_counter(), "eval": 0.0}

    def on_checkpoint(step: int, saes: dict[int, Any]) -> None:
        reached = time.perf_counter()
        row = {"architecture": recipe.architecture, "steps": step,
               "train_s": reached - clock["start"] - clock["eval"], **evaluate(saes, organism, eval_samples=eval_samples)}
        row["eval_s"] = time.perf_counter() - reached
        clock["eval"] += row["eval_s"]
        rows.append(row)
        if on_row is not None:
            on_row(rows)

    result = train_batched(recipe, organism.batches(hp.effective_batch_size, hp.steps), d_in=organism.d_in, quiet=True,
                           kernel=kernel, checkpoints=checkpoints, on_checkpoint=on_checkpoint)
    return rows, result.log


def fmt(value: float | None, std: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = ["| architecture | steps | train s | EV | L0 | GT-MCC | decoder PW-MCC | chance (PW / GT) | ΔEV since last |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        previous = None
        for row in run["rows"]:
            delta = "" if previous is None else f"{row['explained_variance'] - previous:+.3f}"
            previous = row["explained_variance"]
            lines.append(f"| {row['architecture']} | {row['steps']:,} | {row['train_s']:.0f} | {fmt(row['explained_variance'])} "
                         f"| {fmt(row['l0'], digits=1)} | {fmt(row['gt_mcc'], row['gt_mcc_std'])} "
                         f"| {fmt(row['decoder_pw_mcc'], row.get('decoder_pw_mcc_std'))} "
                         f"| {fmt(row['chance_mcc'])} / {fmt(row['gt_mcc_chance'])} | {delta} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", default=",".join(MANIFESTS), help="comma-separated (default: all six)")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="checkpoints; trains to the largest")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (the panel's first three by default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="ARCH.FIELD=VALUE",
                        help="override a recipe hyperparameter (repeatable)")
    parser.add_argument("--eval-samples", type=int, default=None, help="held-out samples (default: the preset's 16,384)")
    parser.add_argument("--kernel", choices=["torch", "fused"], default=None, help="restrict the training kernel self-check")
    parser.add_argument("--json", type=Path, default=None, help="write the curve here (rewritten after every checkpoint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared machine

    from benchmark.data.organisms import Organism

    architectures = [a.strip() for a in args.architectures.split(",") if a.strip()]
    unknown = sorted(set(architectures) - set(MANIFESTS))
    if unknown:
        parser.error(f"unknown architectures {unknown}; known: {', '.join(MANIFESTS)}")
    checkpoints = sorted({int(s) for s in args.steps.split(",")})
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        arch, _, field = key.partition(".")
        if arch not in MANIFESTS or not field or not value:
            parser.error(f"--set expects ARCH.FIELD=VALUE with ARCH one of {', '.join(MANIFESTS)}, got {item!r}")
        overrides.setdefault(arch, {})[field] = parse_value(value)
    organism = Organism("zipf-hierarchy")
    runs: list[dict[str, Any]] = []
    for arch in architectures:
        recipe = panel_recipe(arch, steps=checkpoints[-1], seeds=seeds, overrides=overrides.get(arch))
        load_before = load_average()
        run: dict[str, Any] = {"architecture": arch, "recipe": recipe.model_dump(mode="json"), "rows": [],
                               "load_before": load_before}
        runs.append(run)

        def landed(rows: list[dict[str, Any]], run: dict[str, Any] = run) -> None:  # partial results survive a kill
            run["rows"] = list(rows)
            print(markdown([{"rows": rows[-1:]}]).splitlines()[-1], flush=True)
            if args.json:
                args.json.write_text(json.dumps(runs, indent=1, default=str))

        rows, train_log = curve(recipe, organism, checkpoints, kernel=args.kernel, eval_samples=args.eval_samples,
                                on_row=landed)
        run.update(rows=rows, load_after=load_average(),
                   train_log={k: train_log.get(k) for k in ("steps", "wall_s", "steps_per_s", "threads", "kernel",
                                                            "path", "checkpoint_s", "final")})
        last = rows[-1]
        print(f"{arch}: {train_log['steps']} steps × {len(seeds)} seeds in {train_log['wall_s']:.0f} s "
              f"({train_log['steps_per_s']:.1f} steps/s, kernel {train_log['kernel'].get('name')}); "
              f"L0 per seed {[round(v, 1) for v in last['l0_per_seed']]}; load {load_before:.2f}→{load_average():.2f}",
              flush=True)
        if args.json:
            args.json.write_text(json.dumps(runs, indent=1, default=str))
    print()
    print(markdown(runs))
    print(f"\nload average at the end: {Path('/proc/loadavg').read_text().strip() if Path('/proc/loadavg').exists() else 'n/a'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
