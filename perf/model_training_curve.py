"""Training curve of a model recipe (e.g. the SmolLM2 references): how PW-MCC grows with training length.

The synthetic panel's curve (``perf/panel_training_curve.py``) runs on an organism; this one runs on a
real model's cached corpus activations, the setting of Song et al.'s PW-MCC 0.80 for TopK. The
manifest's recipe trains ONCE per run (its seeds, or ``--seeds``) and is evaluated at every checkpoint
through ``train_batched``'s checkpoint hook:

* decoder PW-MCC: mean over seed pairs of the exact matching's mean cosine
  (:func:`benchmark.metrics.seed_pairs.compare_pair`, the cross-seed task's kernel), with the shared
  fraction (same partner in both matchings, both cosines > 0.7);
* chance: the MCC of independent random unit dictionaries of the same shapes;
* explained variance, L0 and the never-fired fraction on held-out rows: the last ``--heldout`` rows of
  the corpus activations (the last documents), which the curve's run never trains on.

Differences from the reference recipe, on purpose: the held-out rows are removed from training, and
the learning rate is constant after warm-up (``lr_decay = "none"``), so that the SAEs at step N are
those of a plain N-step run (a decaying schedule would be stretched over the longest run). More steps
than one epoch of the corpus cycle through it again, in a fresh seeded order per epoch, exactly as the
runner's trainer does.

    .venv/bin/python perf/model_training_curve.py submissions/reference/smollm2-topk-k32.toml \
        --steps 300,1000,3000 --cache-dir /path/to/.canonbench/cache --json curve.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf.panel_training_curve import load_average, parse_value  # noqa: E402 - the curves share one CLI


def curve_recipe(recipe, *, steps: int, seeds: list[int] | None, overrides: dict[str, Any]):
    """``recipe`` trained to ``steps`` with a constant learning rate after warm-up (and ``overrides``)."""
    recipe = recipe.with_hyperparameters(steps=steps, lr_decay="none", **overrides)
    return recipe if seeds is None else recipe.model_copy(update={"seeds": list(seeds)})


def heldout_stats(saes: dict[int, Any], heldout_ND) -> dict[str, Any]:
    """Mean over seeds of explained variance, L0 and the never-fired fraction on the held-out rows
    ``[N, d_in]`` (:func:`benchmark.metrics.reconstruction.reconstruction_stats`, the tasks' kernel)."""
    from benchmark.metrics.reconstruction import reconstruction_stats

    per_seed = [reconstruction_stats(sae, heldout_ND) for _, sae in sorted(saes.items())]
    out = {name: sum(s[name] for s in per_seed) / len(per_seed)
           for name in ("explained_variance", "l0", "never_fired_fraction")}
    out["explained_variance_per_seed"] = [s["explained_variance"] for s in per_seed]
    return out


def pair_stats(saes: dict[int, Any]) -> dict[str, Any]:
    """Decoder PW-MCC and shared fraction, mean (and values) over every seed pair."""
    from benchmark.metrics.seed_pairs import compare_pair

    mccs, shared = [], []
    for (seed_a, sae_a), (seed_b, sae_b) in itertools.combinations(sorted(saes.items()), 2):
        pair = compare_pair(seed_a, sae_a, seed_b, sae_b)
        mccs.append(pair.decoder.mcc)
        shared.append(float(pair.shared_a.mean()))
    return {"decoder_pw_mcc": sum(mccs) / len(mccs), "decoder_pw_mcc_pairs": mccs,
            "shared_fraction": sum(shared) / len(shared)}


def check_heldout(n_rows: int, heldout: int) -> None:
    """Raise ValueError unless ``heldout`` rows leave at least half of ``n_rows`` for training."""
    if not 0 < heldout < n_rows // 2:
        raise ValueError(f"heldout must be in 1..{n_rows // 2 - 1} (the activations have {n_rows} rows)")


def split_rows(acts, heldout: int):
    """``(train [n - heldout, d], heldout [heldout, d] float32)``: the last ``heldout`` rows are held out."""
    n_rows = int(acts.shape[0])
    check_heldout(n_rows, heldout)
    return acts[: n_rows - heldout], acts[n_rows - heldout:].float().clone()


def curve(recipe, acts, checkpoints: list[int], *, heldout: int, on_row=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``recipe`` once on all but the last ``heldout`` rows of ``acts [n, d_in]`` (epochs in the
    runner's seeded order) and evaluate at every step count of ``checkpoints``. Returns the rows (one
    per checkpoint: held-out EV / L0 / never-fired, decoder PW-MCC over seed pairs, train seconds
    without evaluation) and the training log; ``on_row(row)`` after each row."""
    from benchmark.training import train_batched
    from benchmark.training.cache import epoch_batches

    hp = recipe.hyperparameters
    train_rows, heldout_rows = split_rows(acts, heldout)
    rows: list[dict[str, Any]] = []
    clock = {"start": time.perf_counter(), "eval": 0.0}

    def on_checkpoint(step: int, saes: dict[int, Any]) -> None:
        reached = time.perf_counter()
        row = {"steps": step, "tokens_seen": step * hp.batch_size, "epochs": step * hp.batch_size / train_rows.shape[0],
               "train_s": reached - clock["start"] - clock["eval"], **heldout_stats(saes, heldout_rows),
               **pair_stats(saes)}
        row["eval_s"] = time.perf_counter() - reached
        clock["eval"] += row["eval_s"]
        rows.append(row)
        if on_row is not None:
            on_row(row)

    result = train_batched(recipe, epoch_batches(train_rows, hp.effective_batch_size, seed=0), d_in=int(acts.shape[1]),
                           quiet=True, checkpoints=checkpoints, on_checkpoint=on_checkpoint)
    return rows, result.log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="a recipe manifest with trains_on = \"model\"")
    parser.add_argument("--steps", default="300,1000,3000", help="checkpoints; trains to the largest")
    parser.add_argument("--seeds", default=None, help="training seeds (default: the manifest's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a recipe hyperparameter (repeatable)")
    parser.add_argument("--heldout", type=int, default=8192, help="held-out rows at the end of the corpus")
    parser.add_argument("--cache-dir", type=Path, default=Path(".canonbench") / "cache")
    parser.add_argument("--json", type=Path, default=None, help="write the curve here (rewritten after every checkpoint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from benchmark.metrics.seed_pairs import chance_baseline
    from benchmark.provision import SubmissionInputs
    from benchmark.submission.manifest import load_manifest
    manifest = load_manifest(args.manifest)
    recipe = manifest.submission.recipe
    if recipe is None or recipe.trains_on != "model":
        parser.error(f"{args.manifest}: not a recipe trained on a model")
    checkpoints = sorted({int(s) for s in args.steps.split(",")})
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        if not key or not value:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        overrides[key] = parse_value(value)
    recipe = curve_recipe(recipe, steps=checkpoints[-1], seeds=seeds, overrides=overrides)
    if len(recipe.seeds) < 2:
        parser.error("PW-MCC needs at least two seeds")

    inputs = SubmissionInputs(manifest, cache_dir=args.cache_dir, quiet=True)
    provider = inputs.provider(dtype="float32")
    inputs._ensure(provider)  # noqa: SLF001 - the runner's own "compute the activations once" step
    acts = provider.activations()
    n_rows, d_in = int(acts.shape[0]), int(acts.shape[1])
    try:
        check_heldout(n_rows, args.heldout)
    except ValueError as exc:
        parser.error(f"--{exc}")
    chance, chance_std, _ = chance_baseline(recipe.width, recipe.width, d_in, seed=0)
    hp = recipe.hyperparameters
    run: dict[str, Any] = {"manifest": str(args.manifest), "recipe": recipe.model_dump(mode="json"),
                           "train_rows": n_rows - args.heldout, "heldout_rows": args.heldout, "d_in": d_in,
                           "chance_mcc": chance, "chance_mcc_std": chance_std, "load_before": load_average(), "rows": []}
    print(f"{args.manifest.name}: {recipe.architecture} width {recipe.width}, {len(recipe.seeds)} seeds, "
          f"{n_rows - args.heldout:,} training rows (one epoch = {(n_rows - args.heldout) // hp.batch_size} steps), "
          f"chance PW-MCC {chance:.3f}", flush=True)
    print("| steps | tokens seen | epochs | train s | EV (held out) | L0 | never fired | decoder PW-MCC | shared | chance |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)

    def landed(row: dict[str, Any]) -> None:  # partial results survive a kill
        run["rows"].append(row)
        print(f"| {row['steps']:,} | {row['tokens_seen']:,} | {row['epochs']:.2f} | {row['train_s']:.0f} "
              f"| {row['explained_variance']:.3f} | {row['l0']:.1f} | {row['never_fired_fraction']:.3f} "
              f"| {row['decoder_pw_mcc']:.3f} | {row['shared_fraction']:.3f} | {chance:.3f} |", flush=True)
        if args.json:
            args.json.write_text(json.dumps(run, indent=1, default=str))

    _, train_log = curve(recipe, acts, checkpoints, heldout=args.heldout, on_row=landed)
    run.update(load_after=load_average(), train_log={k: train_log.get(k) for k in
                                                     ("steps", "wall_s", "steps_per_s", "threads", "kernel", "path")})
    if args.json:
        args.json.write_text(json.dumps(run, indent=1, default=str))
    print(f"load average {run['load_before']:.2f} → {run['load_after']:.2f}; kernel {train_log['kernel'].get('name')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
