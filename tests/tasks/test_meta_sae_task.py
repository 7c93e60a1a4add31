"""Task ``meta-sae``: the consistency and recovery metrics in closed form on hand-made meta-SAEs, the
seeds it trains, its rows and tables, and end to end through the runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix

from benchmark.data.organisms import Organism
from benchmark.metrics.meta_sae import MetaFit
from benchmark.results import ResultStore
from benchmark.runner import run_benchmark
from benchmark.sae.model import SAE, SAEConfig
from benchmark.submission.manifest import load_manifest
from task_fixtures import task_inputs
from tasks.meta_sae import (
    FIT_COLUMNS, LATENT_COLUMNS, MetaSAEConfig, MetaSAETask, _Fits, chosen_seeds, consistency_rows, hierarchy_features,
    recovery_rows,
)

D = 16


def unit(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=1)


def sae_of(rows: torch.Tensor) -> SAE:
    return SAE(SAEConfig("standard", D, rows.shape[0]), W_enc=rows.T.clone(), W_dec=rows.clone())


def fit_of(codes: np.ndarray, decoder: torch.Tensor, meta_seed: int = 1) -> MetaFit:
    return MetaFit(meta_seed, 0.5, 0.5, float((codes > 0).sum(1).mean()), csr_matrix(codes), decoder, {})


def test_consistent_decompositions_score_one_and_random_pairs_zero():
    """Seed B is seed A with its latents and its meta-latents permuted: matched latents have the same
    decomposition (similarity 1); one meta-latent per latent, so distinct latents share none (0)."""
    n, m = 12, 12
    rows_a, meta_a = unit(n, 0), unit(m, 1)
    perm, meta_perm = np.random.default_rng(0).permutation(n), np.random.default_rng(1).permutation(m)
    codes_a = np.eye(n, m)
    codes_b = np.zeros((n, m))
    codes_b[perm] = codes_a  # B's latent perm[i] is A's latent i ...
    codes_b = codes_b[:, np.argsort(meta_perm)]  # ... and B's meta-latent meta_perm[j]... is A's meta-latent j
    meta_b = meta_a[torch.as_tensor(np.argsort(meta_perm))]
    rows_b = torch.zeros_like(rows_a)
    rows_b[torch.as_tensor(perm)] = rows_a
    a = _Fits("model", n, 0, [fit_of(codes_a, meta_a)], np.arange(n), sae_of(rows_a))
    b = _Fits("model", n, 1, [fit_of(codes_b, meta_b)], np.arange(n), sae_of(rows_b))
    rows, tables = consistency_rows([a, b], subset="all", task_seed=0, threshold=0.7, device="cpu")
    got = {r.metric: r for r in rows}
    assert got["meta_code_similarity_matched"].value == pytest.approx(1.0)
    assert got["meta_code_similarity_unmatched"].value == pytest.approx(0.0)
    assert got["meta_dictionary_mcc"].value == pytest.approx(1.0, abs=1e-6)
    assert got["meta_code_similarity_matched"].extra["above_threshold"] == pytest.approx(1.0)
    table = tables[0]
    assert (table["matched_latent"].to_numpy() == perm[table["latent"].to_numpy()]).all()
    one, _ = consistency_rows([a], subset="all", task_seed=0, threshold=0.7, device="cpu")
    assert all(r.value is None and "two SAE seeds" in r.note for r in one)


class _HierarchyStub:
    """What recovery_rows reads of an organism: true features, a hierarchy and firing probabilities."""

    def __init__(self):
        self.n_features = 10
        self.dictionary = torch.eye(D)[: self.n_features]
        self.hierarchy_parents = [torch.tensor([0])]
        self.hierarchy = [torch.tensor([[1, 2]])]
        self.firing_probabilities = torch.tensor([0.5, 0.2, 0.2, 0.5, 0.5, 0.01, 0.6, 0.5, 0.4, 0.3])

    def true_dictionary(self):
        return self.dictionary.clone()


def test_parent_recovery_against_the_true_parents():
    organism = _HierarchyStub()
    parents, controls = hierarchy_features(organism)
    # controls: outside the forest {0, 1, 2}, firing within the parents' range [0.5, 0.5]
    assert list(parents) == [0] and list(controls) == [3, 4, 7]
    meta_decoder = torch.nn.functional.normalize(torch.eye(D)[[0, 3]] + 0.0, dim=1)  # feature 0 and feature 3 exactly
    fits = [_Fits("preset=stub", 10, 0, [fit_of(np.zeros((10, 2)), meta_decoder)], np.arange(10), sae_of(torch.eye(D)[:10]))]
    got = {r.metric: r for r in recovery_rows(fits, organism, subset="all", task_seed=0)}
    assert got["meta_parent_recovery"].value == pytest.approx(1.0)
    assert got["meta_control_recovery"].value == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert got["meta_parent_recovery"].extra["sae_recovery"] == pytest.approx(1.0)
    assert 0 < got["meta_parent_recovery"].extra["chance"] < 1


def test_hierarchy_features_of_the_zipf_organism():
    organism = Organism("zipf-hierarchy")
    parents, controls = hierarchy_features(organism)
    assert len(parents) == 16 + 64
    forest = set(parents) | {int(k) for level in organism.hierarchy for k in level.reshape(-1)}
    assert len(forest) == 16 + 64 + 256 and not forest & set(controls)
    probs = organism.firing_probabilities.numpy()
    assert probs[controls].min() >= probs[parents].min() and probs[controls].max() <= probs[parents].max()


def test_the_seeds_given_meta_saes():
    ladder = {8: {0: 1, 1: 1, 2: 1}, 16: {2: 1, 5: 1, 9: 1}}
    assert chosen_seeds(ladder, 16, MetaSAEConfig()) == {8: [0], 16: [2, 5]}
    assert chosen_seeds(ladder, 8, MetaSAEConfig(sae_seeds=3, ladder_seeds=2)) == {8: [0, 1, 2], 16: [2, 5]}


TINY = {"steps": "60", "batch_rows": "64", "lr": "0.01", "k": "2"}


def test_rows_and_tables_on_a_model_ladder(tmp_path):
    ladder = {8: {0: sae_of(unit(8, 0)), 1: sae_of(unit(8, 1))}, 32: {0: sae_of(unit(32, 2)), 1: sae_of(unit(32, 3))}}
    manifest = load_manifest(write_checkpoints_manifest(tmp_path, widths={32: [0, 1], 8: [0, 1]}, primary=32))
    out = MetaSAETask().run(task_inputs(MetaSAETask, manifest=manifest, ladder=ladder, options=TINY))
    rows = {(m.metric, m.subset): m for m in out.metrics}
    assert rows[("meta_variance_explained", "all")].n == 2 * 3  # two SAE seeds x three meta-seeds at the primary width
    assert rows[("meta_variance_explained", "width=8")].n == 3  # one SAE seed at the other width
    assert rows[("meta_variance_explained", "all")].value == rows[("meta_variance_explained", "width=32")].value
    assert rows[("meta_code_similarity_matched", "all")].n == 3
    assert ("meta_parent_recovery", "all") not in rows  # no organism
    fits, latents = out.artifacts["fits"], out.artifacts["latents"]
    assert tuple(fits.columns) == FIT_COLUMNS and tuple(latents.columns) == LATENT_COLUMNS
    assert len(fits) == 9 and set(fits["meta_width"]) == {2, 8}  # max(ceil(0.25 x 8), k=2), 0.25 x 32
    primary = fits[fits.width == 32]
    main = rows[("meta_variance_explained", "all")]
    assert main.value == pytest.approx(primary["variance_explained"].mean())
    pooled = np.sqrt(primary.groupby("seed")["variance_explained"].var(ddof=1).mean())  # spread over meta-seeds
    assert main.std == pytest.approx(pooled)
    assert main.extra["std_over_sae_seeds"] == pytest.approx(primary.groupby("seed")["variance_explained"].mean().std(ddof=1))
    assert rows[("meta_l0", "width=8")].value == pytest.approx(fits[fits.width == 8]["l0"].mean())
    assert fits.groupby(["width", "seed"]).size().to_dict() == {(8, 0): 3, (32, 0): 3, (32, 1): 3}
    seed0 = latents[(latents.width == 32) & (latents.seed == 0)]
    assert (seed0["matched_latent"] >= 0).all() and latents[latents.width == 8]["matched_latent"].eq(-1).all()
    # the same task seed trains the same meta-seeds; another seed others
    again = MetaSAETask().run(task_inputs(MetaSAETask, manifest=manifest, ladder=ladder, options=TINY))
    assert again.artifacts["fits"]["variance_explained"].tolist() == fits["variance_explained"].tolist()
    other = MetaSAETask().run(task_inputs(MetaSAETask, manifest=manifest, ladder=ladder, options=TINY, seed=1))
    assert other.artifacts["fits"]["meta_seed"].tolist() != fits["meta_seed"].tolist()


def write_checkpoints_manifest(root, *, widths: dict[int, list[int]], primary: int, preset: str = "song2025-toy",
                               saes: dict | None = None):
    """A local checkpoints ladder manifest of SAEs trained on an exported preset (native checkpoints
    written when ``saes`` is given)."""
    from benchmark.sae.checkpoints.native import save_native

    lines = ['kind = "checkpoints"', 'name = "t/ladder"', 'title = "t"', 'authors = ["t"]', 'license = "MIT"',
             f'tags = ["preset:{preset}"]', "[model]", 'name = "song-data"', 'hook = "x"', 'package = "canonbench"',
             "[sae]", 'architecture = "standard"', f"width = {primary}", 'format = "native"']
    for width, seeds in widths.items():
        for seed in seeds:
            folder = f"w{width}/s{seed}"
            if saes is not None:
                save_native(saes[width][seed], root / folder)
            lines += ["[[checkpoints]]", f"seed = {seed}", f'local = "{folder}"']
            if width != primary:
                lines.append(f"width = {width}")
    path = root / "ladder.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_end_to_end_checkpoints_ladder_on_an_exported_preset(tmp_path):
    """Checkpoints trained on song2025-toy (d_in 16), two widths: both tasks run through the runner and
    the site draws their plots."""
    from leaderboard.build import build_site

    saes = {8: {0: sae_of(unit(8, 0)), 1: sae_of(unit(8, 1))}, 32: {0: sae_of(unit(32, 2)), 1: sae_of(unit(32, 3))}}
    path = write_checkpoints_manifest(tmp_path, widths={32: [0, 1], 8: [0, 1]}, primary=32, saes=saes)
    options = {"meta-sae": dict(TINY), "stitching": {"n_inputs": "800"}}
    summary = run_benchmark([load_manifest(path)], ["stitching", "meta-sae", "cross-seed"], results_dir=tmp_path / "r",
                            cache_dir=tmp_path / "c", quiet=True, task_options=options)
    status = {o.task: o for o in summary.outcomes}
    assert status["stitching"].status == "done" and status["meta-sae"].status == "done", summary.render()
    frame = ResultStore(tmp_path / "r").read()
    meta = frame[(frame.task == "meta-sae") & (frame.metric == "meta_variance_explained")]
    assert set(meta.subset) == {"all", "width=8", "width=32"}
    assert frame[(frame.task == "meta-sae")]["data_hash"].notna().all()  # the organism's data identify the unit
    stitch = frame[(frame.task == "stitching") & (frame.metric == "novel_fraction") & (frame.subset == "all")]
    assert len(stitch) == 1 and stitch.iloc[0]["n"] == 2 * 32
    index = build_site(results_dir=tmp_path / "r", submissions_dir=tmp_path, out_dir=tmp_path / "site")
    pages = {name: (index.parent / "tasks" / f"{name}.html").read_text() for name in ("stitching", "meta-sae")}
    assert 'id="plot-stitched-curve"' in pages["stitching"] and 'id="plot-variance-vs-width"' in pages["meta-sae"]
    assert pages["stitching"].count("<svg") >= 1 and pages["meta-sae"].count("<polyline") >= 1



def test_applies_to_checkpoints_and_ladders_but_not_single_width_recipes(tmp_path):
    recipe = """kind = "recipe"
name = "t/r"
title = "t"
authors = ["t"]
license = "MIT"
[recipe]
architecture = "standard"
width = 16
{widths}
seeds = [0]
trains_on = "synthetic"
presets = ["song2025-toy"]
"""
    single, ladder = tmp_path / "single.toml", tmp_path / "ladder.toml"
    single.write_text(recipe.format(widths=""))
    ladder.write_text(recipe.format(widths="widths = [8, 16]"))
    assert "single-width recipe" in MetaSAETask.not_applicable(load_manifest(single))
    assert MetaSAETask.not_applicable(load_manifest(ladder)) is None
    checkpoints = load_manifest(write_checkpoints_manifest(tmp_path, widths={32: [0]}, primary=32))
    assert MetaSAETask.not_applicable(checkpoints) is None
