"""Synthetic model organisms: named, versioned data generators with a known true dictionary.

A *preset* fixes every generator setting; data are a deterministic function of (preset, data seed,
split, sample index). Samples are produced in fixed-size chunks, each from its own seeded generator,
so any window of the stream can be produced without the rest, large presets never need to fit in
memory, and the data do not depend on the batch size asked for.

Presets:

* ``song2025-toy`` (v1): the model organism of Song et al. (2025): 32 features in 16 dimensions,
  exactly 3 active per sample (uniform without replacement), magnitudes ``|N(0,1)|``, 50,000
  samples, data seed 42, no noise. Drawn with NumPy's legacy ``RandomState`` in the same order as the
  authors' data script, so it is their data set value for value.
* ``zipf-hierarchy`` (v1): a CPU-sized organism with the SynthSAEBench ingredients scaled down:
  1,024 features in 64 dimensions; Zipf firing probabilities; a feature hierarchy (children fire
  only with their parent, siblings are mutually exclusive); low-rank correlated firing through a
  Gaussian copula; per-feature folded-normal magnitudes.
* ``synthsae-16k`` (v1): the SynthSAEBench-16k configuration (16,384 features in 768 dimensions;
  Zipf exponent 0.5 between 0.4 and 5e-4; hierarchy of 128 roots, branching 4, depth 3, mutually
  exclusive children; correlation rank 25, strength 0.1; magnitude means 5 → 4). Our generator
  follows the published configuration; it is not bit-identical to SAELens's.

Shapes: ``x [n, d_in]`` samples; ``codes [n, n_features]`` true feature activations;
``dictionary [n_features, d_in]`` unit-norm true feature directions. ``x = codes @ dictionary``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from benchmark.errors import CanonBenchError

log = logging.getLogger(__name__)

#: Rows per independently seeded chunk of a streamed preset (fixed: changing it changes the data).
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class HierarchySpec:
    """A forest of features: ``roots`` trees, each node with ``branching`` children down to ``depth``
    levels below the root. A child fires only when its parent fires; children of one parent are
    mutually exclusive (at most one fires, chosen uniformly among those that would)."""

    roots: int
    branching: int
    depth: int

    @property
    def n_nodes(self) -> int:
        return self.roots * sum(self.branching**level for level in range(self.depth + 1))


@dataclass(frozen=True)
class Preset:
    """A named, versioned generator configuration. ``kind`` picks the generator."""

    name: str
    version: str
    kind: str  # "exactly_k" | "zipf_hierarchy"
    n_features: int
    d_in: int
    data_seed: int
    description: str
    n_samples: int | None  # size of the training set; None: an endless stream
    export_samples: int  # rows ``export`` writes by default
    eval_samples: int  # held-out rows the task evaluates on
    params: dict[str, Any] = field(default_factory=dict)

    def card(self) -> dict[str, Any]:
        """JSON-ready description (what the data hash covers)."""
        out = asdict(self)
        out["chunk_rows"] = CHUNK_ROWS
        return out

    @property
    def key(self) -> str:
        """Short hash of the full configuration."""
        return hashlib.sha256(json.dumps(self.card(), sort_keys=True).encode()).hexdigest()[:16]


PRESETS: dict[str, Preset] = {
    "song2025-toy": Preset(
        name="song2025-toy",
        version="1",
        kind="exactly_k",
        n_features=32,
        d_in=16,
        data_seed=42,
        description="Song et al. (2025) organism: 32 Gaussian unit features in 16 dims, exactly 3 active, |N(0,1)| magnitudes",
        n_samples=50_000,
        export_samples=50_000,
        eval_samples=10_000,
        params={"k": 3},
    ),
    "zipf-hierarchy": Preset(
        name="zipf-hierarchy",
        version="1",
        kind="zipf_hierarchy",
        n_features=1024,
        d_in=64,
        data_seed=0,
        description=(
            "1,024 features in 64 dims: Zipf firing (exponent 0.6, 0.2..1e-3), hierarchy 16 roots x 4 x 2 levels "
            "with mutually exclusive, rate-compensated children, rank-8 correlated firing (strength 0.2), folded-normal magnitudes"
        ),
        n_samples=262_144,
        export_samples=262_144,
        eval_samples=16_384,
        params={
            "zipf_exponent": 0.6,
            "max_prob": 0.2,
            "min_prob": 1e-3,
            "hierarchy": {"roots": 16, "branching": 4, "depth": 2},
            "compensate": True,
            "correlation_rank": 8,
            "correlation_strength": 0.2,
            "magnitude_mean": [1.5, 1.0],  # most → least frequent feature
            "magnitude_std": 0.5,
        },
    ),
    "synthsae-16k": Preset(
        name="synthsae-16k",
        version="1",
        kind="zipf_hierarchy",
        n_features=16_384,
        d_in=768,
        data_seed=42,
        description="SynthSAEBench-16k configuration: 16,384 features in 768 dims (training expected on GPU)",
        n_samples=None,
        export_samples=262_144,
        eval_samples=16_384,
        params={
            "zipf_exponent": 0.5,
            "max_prob": 0.4,
            "min_prob": 5e-4,
            "hierarchy": {"roots": 128, "branching": 4, "depth": 3},
            "correlation_rank": 25,
            "correlation_strength": 0.1,
            "magnitude_mean": [5.0, 4.0],
            "magnitude_std": 0.5,
        },
    ),
}


#: A checkpoints submission trained on an exported preset names it as its model ``synthetic:<preset>[@version]``
#: or with a tag ``preset:<preset>``.
MODEL_PREFIX = "synthetic:"
TAG_PREFIX = "preset:"


def submission_presets(manifest) -> list[str]:
    """Preset names (with optional ``@version``) a manifest is about: a synthetic recipe's presets, or
    the preset a checkpoints submission was trained on (its model name or ``preset:`` tags)."""
    sub = manifest.submission
    if sub.kind == "recipe":
        return list(sub.recipe.presets) if sub.recipe.trains_on == "synthetic" else []
    names: list[str] = []
    if sub.model.name.startswith(MODEL_PREFIX):
        names.append(sub.model.name[len(MODEL_PREFIX):])
    names += [t[len(TAG_PREFIX):] for t in sub.tags if t.startswith(TAG_PREFIX)]
    unique = list(dict.fromkeys(n.partition("@")[0] for n in names))
    return names[:1] if len(unique) == 1 else names


def get_preset(name: str, *, file: str | Path | None = None, field: str | None = None) -> Preset:
    """The preset called ``name`` (a trailing ``@<version>`` must match the current version)."""
    base, _, version = name.partition("@")
    preset = PRESETS.get(base)
    if preset is None:
        raise CanonBenchError(f"unknown synthetic preset {base!r} (known: {', '.join(PRESETS)})", file=file, field=field)
    if version and version != preset.version:
        raise CanonBenchError(
            f"preset {base!r} is at version {preset.version}, not {version!r}", file=file, field=field
        )
    return preset


def _seed_for(*parts: Any) -> int:
    """A 63-bit seed derived from any JSON-able parts (stable across runs and platforms)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _torch_gen(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


class Organism:
    """Data of one preset with one data seed (default: the preset's).

    ``true_dictionary()`` is the generating dictionary; ``samples(start, stop, split=)`` a window of
    the ``train`` or ``eval`` stream; ``batches(batch_size, steps)`` the training order every seed of
    a recipe sees (the same order for all of them).
    """

    def __init__(self, preset: Preset | str, seed: int | None = None, *, cache_bytes: int = 256 << 20):
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        self.seed = self.preset.data_seed if seed is None else int(seed)
        self._chunk_cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._cache_bytes = cache_bytes

    # --- structure ------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.preset.n_features

    @property
    def d_in(self) -> int:
        return self.preset.d_in

    @property
    def data_hash(self) -> str:
        """Hash of the generator configuration and data seed (the data are a function of these)."""
        return hashlib.sha256(
            json.dumps({"preset": self.preset.card(), "seed": self.seed}, sort_keys=True).encode()
        ).hexdigest()[:16]

    def true_dictionary(self) -> torch.Tensor:
        """Unit-norm true feature directions ``[n_features, d_in]`` (float32)."""
        return self._dictionary.clone()

    @cached_property
    def _dictionary(self) -> torch.Tensor:
        if self.preset.kind == "exactly_k":
            return torch.from_numpy(self._song_train[0]).float()
        gen = _torch_gen(_seed_for(self.preset.name, self.preset.version, self.seed, "dictionary"))
        rows = torch.randn(self.n_features, self.d_in, generator=gen, dtype=torch.float64)
        return (rows / rows.norm(dim=1, keepdim=True)).float()

    @cached_property
    def firing_probabilities(self) -> torch.Tensor:
        """Per-feature probability of firing before hierarchy gating ``[n_features]``."""
        if self.preset.kind == "exactly_k":
            return torch.full((self.n_features,), self.preset.params["k"] / self.n_features)
        p = self.preset.params
        ranks = torch.arange(1, self.n_features + 1, dtype=torch.float64)
        weights = ranks.pow(-p["zipf_exponent"])  # SynthSAEBench's form: min + (max - min) * rank^-a
        probs = p["min_prob"] + (p["max_prob"] - p["min_prob"]) * weights / weights.max()
        # Zipf rank is shuffled over feature indices so that index carries no information.
        order = torch.randperm(self.n_features, generator=_torch_gen(_seed_for(self.preset.name, self.seed, "ranks")))
        out = torch.empty_like(probs)
        out[order] = probs
        return out

    @cached_property
    def magnitude_means(self) -> torch.Tensor:
        """Mean magnitude per feature (linear in frequency rank: most frequent gets the first value)."""
        if self.preset.kind == "exactly_k":
            return torch.full((self.n_features,), math.sqrt(2 / math.pi))
        hi, lo = self.preset.params["magnitude_mean"]
        probs = self.firing_probabilities
        rank = torch.empty(self.n_features, dtype=torch.float64)
        rank[torch.argsort(probs, descending=True)] = torch.arange(self.n_features, dtype=torch.float64)
        return hi + (lo - hi) * rank / max(self.n_features - 1, 1)

    @cached_property
    def hierarchy(self) -> list[torch.Tensor]:
        """Levels of the hierarchy: ``levels[j]`` is ``[n_parents_j, branching]`` child feature indices
        whose parents are the features ``parents[j]`` (see :attr:`hierarchy_parents`)."""
        return self._hierarchy[1]

    @cached_property
    def hierarchy_parents(self) -> list[torch.Tensor]:
        """``parents[j] [n_parents_j]``: the parent feature of each row of ``hierarchy[j]``."""
        return self._hierarchy[0]

    @cached_property
    def _hierarchy(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        spec_dict = self.preset.params.get("hierarchy")
        if not spec_dict:
            return [], []
        spec = HierarchySpec(**spec_dict)
        if spec.n_nodes > self.n_features:
            raise CanonBenchError(f"preset {self.preset.name}: hierarchy needs {spec.n_nodes} features", field="hierarchy")
        # Which features sit in the forest is random (a seeded permutation), like their Zipf ranks.
        perm = torch.randperm(self.n_features, generator=_torch_gen(_seed_for(self.preset.name, self.seed, "hierarchy")))
        nodes = perm[: spec.n_nodes]
        if self.preset.params.get("compensate"):
            # Parents must be at least as frequent as their children for the compensated conditional
            # probabilities to stay below 1: fill the forest breadth-first from the most frequent node.
            nodes = nodes[torch.argsort(self.firing_probabilities[nodes], descending=True, stable=True)]
        cursor = spec.roots
        level_nodes = nodes[: spec.roots]
        parents, children = [], []
        for _ in range(spec.depth):
            n_children = level_nodes.numel() * spec.branching
            kids = nodes[cursor : cursor + n_children].reshape(level_nodes.numel(), spec.branching)
            cursor += n_children
            parents.append(level_nodes.clone())
            children.append(kids)
            level_nodes = kids.reshape(-1)
        return parents, children

    @cached_property
    def _correlation_factors(self) -> torch.Tensor | None:
        rank = self.preset.params.get("correlation_rank", 0)
        if not rank or not self.preset.params.get("correlation_strength"):
            return None
        gen = _torch_gen(_seed_for(self.preset.name, self.seed, "correlation"))
        factors = torch.randn(self.n_features, rank, generator=gen, dtype=torch.float64)
        return (factors / factors.norm(dim=1, keepdim=True)).float()

    # --- samples --------------------------------------------------------------------------
    @cached_property
    def _song_train(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dictionary, codes, x) drawn exactly like Song et al.'s data script (legacy NumPy RNG)."""
        k, m, n, N = self.preset.params["k"], self.n_features, self.d_in, self.preset.n_samples
        rng = np.random.RandomState(self.seed)
        dictionary = rng.randn(m, n)
        dictionary = dictionary / np.linalg.norm(dictionary, axis=1, keepdims=True)
        idx, vals = self._draw_exactly_k(rng, N, m, k)
        codes = np.zeros((N, m))
        np.put_along_axis(codes, idx, vals, axis=1)
        return dictionary, codes, codes @ dictionary

    @staticmethod
    def _draw_exactly_k(rng: np.random.RandomState, n_rows: int, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        # One ``choice`` and one ``randn`` call per row, in that order: the same draws as the paper's data.
        idx = np.empty((n_rows, k), dtype=np.int64)
        vals = np.empty((n_rows, k))
        for i in range(n_rows):
            idx[i] = rng.choice(m, k, replace=False)
            vals[i] = np.abs(rng.randn(k))
        return idx, vals

    def _chunk(self, split: str, index: int, with_codes: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (split, index)
        hit = self._chunk_cache.get(key)
        if hit is not None and (hit[1] is not None or not with_codes):
            return hit
        x, codes = self._generate_chunk(split, index)
        size = x.numel() * 4
        budget = self._cache_bytes // max(size, 1)
        if len(self._chunk_cache) < budget:
            self._chunk_cache[key] = (x, codes if with_codes else None)
        return x, codes

    def _generate_chunk(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[index*CHUNK_ROWS, (index+1)*CHUNK_ROWS)`` of a split: ``(x, codes)``."""
        if self.preset.kind == "exactly_k":
            return self._exactly_k_chunk(split, index)
        return self._zipf_chunk(split, index)

    def _exactly_k_chunk(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            _, codes, x = self._song_train
            lo, hi = index * CHUNK_ROWS, min((index + 1) * CHUNK_ROWS, codes.shape[0])
            return torch.from_numpy(x[lo:hi]).float(), torch.from_numpy(codes[lo:hi]).float()
        rng = np.random.RandomState(_seed_for(self.preset.name, self.seed, split, index) % (2**32))
        m, k = self.n_features, self.preset.params["k"]
        idx, vals = self._draw_exactly_k(rng, CHUNK_ROWS, m, k)
        codes = np.zeros((CHUNK_ROWS, m))
        np.put_along_axis(codes, idx, vals, axis=1)
        x = codes @ self._song_train[0]
        return torch.from_numpy(x).float(), torch.from_numpy(codes).float()

    def _zipf_chunk(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.preset.params
        gen = _torch_gen(_seed_for(self.preset.name, self.preset.version, self.seed, split, index))
        rows, n = CHUNK_ROWS, self.n_features
        # Gaussian copula: latent g has unit variance and correlation strength·<f_i, f_j>, so each
        # feature still fires with exactly its marginal probability.
        g = torch.randn(rows, n, generator=gen)
        factors = self._correlation_factors
        if factors is not None:
            s = float(p["correlation_strength"])
            shared = torch.randn(rows, factors.shape[1], generator=gen)
            g.mul_(math.sqrt(1 - s)).addmm_(shared, factors.T, alpha=math.sqrt(s))
        active = g < self._thresholds
        del g
        for parents, kids in zip(self.hierarchy_parents, self.hierarchy):
            kid_active = active[:, kids] & active[:, parents].unsqueeze(-1)  # [rows, n_parents, branching]
            # Mutually exclusive siblings: where several would fire, one uniformly at random survives.
            crowded = kid_active.sum(-1) > 1
            if bool(crowded.any()):
                contested = kid_active[crowded]
                priority = torch.rand(contested.shape, generator=gen).masked_fill_(~contested, -1.0)
                winner = priority.argmax(dim=-1, keepdim=True)
                kid_active[crowded] = torch.zeros_like(contested).scatter_(-1, winner, True)
            active[:, kids.reshape(-1)] = kid_active.reshape(rows, -1)
        nz_rows, nz_cols = active.nonzero(as_tuple=True)
        values = (self.magnitude_means.float()[nz_cols] + float(p["magnitude_std"]) * torch.randn(nz_rows.numel(), generator=gen)).abs()
        crow = torch.zeros(rows + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(nz_rows, minlength=rows).cumsum(0)
        with warnings.catch_warnings():  # CSR is "beta" in torch; we only build it and multiply
            warnings.simplefilter("ignore")
            codes = torch.sparse_csr_tensor(crow, nz_cols, values, size=(rows, n), check_invariants=False)
        x = codes @ self._dictionary
        return x, codes

    @cached_property
    def gate_probabilities(self) -> torch.Tensor:
        """Probability that each feature's own draw fires ``[n_features]``. Equal to
        :attr:`firing_probabilities` except, with ``compensate``, for hierarchy children: their draw
        only counts when the parent fires, so it uses ``p_child / p_parent`` to keep the child's rate
        at its Zipf target before sibling exclusivity, which then lowers it (a lot where siblings are all frequent)."""
        gate = self.firing_probabilities.clone()
        if self.preset.params.get("compensate"):
            for parents, kids in zip(self.hierarchy_parents, self.hierarchy):
                ratio = self.firing_probabilities[kids] / self.firing_probabilities[parents].unsqueeze(-1)
                gate[kids] = ratio.clamp(max=1.0)
        return gate

    @cached_property
    def _thresholds(self) -> torch.Tensor:
        return torch.special.ndtri(self.gate_probabilities).float()

    def split_size(self, split: str) -> int | None:
        if split == "train":
            return self.preset.n_samples
        if split == "eval":
            return self.preset.eval_samples
        raise ValueError(f"unknown split {split!r}")

    def samples(self, start: int, stop: int, *, split: str = "train", with_codes: bool = False):
        """Rows ``[start, stop)`` of a split: ``x [stop-start, d_in]`` (and ``codes`` when asked)."""
        size = self.split_size(split)
        if start < 0 or stop < start or (size is not None and stop > size):
            raise IndexError(f"rows [{start}, {stop}) outside the {split} split of {self.preset.name} (size {size})")
        xs, cs = [], []
        for chunk in range(start // CHUNK_ROWS, (stop - 1) // CHUNK_ROWS + 1 if stop > start else start // CHUNK_ROWS):
            x, codes = self._chunk(split, chunk, with_codes)
            lo = max(start - chunk * CHUNK_ROWS, 0)
            hi = min(stop - chunk * CHUNK_ROWS, x.shape[0])
            xs.append(x[lo:hi])
            if with_codes:
                cs.append(codes.to_dense()[lo:hi] if codes.layout != torch.strided else codes[lo:hi])
        x = torch.cat(xs) if xs else torch.zeros(0, self.d_in)
        if with_codes:
            return x, (torch.cat(cs) if cs else torch.zeros(0, self.n_features))
        return x

    def eval_data(self, n: int | None = None) -> torch.Tensor:
        """Held-out samples ``[n, d_in]`` (default: the preset's ``eval_samples``)."""
        return self.samples(0, n or self.preset.eval_samples, split="eval")

    def batches(self, batch_size: int | None, steps: int) -> Callable[[int], torch.Tensor]:
        """``step -> x [batch, d_in]``: the training order (the same for every seed).

        ``batch_size=None`` is full-batch (the whole training set every step; finite presets only).
        Finite training sets are read in order and wrap around; batches never straddle the wrap
        (the tail shorter than a batch is skipped), so every batch has ``batch_size`` rows.
        """
        size = self.preset.n_samples
        if batch_size is None:
            if size is None:
                raise CanonBenchError(f"preset {self.preset.name} is an endless stream: give a batch size", field="batch_size")
            full = self.samples(0, size)
            return lambda step: full
        if size is not None and batch_size > size:
            raise CanonBenchError(f"batch size {batch_size} exceeds the {size} samples of {self.preset.name}", field="batch_size")
        per_epoch = None if size is None else size // batch_size
        if per_epoch == 1:  # the same rows every step: one tensor, so consumers may cache work keyed on it
            first = self.samples(0, batch_size)
            return lambda step: first

        def batch(step: int) -> torch.Tensor:
            slot = step if per_epoch is None else step % per_epoch
            return self.samples(slot * batch_size, (slot + 1) * batch_size)

        return batch

    def iter_batches(self, batch_size: int | None, steps: int) -> Iterator[torch.Tensor]:
        fn = self.batches(batch_size, steps)
        for step in range(steps):
            yield fn(step)


# --- export -------------------------------------------------------------------------------
SHARD_ROWS = 65_536


def export_preset(preset: str, out_dir: str | Path, quiet: bool = False, *, n_samples: int | None = None, seed: int | None = None) -> str:
    """Write a preset's training data and true dictionary to ``out_dir``; returns the card's path.

    Files: ``train-00000.safetensors`` … (tensor ``x [rows, d_in]`` float32, in training order),
    ``dictionary.safetensors`` (``dictionary [n_features, d_in]`` unit rows, ``firing_probabilities``,
    ``magnitude_means``), ``eval.safetensors`` (``x`` held-out samples the task evaluates on) and
    ``card.json`` (the full generator configuration, data hash, file sha256 sums, and how to submit
    SAEs trained on these data). ``n_samples`` defaults to the preset's ``export_samples``.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    organism = Organism(preset, seed)
    pre = organism.preset
    total = n_samples or pre.export_samples
    if pre.n_samples is not None and total > pre.n_samples:
        raise CanonBenchError(f"{pre.name} has {pre.n_samples} training samples, cannot export {total}", field="n_samples")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}

    def _write(name: str, tensors: dict[str, torch.Tensor]) -> None:
        path = out / name
        tmp = out / f".{name}.tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"preset": pre.name, "version": pre.version})
        tmp.replace(path)
        files[name] = _sha256(path)

    _write(
        "dictionary.safetensors",
        {
            "dictionary": organism.true_dictionary(),
            "firing_probabilities": organism.firing_probabilities.float(),
            "magnitude_means": organism.magnitude_means.float(),
        },
    )
    shards = range(0, total, SHARD_ROWS)
    for i, start in enumerate(tqdm(shards, desc=f"export {pre.name}", disable=quiet, unit="shard")):
        _write(f"train-{i:05d}.safetensors", {"x": organism.samples(start, min(start + SHARD_ROWS, total))})
    _write("eval.safetensors", {"x": organism.eval_data()})
    card = {
        "preset": pre.card(),
        "data_seed": organism.seed,
        "data_hash": organism.data_hash,
        "train_samples": total,
        "shard_rows": SHARD_ROWS,
        "files": files,
        "submit": (
            "Train SAEs on the train-*.safetensors rows (tensor 'x'), then submit a checkpoints manifest with "
            f"[model] name = \"synthetic:{pre.name}@{pre.version}\", hook = \"x\", package = \"canonbench\" "
            f"(or the tag \"preset:{pre.name}\") and run: canonbench run <manifest> --tasks synthetic"
        ),
    }
    card_path = out / "card.json"
    tmp = out / ".card.json.tmp"
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True))
    tmp.replace(card_path)
    log.info("exported %s (%d samples) to %s", pre.name, total, out)
    return str(card_path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
