"""Meta-SAEs (Leask et al. 2025): do an SAE's latents decompose into combinations of other latents?

A *meta-SAE* is a BatchTopK SAE trained on the rows of another SAE's decoder: each SAE latent is a
sample. The kernel behind the ``meta-sae`` task.

* **Data.** The SAE's decoder rows scaled to unit norm (the benchmark's dictionary convention; zero
  rows are dead and left out). SAEBench's ``meta_structure`` trains on raw ``W_dec`` rows, which are
  unit norm for SAELens checkpoints.
* **Training.** The benchmark's batched trainer (:func:`benchmark.training.train_batched`) trains
  every meta-seed as one module: BatchTopK, width ``max(ceil(width_ratio · rows), k)``, ``k`` active
  per row on average, Adam at ``lr``, ``steps`` steps of ``batch_rows`` rows drawn uniformly with
  replacement (SAEBench's ``meta_structure`` defaults: 0.25, 4, 5e-4, 1,500 steps, 1,024 rows),
  decoder rows kept at unit norm. Meta-seeds differ in initialisation; every meta-seed sees the same
  rows in the same order (the data seed).
* **Evaluation.** The trained meta-SAE encodes every row with its inference rule (BatchTopK exported
  with its estimated threshold, so a row's code does not depend on the other rows). Fraction of
  variance explained: ``1 − Σ‖row − recon‖² / Σ‖row − mean row‖²`` (SAEBench's form). SAEBench
  instead encodes batches of rows with the batch top-k rule; that value is kept as
  ``variance_explained_batch`` for comparison.
* **Consistency of decompositions across SAE seeds** (:func:`code_similarity`): two SAE seeds'
  meta-SAEs (same meta-seed index) have their meta-latents matched one-to-one by decoder cosine; the
  second's codes are re-indexed by that matching, and the cosine between the codes of two SAE latents
  measures whether they decompose into the same meta-latents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from benchmark.errors import TaskError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetaSAESettings:
    """How a meta-SAE is trained (defaults: SAEBench's ``meta_structure``)."""

    width_ratio: float = 0.25
    k: int = 4
    steps: int = 1500
    batch_rows: int = 1024
    lr: float = 5e-4

    def width(self, n_rows: int) -> int:
        return max(math.ceil(n_rows * self.width_ratio), self.k)


@dataclass
class MetaFit:
    """One trained meta-SAE evaluated on the rows it was trained on.

    ``codes``: ``[n_rows, meta_width]`` (scipy CSR) meta-latent activations of every row;
    ``variance_explained`` / ``variance_explained_batch`` as in the module docstring; ``l0``: mean
    active meta-latents per row; ``decoder``: unit meta-decoder rows ``[meta_width, d]``."""

    meta_seed: int
    variance_explained: float
    variance_explained_batch: float
    l0: float
    codes: Any
    decoder: torch.Tensor
    train_log: dict[str, Any]


def decoder_rows(sae: Any) -> tuple[torch.Tensor, np.ndarray]:
    """``(rows [n_alive, d] unit float32, alive latent indices)``: the decoder rows a meta-SAE reads."""
    dirs = sae.decoder_directions()
    alive = np.nonzero((dirs.norm(dim=1) > 0).numpy())[0]
    return dirs[torch.as_tensor(alive)].contiguous(), alive


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from the task seed and labels (stable across runs and platforms)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def meta_recipe(n_rows: int, settings: MetaSAESettings, meta_seeds: list[int]):
    """The trainer recipe of a meta-SAE on ``n_rows`` decoder rows."""
    from benchmark.submission.manifest import RecipeSpec

    return RecipeSpec.model_validate({
        # trains_on names the recipe's data kind; a meta-SAE's data are decoder rows handed to the trainer
        "architecture": "batchtopk", "width": settings.width(n_rows), "seeds": list(meta_seeds),
        "trains_on": "synthetic",
        "hyperparameters": {"lr": settings.lr, "steps": settings.steps, "batch_size": settings.batch_rows,
                            "k": settings.k, "init": "unit", "normalise_decoder": True},
    })


def cache_key(rows: torch.Tensor, settings: MetaSAESettings, meta_seeds: list[int], data_seed: int) -> str:
    """What a trained meta-SAE is a function of: the rows, the settings, the seeds, the trainer version."""
    from benchmark.training import TRAINER_VERSION

    h = hashlib.sha256()
    h.update(rows.detach().to(torch.float32).contiguous().numpy().tobytes())
    h.update(json.dumps({"settings": asdict(settings), "meta_seeds": meta_seeds, "data_seed": data_seed,
                         "trainer": TRAINER_VERSION, "shape": list(rows.shape)}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def train_meta_saes(rows: torch.Tensor, settings: MetaSAESettings, meta_seeds: list[int], *, data_seed: int,
                    device: str = "cpu", quiet: bool = True, cache: Any = None) -> dict[int, Any]:
    """``{meta_seed: SAE}``: one meta-SAE per meta-seed on ``rows [n, d]``, all trained as one batched
    module (or loaded from the task cache, keyed by :func:`cache_key`)."""
    from benchmark.sae.model import SAE, SAEConfig
    from benchmark.training import train_batched

    n, d = rows.shape
    if n < settings.k:
        raise TaskError(f"a meta-SAE needs at least k={settings.k} live decoder rows, got {n}", field="sae.W_dec")
    key = cache_key(rows, settings, meta_seeds, data_seed)
    stored = cache.load_tensors("meta_saes", key) if cache is not None else None
    width = settings.width(n)
    if stored is not None and tuple(stored["W_dec"].shape) == (len(meta_seeds), width, d):
        out = {}
        for i, seed in enumerate(meta_seeds):
            config = SAEConfig("batchtopk", d, width, k=settings.k, training_architecture="batchtopk",
                               metadata={"seed": seed, "cached": True})
            out[seed] = SAE(config, W_enc=stored["W_enc"][i], W_dec=stored["W_dec"][i], b_enc=stored["b_enc"][i],
                            b_dec=stored["b_dec"][i], threshold=stored["threshold"][i], source=f"meta-sae:{key}")
        return out
    gen = torch.Generator().manual_seed(data_seed)
    order = torch.randint(0, n, (settings.steps, settings.batch_rows), generator=gen)
    source = rows.to(torch.float32)
    result = train_batched(meta_recipe(n, settings, meta_seeds), lambda step: source[order[step]], d_in=d,
                           device=device, quiet=quiet)
    saes = {seed: sae.cpu() for seed, sae in result.saes.items()}
    for seed, sae in saes.items():
        sae.config.metadata["training"] = {k: result.log[k] for k in ("steps", "wall_s", "path") if k in result.log}
    if cache is not None:
        stack = {name: torch.stack([getattr(saes[s], name).detach() for s in meta_seeds])
                 for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
        cache.save_tensors("meta_saes", key, stack, metadata={"key_fields": json.dumps({"settings": asdict(settings),
                                                                                         "meta_seeds": meta_seeds})})
    return saes


@torch.no_grad()
def evaluate_meta(meta: Any, rows: torch.Tensor, k: int, *, batch_rows: int = 4096) -> tuple[float, float, float, Any]:
    """``(variance explained, same with batch top-k encoding, mean L0 per row, codes CSR [n, meta_width])``
    of a trained meta-SAE on ``rows`` (module docstring)."""
    from scipy.sparse import csr_matrix, vstack

    x = rows.to(torch.float64)
    mean = x.mean(0, keepdim=True)
    total = float(((x - mean) ** 2).sum())
    resid = resid_batch = 0.0
    active = 0
    blocks = []
    W_dec = meta.W_dec.detach().to(torch.float64)
    b_dec = meta.b_dec.detach().to(torch.float64)
    for start in range(0, rows.shape[0], batch_rows):
        xb = rows[start:start + batch_rows].to(torch.float32)
        z = meta.encode(xb).to(torch.float64)
        resid += float(((x[start:start + batch_rows] - (z @ W_dec + b_dec)) ** 2).sum())
        active += int((z > 0).sum())
        blocks.append(csr_matrix(z.numpy()))
        # SAEBench's evaluation: the k·B largest activations of the batch (no threshold)
        pre = torch.relu(meta.pre_activations(xb)).to(torch.float64)
        flat = pre.flatten()
        keep = min(k * xb.shape[0], flat.numel())
        values, indices = flat.topk(keep)
        zb = torch.zeros_like(flat).scatter_(0, indices, values).reshape(pre.shape)
        resid_batch += float(((x[start:start + batch_rows] - (zb @ W_dec + b_dec)) ** 2).sum())
    if total <= 0:
        raise TaskError("the decoder rows have no variance (all identical)", field="sae.W_dec")
    return 1.0 - resid / total, 1.0 - resid_batch / total, active / rows.shape[0], vstack(blocks).tocsr()


def fit_meta_saes(sae: Any, settings: MetaSAESettings, meta_seeds: list[int], *, data_seed: int, device: str = "cpu",
                  quiet: bool = True, cache: Any = None) -> tuple[list[MetaFit], np.ndarray]:
    """Train (or load) and evaluate the meta-SAEs of one SAE; returns ``(fits, alive latent indices)``."""
    rows, alive = decoder_rows(sae)
    metas = train_meta_saes(rows, settings, meta_seeds, data_seed=data_seed, device=device, quiet=quiet, cache=cache)
    fits = []
    for seed in meta_seeds:
        meta = metas[seed]
        fve, fve_batch, l0, codes = evaluate_meta(meta, rows, settings.k)
        fits.append(MetaFit(seed, fve, fve_batch, l0, codes, meta.decoder_directions(),
                            dict(meta.config.metadata.get("training", {}))))
    return fits, alive


def code_similarity(codes_a: Any, codes_b: Any, meta_partner_b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Cosine between the meta-codes of SAE latent ``rows_a[t]`` (seed A) and ``rows_b[t]`` (seed B),
    after re-indexing B's meta-latents into A's (``meta_partner_b[i]``: B's meta-latent matched to A's
    meta-latent ``i``). NaN where either code is empty. ``codes_*``: CSR ``[n_rows, meta_width]``."""
    if len(rows_a) == 0:
        return np.zeros(0)
    b_in_a = codes_b[:, meta_partner_b]  # column i of the result is B's meta-latent matched to A's i
    a = codes_a[rows_a]
    b = b_in_a[rows_b]
    dots = np.asarray(a.multiply(b).sum(axis=1)).ravel()
    norms = np.sqrt(np.asarray(a.multiply(a).sum(axis=1)).ravel() * np.asarray(b.multiply(b).sum(axis=1)).ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.nan)


def parent_recovery(meta_decoder: torch.Tensor, truth: torch.Tensor, features: np.ndarray) -> np.ndarray:
    """Best cosine of each true feature in ``features`` with any meta-latent decoder row."""
    from benchmark.metrics.matching import row_max_cosines

    if len(features) == 0:
        return np.zeros(0)
    return row_max_cosines(truth[torch.as_tensor(features)], meta_decoder)


__all__ = ["MetaFit", "MetaSAESettings", "cache_key", "code_similarity", "decoder_rows", "derived_seed", "evaluate_meta",
           "fit_meta_saes", "meta_recipe", "parent_recovery", "train_meta_saes"]
