"""Task ``stitching``: metrics on constructed width ladders with known answers, the inputs it reads
(organisms or a model's activations), applicability, and end to end through the runner."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from benchmark.results import ResultStore
from benchmark.runner import run_benchmark
from benchmark.sae.model import SAE, SAEConfig
from benchmark.submission.manifest import load_manifest
from task_fixtures import FixedActivations, task_inputs
from tasks.base import OrganismInputs
from tasks.stitching import LATENT_COLUMNS, STEP_COLUMNS, CURVE_COLUMNS, StitchingTask, rung_seed_pairs

D = 16


def basis(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0].T[:n].float().contiguous()


def relu_sae(rows: torch.Tensor) -> SAE:
    return SAE(SAEConfig("standard", D, rows.shape[0]), W_enc=rows.T.clone(), W_dec=rows.clone(),
               b_enc=torch.full((rows.shape[0],), -1e-3))


@dataclass
class _Preset:
    name: str = "stub"
    eval_samples: int = 4000


@dataclass
class StubOrganism:
    """Orthonormal true features; held-out samples are sparse non-negative codes on all of them."""

    n_features: int = 12
    preset: _Preset = field(default_factory=_Preset)
    data_hash: str = "stub-data"

    def true_dictionary(self) -> torch.Tensor:
        return basis(self.n_features)

    def eval_data(self, n: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        n = n or self.preset.eval_samples
        codes = (0.1 + torch.rand(n, self.n_features, generator=g)) * (torch.rand(n, self.n_features, generator=g) < 0.3)
        return codes @ self.true_dictionary()


def nested_ladder(widths=(4, 8, 12), seeds=(0, 1)) -> dict[int, dict[int, SAE]]:
    """Every width holds the first ``width`` true features exactly (each seed the same SAE)."""
    rows = basis(max(widths))
    return {w: {s: relu_sae(rows[:w]) for s in seeds} for w in widths}


def by(metrics, subset="all"):
    return {m.metric: m for m in metrics if m.subset == subset}


@pytest.fixture(scope="module")
def organism_run():
    organism = StubOrganism()
    ladder = nested_ladder()
    prepared = OrganismInputs(organism, ladder[12], ladder=ladder, ladder_records=[{"seed": 0, "width": 4}])
    return StitchingTask().run(task_inputs(StitchingTask, organisms={"stub": prepared}))


def test_nested_ladder_has_exactly_the_new_features_novel(organism_run):
    rows = by(organism_run.metrics)
    rung1, rung2 = by(organism_run.metrics, "widths=4x8"), by(organism_run.metrics, "widths=8x12")
    assert rung1["novel_fraction"].value == pytest.approx(4 / 8) and rung2["novel_fraction"].value == pytest.approx(4 / 12)
    assert rung1["novel_fraction"].n == 2 * 8  # two seed pairs, eight latents each
    assert rows["novel_fraction"].value == pytest.approx((4 / 8 + 4 / 12) / 2)  # mean over the four stitched pairs
    assert rows["novel_fraction"].std == pytest.approx(np.std([0.5, 0.5, 1 / 3, 1 / 3], ddof=1))
    # ground truth: novel latents are the features the narrower SAE missed, the others are not
    assert rows["novel_gt_missed"].value == 1.0 and rows["reconstruction_gt_missed"].value == 0.0
    # the proxy: copies at cosine 1, new orthogonal features at ~0
    assert rows["proxy_auc"].value == 1.0 and rows["proxy_agreement"].value == 1.0
    assert rows["novel_max_cosine"].value == pytest.approx(0.0, abs=1e-5)
    assert rows["reconstruction_max_cosine"].value == pytest.approx(1.0, abs=1e-5)
    assert by(organism_run.metrics, "threshold=0.9")["proxy_agreement"].value == 1.0
    # inserting the missing features explains all the variance the narrow SAE missed; swaps change nothing
    assert rows["stitched_monotone"].value == 1.0 and rows["stitched_max_increase"].value == 0.0
    assert rows["novel_share_of_gain"].value == pytest.approx(1.0, abs=1e-6)
    # the stitch_* comparisons cross-seed used to make: every narrow latent has an exact copy
    assert rung1["stitch_decoder_mcc"].value == pytest.approx(1.0, abs=1e-6)
    assert rung1["stitch_shared_fraction"].value == 1.0
    assert rung1["stitch_max_cosine_small_to_large"].value == pytest.approx(1.0, abs=1e-6)
    assert rung1["stitch_max_cosine_large_to_small"].value == pytest.approx(0.5, abs=1e-5)
    assert rung1["stitch_activation_correlation"].value == pytest.approx(1.0, abs=1e-6)
    assert 0 < rung1["stitch_chance_mcc"].value < 1


def test_artifacts_have_their_declared_columns_and_the_curve_spans_the_ladder(organism_run):
    latents, steps, curve = (organism_run.artifacts[n] for n in ("latents", "steps", "stitched_curve"))
    assert tuple(latents.columns) == LATENT_COLUMNS and tuple(steps.columns) == STEP_COLUMNS
    assert tuple(curve.columns) == CURVE_COLUMNS
    assert len(latents) == 2 * 8 + 2 * 12
    assert latents["gt_missed"].sum() == 2 * 4 + 2 * 4
    assert curve["log2_width"].min() == pytest.approx(2.0) and curve["log2_width"].max() == pytest.approx(math.log2(12))
    ends = curve[curve["progress"].isin([0.0, 1.0])]
    assert (ends["n"] == 2).all()
    # the rungs join: the end of 4→8 and the start of 8→12 are the same SAE on the same inputs
    joint = curve[np.isclose(curve["log2_width"], 3.0)]["fvu"].to_numpy()
    assert len(joint) == 2 and joint[0] == pytest.approx(joint[1], abs=1e-12)
    assert organism_run.data_hash == "stub-data"
    assert organism_run.provenance["checkpoints"] == [{"seed": 0, "width": 4}]


def test_model_activations_are_sampled_with_the_task_seed():
    ladder = nested_ladder(widths=(6, 12), seeds=(3,))
    acts = StubOrganism().eval_data(5000)
    inputs = task_inputs(StitchingTask, ladder=ladder, activations=FixedActivations(acts), options={"n_inputs": 700})
    out = StitchingTask().run(inputs)
    rows = by(out.metrics)
    assert rows["novel_fraction"].value == pytest.approx(0.5) and rows["novel_fraction"].extra["n_inputs"] == 700
    assert out.data_hash == FixedActivations.key
    capped = StitchingTask().run(task_inputs(StitchingTask, ladder=ladder, activations=FixedActivations(acts), limit=100))
    assert by(capped.metrics)["novel_fraction"].extra["n_inputs"] == 100
    with pytest.raises(Exception, match="held-out inputs"):
        StitchingTask().run(task_inputs(StitchingTask, ladder=ladder))


def test_seeds_pair_by_seed_else_every_pair():
    assert rung_seed_pairs({0: 1, 1: 1, 2: 1}, {1: 1, 2: 1}) == [(1, 1), (2, 2)]
    assert rung_seed_pairs({0: 1}, {5: 1, 6: 1}) == [(0, 5), (0, 6)]


RECIPE = """kind = "recipe"
name = "t/{name}"
title = "t"
authors = ["t"]
license = "MIT"
[recipe]
architecture = "topk"
width = {width}
{widths}
seeds = [0, 1]
trains_on = "synthetic"
presets = ["song2025-toy"]
[recipe.hyperparameters]
k = 3
lr = 1e-2
steps = 40
batch_size = 256
init = "unit"
"""


def test_applicability_needs_a_width_ladder(tmp_path):
    single = tmp_path / "single.toml"
    single.write_text(RECIPE.format(name="single", width=16, widths=""))
    assert "width ladder" in StitchingTask.not_applicable(load_manifest(single))
    ladder = tmp_path / "ladder.toml"
    ladder.write_text(RECIPE.format(name="ladder", width=16, widths="widths = [8, 16]"))
    assert StitchingTask.not_applicable(load_manifest(ladder)) is None


def test_end_to_end_recipe_ladder(tmp_path):
    path = tmp_path / "ladder.toml"
    path.write_text(RECIPE.format(name="ladder", width=16, widths="widths = [8, 16]"))
    summary = run_benchmark([load_manifest(path)], ["stitching", "synthetic"], results_dir=tmp_path / "r",
                            cache_dir=tmp_path / "c", quiet=True, task_options={"stitching": {"n_inputs": "1000"}})
    assert all(o.status == "done" for o in summary.outcomes), summary.render()
    store = ResultStore(tmp_path / "r")
    frame = store.read()
    main = frame[(frame.task == "stitching") & (frame.metric == "novel_fraction") & (frame.subset == "all")]
    assert len(main) == 1 and 0 <= main.iloc[0]["value"] <= 1 and main.iloc[0]["n"] == 2 * 16
    checkpoints = frame[frame.task == "stitching"].iloc[0]["checkpoints"]
    assert '"width": 8' in checkpoints and '"width": 16' in checkpoints
    # the synthetic task evaluated the primary width only, trained once (the 16-wide rung is its SAE)
    synth = frame[(frame.task == "synthetic") & (frame.metric == "gt_mcc") & (frame.subset == "preset=song2025-toy")]
    assert len(synth) == 1 and synth.iloc[0]["width"] == 16
    trained = sorted(p.parent.name for p in (tmp_path / "c" / "trained").glob("*/seed-*/cfg.json"))
    assert len(trained) == 4  # 2 widths x 2 seeds, each trained once
