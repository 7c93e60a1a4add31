"""The training loop: Adam with warm-up and decay, decoder renormalisation, AuxK dead-latent tracking."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from benchmark.errors import CanonBenchError
from benchmark.submission.manifest import RecipeSpec

log = logging.getLogger(__name__)

#: Bumped whenever a change to this module changes what a recipe trains to (part of cache keys).
from benchmark.training.batched import TRAINABLE, TRAINER_VERSION, BatchedSAE, TrainingResult, LOG_EVERY, SMALL_STEP_MACS
from benchmark.training.fast_path import _FastSAE, uses_fast_path
from benchmark.training.kernel_choice import choose_kernel

# --- training loop --------------------------------------------------------------------------------
def _lr_lambda(hp) -> Callable[[int], float]:
    steps, warmup = hp.steps, hp.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if hp.lr_decay == "none":
            return 1.0
        progress = (step - warmup) / max(steps - warmup, 1)
        if hp.lr_decay == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _batch_source(batches: Iterable[torch.Tensor] | Callable[[int], torch.Tensor]) -> Callable[[int], torch.Tensor | None]:
    if callable(batches) and not hasattr(batches, "__iter__"):
        return batches  # type: ignore[return-value]
    iterator = iter(batches)  # type: ignore[arg-type]

    def next_batch(step: int) -> torch.Tensor | None:
        return next(iterator, None)

    return next_batch


def check_recipe(recipe: RecipeSpec, *, file: Any = None) -> None:
    """Raise a one-line error for a recipe this trainer cannot run."""
    hp = recipe.hyperparameters
    where = "recipe.hyperparameters"
    if recipe.architecture not in TRAINABLE:
        raise CanonBenchError(f"cannot train {recipe.architecture!r}", file=file, field="recipe.architecture")
    if recipe.architecture in ("topk", "batchtopk", "matryoshka") and not hp.k:
        raise CanonBenchError(f"{recipe.architecture} needs k", file=file, field=f"{where}.k")
    if hp.k and hp.k > recipe.width:
        raise CanonBenchError(f"k={hp.k} exceeds width {recipe.width}", file=file, field=f"{where}.k")
    if hp.k and recipe.widths and hp.k > min(recipe.widths):
        raise CanonBenchError(f"k={hp.k} exceeds the ladder's narrowest width {min(recipe.widths)}", file=file,
                              field="recipe.widths")
    if recipe.architecture == "matryoshka" and not hp.matryoshka_widths:
        raise CanonBenchError("matryoshka needs matryoshka_widths", file=file, field=f"{where}.matryoshka_widths")


def train_batched(
    recipe: RecipeSpec,
    batches: Iterable[torch.Tensor] | Callable[[int], torch.Tensor],
    *,
    d_in: int,
    device: str = "cpu",
    quiet: bool = False,
    seeds: list[int] | None = None,
    kernel_threads: int | None = None,
    kernel: str | None = None,
    checkpoints: Iterable[int] = (),
    on_checkpoint: Callable[[int, dict[int, Any]], None] | None = None,
) -> TrainingResult:
    """Train every seed of ``recipe`` (or ``seeds``) together; returns one SAE per seed.

    ``batches``: an iterable of ``[batch, d_in]`` float tensors or a callable ``step -> tensor``; the
    same batch goes to every seed. Runs ``recipe.hyperparameters.steps`` steps (fewer if an iterable
    ends first; the log says how many). Adam (β = 0.9, 0.999) at ``lr`` with the recipe's warm-up and
    decay; decoder rows renormalised after every step when ``normalise_decoder``. fp32 unless the
    recipe asks for ``bfloat16`` (autocast of the forward pass; parameters stay fp32).

    Hand-written-gradient recipes train on the kernel a timed self-check picks for this machine
    (:func:`benchmark.training.kernel_choice.choose_kernel`; recorded as ``log["kernel"]``).
    ``kernel_threads`` fixes the fused kernel's thread count (e.g. 1 when recipes train side by side
    in separate processes); None lets the self-check try 1 and the caller's torch thread count.
    ``kernel`` restricts the self-check to ``"torch"`` or ``"fused"`` candidates (benchmarks, checks
    that both give the same SAEs); None considers every candidate.

    ``checkpoints`` + ``on_checkpoint``: after each listed step count N (1 ≤ N ≤ steps) the callback
    gets ``(N, {seed: SAE})``, SAEs that own their tensors (training goes on unchanged and does not
    touch them), so one run yields a training curve. Every step's update depends only on the steps
    before it (the learning-rate factor on the step index and the recipe's ``steps``), so with
    ``lr_decay = "none"`` the SAEs at N equal those of a plain ``N``-step run (tests/training); a
    decaying schedule is stretched over the whole run. Time spent in the callback is left out of
    ``log["wall_s"]`` and reported as ``log["checkpoint_s"]``.
    """
    check_recipe(recipe)
    seeds = list(recipe.seeds if seeds is None else seeds)
    if not seeds:
        raise CanonBenchError("no seeds to train", field="seeds")
    checkpoints = sorted({int(n) for n in checkpoints})
    if checkpoints and on_checkpoint is None:
        raise CanonBenchError("checkpoints given without on_checkpoint", field="checkpoints")
    if checkpoints and not 1 <= checkpoints[0] <= checkpoints[-1] <= recipe.hyperparameters.steps:
        raise CanonBenchError(f"checkpoints must lie in 1..{recipe.hyperparameters.steps} (the recipe's steps), "
                              f"got {checkpoints}", field="checkpoints")
    dev = torch.device(device)
    previous_threads = torch.get_num_threads()
    try:
        return _train(recipe, batches, d_in=d_in, dev=dev, quiet=quiet, seeds=seeds,
                      max_threads=previous_threads, kernel_threads=kernel_threads, kernel=kernel,
                      checkpoints=frozenset(checkpoints), on_checkpoint=on_checkpoint)
    finally:
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)


def _thread_count(dev: torch.device, n_seeds: int, batch_rows: int, d_in: int, width: int) -> int:
    """CPU threads to train with: 1 when one dense product of a step is under :data:`SMALL_STEP_MACS`.

    A small SAE's step is dozens of element-wise ops and skinny GEMMs (inner dimension d_in) that are
    memory-bound: a second thread buys little, and on a loaded 2-core machine every op then waits for a
    descheduled sibling (measured with load average ~7 on 2 cores: small ops 3-10× slower with 2 threads
    than 1; the Song full-batch step 0.31 → 0.78 s, the zipf-hierarchy step 0.05 → 0.18 s). Steps above
    the bound (model-sized SAEs, d_in in the hundreds) keep torch's setting."""
    if dev.type != "cpu":
        return torch.get_num_threads()
    macs = n_seeds * batch_rows * d_in * width
    return 1 if macs < SMALL_STEP_MACS else torch.get_num_threads()


def _train(recipe: RecipeSpec, batches, *, d_in: int, dev: torch.device, quiet: bool, seeds: list[int],
           max_threads: int = 1, kernel_threads: int | None = None, kernel: str | None = None,
           checkpoints: frozenset[int] = frozenset(), on_checkpoint=None) -> TrainingResult:
    hp = recipe.hyperparameters
    model = BatchedSAE(recipe, d_in, seeds).to(dev)
    if hp.normalise_decoder:
        model.normalise_decoder()
    fast = _FastSAE(model, recipe) if uses_fast_path(recipe) else None
    params = fast.params if fast is not None else list(model.parameters())
    optimiser = _adam(params, hp.lr, dev)
    lr_factor = _lr_lambda(hp)
    next_batch = _batch_source(batches)
    track_dead = bool(hp.aux_k_coefficient and hp.dead_after_steps)
    steps_since_fired = torch.zeros(len(seeds), recipe.width, dtype=torch.long, device=dev)
    autocast = hp.dtype == "bfloat16"
    kernel_record: dict[str, Any] = {"name": "torch" if fast is not None else "autograd"}
    started = time.perf_counter()
    last: dict[str, torch.Tensor] = {}
    done = 0
    checkpoint_s = 0.0  # time inside on_checkpoint (not training)
    bar = tqdm(total=hp.steps, desc=f"train {recipe.architecture}×{len(seeds)} seeds", disable=quiet, unit="step", mininterval=1.0)
    for step in range(hp.steps):
        x = next_batch(step)
        if x is None:
            log.warning("batches ran out after %d of %d steps", step, hp.steps)
            break
        if x.dim() != 2 or x.shape[1] != d_in:
            raise CanonBenchError(f"batch {step} has shape {tuple(x.shape)}, expected [batch, {d_in}]", field="batches")
        x = x.to(dev, torch.float32, non_blocking=True)
        if step == 0:
            threads = _thread_count(dev, len(seeds), x.shape[0], d_in, recipe.width)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)  # train_batched restores the caller's setting
            if fast is not None:
                choice = choose_kernel(fast, x, max_threads=max_threads, threads=kernel_threads, only=kernel)
                fast.use_kernel(choice.kernel, choice.threads)
                kernel_record = {"name": choice.name, "threads": choice.threads, **choice.record}
        logging_step = step % LOG_EVERY == 0 or step + 1 == hp.steps
        for group in optimiser.param_groups:
            group["lr"] = hp.lr * lr_factor(step)
        if fast is not None:
            terms = fast.step_grads(x, stats=logging_step)
            optimiser.step()
            if hp.normalise_decoder:
                fast.normalise_decoder()
        else:
            dead_mask = (steps_since_fired >= hp.dead_after_steps) if track_dead else None
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                terms = model.losses(x, recipe, dead_mask, stats=logging_step)
            optimiser.zero_grad(set_to_none=True)
            terms["total"].float().sum().backward()
            optimiser.step()
            if hp.normalise_decoder:
                model.normalise_decoder()
        with torch.no_grad():
            if "_batch_min" in terms:
                _update_threshold(model, terms["_batch_min"])
            if track_dead:
                fired = (terms["_z"] > 0).any(dim=1)
                steps_since_fired = torch.where(fired, torch.zeros_like(steps_since_fired), steps_since_fired + 1)
        done = step + 1
        if done in checkpoints:
            paused = time.perf_counter()
            if fast is not None:
                fast.write_back()
            on_checkpoint(done, model.to_saes(recipe))
            checkpoint_s += time.perf_counter() - paused
        if logging_step:
            last = {k: v.detach() for k, v in terms.items() if not k.startswith("_")}
            if not quiet:
                bar.update(done - bar.n)  # the bar moves every LOG_EVERY steps: no per-step bookkeeping
                bar.set_postfix(mse=f"{float(last['mse'].mean()):.4g}", l0=f"{float(last['l0'].mean()):.3g}")
    bar.update(done - bar.n)
    bar.close()
    wall = time.perf_counter() - started - checkpoint_s
    if not last:
        raise CanonBenchError("no training batches were given", field="batches")
    if fast is not None:
        fast.write_back()
    saes = model.to_saes(recipe)
    train_log = {
        "steps": done,
        "seeds": seeds,
        "wall_s": wall,
        "steps_per_s": done / wall if wall > 0 else None,
        "device": str(dev),
        "dtype": hp.dtype,
        "threads": torch.get_num_threads(),
        "path": "analytic" if fast is not None else "autograd",
        "kernel": kernel_record,
        "trainer_version": TRAINER_VERSION,
        **({"checkpoint_s": checkpoint_s} if checkpoints else {}),
        "final": {name: [float(v) for v in values.float().cpu()] for name, values in last.items()},
    }
    if recipe.architecture in ("batchtopk", "matryoshka"):
        train_log["threshold"] = [float(t) for t in model.threshold_estimate.cpu()]
    log.info("trained %s × %d seeds: %d steps in %.1fs", recipe.architecture, len(seeds), done, wall)
    return TrainingResult(saes=saes, log=train_log)


def _adam(params: list[torch.Tensor], lr: float, dev: torch.device) -> torch.optim.Optimizer:
    """Adam (β = 0.9, 0.999); the fused kernel (one pass over all stacked tensors) where torch has it."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), foreach=dev.type != "cpu" or None)


def _update_threshold(model: BatchedSAE, batch_min: torch.Tensor) -> None:
    """Each batch's smallest kept activation, averaged: a plain mean over the first 100 steps, then an
    exponential moving average (decay 0.99) so the estimate follows the late, trained encoder."""
    finite = torch.isfinite(batch_min)
    n = int(model.threshold_seen) + 1
    update = torch.where(finite, batch_min, model.threshold_estimate)
    model.threshold_estimate.add_((update - model.threshold_estimate) * max(1.0 / n, 0.01))
    model.threshold_seen.fill_(n)
