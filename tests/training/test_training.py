"""Batched multi-seed trainer: equals per-seed training, stated initialisations, recovers a toy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from benchmark.errors import CanonBenchError
from benchmark.submission.manifest import Hyperparameters, RecipeSpec
from benchmark.data.organisms import Organism
from benchmark.training import BatchedSAE, train_batched


def recipe(architecture: str, *, width: int = 24, seeds=(3, 4, 5), **hp) -> RecipeSpec:
    defaults = dict(lr=3e-3, steps=40, batch_size=64, init="unit")
    defaults.update(hp)
    return RecipeSpec(architecture=architecture, width=width, seeds=list(seeds), trains_on="synthetic",
                      presets=["song2025-toy"], hyperparameters=Hyperparameters(**defaults))


def scipy_mcc(a: np.ndarray, b: np.ndarray) -> float:
    """Independent MCC: dense signed cosines, scipy assignment, mean over matched rows."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = a @ b.T
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


@pytest.fixture(scope="module")
def toy_batches():
    organism = Organism("song2025-toy")
    return [organism.samples(i * 64, (i + 1) * 64) for i in range(40)]


CASES = {
    "standard": dict(l1_coefficient=1e-2, init="tied", init_decoder_norm=0.1, normalise_decoder=False),
    "topk": dict(k=3, l1_coefficient=1e-2),
    "batchtopk": dict(k=3),
    "jumprelu": dict(l0_coefficient=1e-3, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.05),
    "gated": dict(l1_coefficient=1e-2),
    "matryoshka": dict(k=3, matryoshka_widths=[8, 16]),
}


@pytest.mark.parametrize("architecture", sorted(CASES))
def test_batched_equals_per_seed(architecture, toy_batches):
    spec = recipe(architecture, **CASES[architecture])
    together = train_batched(spec, toy_batches, d_in=16, quiet=True)
    alone = train_batched(spec, toy_batches, d_in=16, quiet=True, seeds=[4])
    a, b = together.saes[4], alone.saes[4]
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=2e-5, rtol=1e-4), name
    if a.threshold is not None:
        assert torch.allclose(a.threshold, b.threshold, atol=2e-5)
    # and the seeds really differ from each other
    assert not torch.allclose(together.saes[3].W_dec, together.saes[4].W_dec)
    assert together.log["steps"] == 40 and len(together.log["final"]["mse"]) == 3


def test_initialisations_follow_their_stated_form():
    tied = BatchedSAE(recipe("standard", init="tied", init_decoder_norm=0.1, seeds=[42, 43]), 16, [42, 43])
    assert torch.allclose(tied.W_enc, tied.W_dec.transpose(1, 2))
    assert torch.allclose(tied.W_dec.norm(dim=-1), torch.full((2, 24), 0.1))
    gen = torch.Generator().manual_seed(42)  # "tied" is a Gaussian [d_in, d_sae] draw from the seed
    w = torch.randn(16, 24, generator=gen)
    assert torch.allclose(tied.W_enc[0], w / w.norm(dim=0, keepdim=True) * 0.1)
    unit = BatchedSAE(recipe("topk", k=3, init="unit"), 16, [3, 4, 5])
    assert torch.allclose(unit.W_dec.norm(dim=-1), torch.ones(3, 24), atol=1e-6)
    assert torch.allclose(unit.W_enc, unit.W_dec.transpose(1, 2))
    kaiming = BatchedSAE(recipe("topk", k=3, init="kaiming"), 16, [3])
    assert not torch.allclose(kaiming.W_enc, kaiming.W_dec.transpose(1, 2))
    assert float(unit.b_enc.detach().abs().sum() + unit.b_dec.detach().abs().sum()) == 0.0


def test_callable_and_short_iterables(toy_batches):
    spec = recipe("topk", k=3)
    by_step = train_batched(spec, lambda step: toy_batches[step], d_in=16, quiet=True, seeds=[3])
    by_list = train_batched(spec, toy_batches, d_in=16, quiet=True, seeds=[3])
    assert torch.equal(by_step.saes[3].W_dec, by_list.saes[3].W_dec)
    short = train_batched(spec, toy_batches[:10], d_in=16, quiet=True, seeds=[3])
    assert short.log["steps"] == 10
    with pytest.raises(CanonBenchError, match="shape"):
        train_batched(spec, [torch.zeros(8, 5)], d_in=16, quiet=True)


def _steps(spec: RecipeSpec, steps: int) -> RecipeSpec:
    return spec.model_copy(update={"hyperparameters": spec.hyperparameters.model_copy(update={"steps": steps})})


def _preset_values(saes, organism) -> dict[str, float]:
    from tasks.synthetic import evaluate_preset

    rows, _ = evaluate_preset(saes, organism, eval_samples=2048)
    return {(row.metric, row.subset): row.value for row in rows}


@pytest.mark.parametrize("architecture", sorted(CASES))
def test_checkpoints_equal_plain_runs_of_that_length(architecture, toy_batches):
    """The SAEs the checkpoint hook hands over at step N are those of a plain N-step run (weights and the
    synthetic task's metrics), although training goes on after it; the final SAEs are unchanged by it."""
    organism = Organism("song2025-toy")
    spec = recipe(architecture, **CASES[architecture])  # 40 steps, constant learning rate
    seen: dict[int, dict] = {}
    full = train_batched(spec, toy_batches, d_in=16, quiet=True, kernel="torch", checkpoints=[25, 10, 40],
                         on_checkpoint=lambda step, saes: seen.setdefault(step, saes))
    assert sorted(seen) == [10, 25, 40] and full.log["steps"] == 40 and full.log["checkpoint_s"] >= 0
    for steps in (10, 25, 40):
        plain = train_batched(_steps(spec, steps), toy_batches, d_in=16, quiet=True, kernel="torch")
        for seed in spec.seeds:
            for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "b_mag", "r_mag"):
                a, b = getattr(seen[steps][seed], name), getattr(plain.saes[seed], name)
                assert (a is None) == (b is None), name
                if a is not None:
                    assert torch.equal(a, b), (steps, seed, name)
                    if steps == 40:
                        assert torch.equal(getattr(full.saes[seed], name), b), ("final", seed, name)
        if steps == 10:
            assert not torch.equal(seen[10][spec.seeds[0]].W_dec, full.saes[spec.seeds[0]].W_dec)  # it trained on
            values = _preset_values(seen[10], organism)
            assert values == _preset_values(plain.saes, organism)
            assert values[("gt_mcc", "preset=song2025-toy")] != _preset_values(full.saes, organism)[("gt_mcc", "preset=song2025-toy")]


def test_checkpoints_are_checked(toy_batches):
    spec = recipe("topk", k=3)
    with pytest.raises(CanonBenchError, match="on_checkpoint"):
        train_batched(spec, toy_batches, d_in=16, quiet=True, checkpoints=[10])
    with pytest.raises(CanonBenchError, match="1..40"):
        train_batched(spec, toy_batches, d_in=16, quiet=True, checkpoints=[41], on_checkpoint=lambda *a: None)


def test_panel_training_curve_rows_equal_plain_runs():
    """perf/panel_training_curve.py's rows at step N are the synthetic task's values of a plain N-step run."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "perf" / "panel_training_curve.py"
    module_spec = importlib.util.spec_from_file_location("panel_training_curve", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    organism = Organism("song2025-toy")
    spec = recipe("batchtopk", **CASES["batchtopk"])
    rows, log = module.curve(spec, organism, [10, 40], kernel="torch", eval_samples=2048)
    assert [row["steps"] for row in rows] == [10, 40] and log["steps"] == 40
    for row in rows:
        plain = train_batched(_steps(spec, row["steps"]), organism.batches(64, row["steps"]), d_in=16, quiet=True,
                              kernel="torch")
        expected = _preset_values(plain.saes, organism)
        for metric in module.METRICS:
            assert row[metric] == expected[(metric, "preset=song2025-toy")], (row["steps"], metric)
    assert rows[0]["gt_mcc"] != rows[1]["gt_mcc"]


def test_bad_recipes_are_refused():
    with pytest.raises(CanonBenchError, match="needs k"):
        train_batched(recipe("topk"), [torch.zeros(4, 16)], d_in=16, quiet=True)
    with pytest.raises(CanonBenchError, match="matryoshka_widths"):
        train_batched(recipe("matryoshka", k=2), [torch.zeros(4, 16)], d_in=16, quiet=True)


def test_jumprelu_threshold_gets_the_straight_through_gradient():
    """d/dθ of θ·H(pre-θ)-style STE: -(θ/ε)·1[|pre-θ|<ε/2] per element (rectangle kernel)."""
    from benchmark.training.batched import _JumpReLU, _Step

    pre = torch.tensor([[0.095, 0.2, 0.0, 0.11]])
    theta = torch.full((1, 4), 0.1, requires_grad=True)
    eps = 0.05
    _JumpReLU.apply(pre, theta, eps).sum().backward()
    window = ((pre - 0.1).abs() < eps / 2).float()
    assert torch.allclose(theta.grad, -(0.1 / eps) * window)
    theta.grad = None
    _Step.apply(pre, theta, eps).sum().backward()
    assert torch.allclose(theta.grad, -(1 / eps) * window)


def test_topk_recovers_the_song_toy():
    organism = Organism("song2025-toy")
    spec = recipe("topk", width=32, seeds=[0, 1], k=3, lr=2e-2, steps=400, batch_size=256)
    result = train_batched(spec, organism.batches(256, 400), d_in=16, quiet=True)
    truth = organism.true_dictionary().numpy()
    scores = [scipy_mcc(truth, sae.W_dec.numpy()) for sae in result.saes.values()]
    rng = np.random.default_rng(0)
    chance = np.mean([scipy_mcc(rng.standard_normal((32, 16)), rng.standard_normal((32, 16))) for _ in range(20)])
    # a short run: most of the 32 features found (the faithful 30k-step recipe gets 0.95-0.99)
    assert min(scores) > 0.8 and min(scores) > chance + 0.3, (scores, chance)
    assert result.log["final"]["l0"] == pytest.approx([3.0, 3.0], abs=0.05)


GRADIENT_CASES = {
    "standard": dict(l1_coefficient=1e-2, init="tied", init_decoder_norm=0.1),
    "standard-centred": dict(l1_coefficient=1e-2, apply_b_dec_to_input=True),
    "topk": dict(k=3, l1_coefficient=1e-2, apply_b_dec_to_input=True),
    "topk-large-k": dict(k=10),  # torch.topk instead of the running insertion
    "topk-sparse": dict(k=4, l1_coefficient=1e-2, apply_b_dec_to_input=True, width=256),
    "batchtopk": dict(k=3, apply_b_dec_to_input=True),
    "jumprelu": dict(l0_coefficient=1e-2, jumprelu_init_threshold=0.3, jumprelu_bandwidth=0.5),
}


@pytest.mark.parametrize("chunk", [4096, 40])  # 40: the batch of 96 in uneven column chunks
@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_hand_written_gradients_equal_autograd(case, chunk, monkeypatch):
    """The analytic path's loss terms and gradients against autograd through BatchedSAE.losses."""
    from benchmark.training import fast_path
    from benchmark.training.fast_path import _FastSAE, uses_fast_path

    monkeypatch.setattr(fast_path, "CHUNK_COLUMNS", chunk)

    hp = dict(GRADIENT_CASES[case])
    width = hp.pop("width", 24)
    spec = recipe(case.split("-")[0], width=width, **hp)
    assert uses_fast_path(spec)
    model = BatchedSAE(spec, 16, [3, 4, 5])
    with torch.no_grad():  # non-trivial biases so that every bias term is exercised
        gen = torch.Generator().manual_seed(1)
        model.b_enc.copy_(0.1 * torch.randn(model.b_enc.shape, generator=gen))
        model.b_dec.copy_(0.1 * torch.randn(model.b_dec.shape, generator=gen))
    x = Organism("song2025-toy").samples(0, 96)
    terms = model.losses(x, spec, None)
    terms["total"].sum().backward()
    fast = _FastSAE(model, spec)
    assert fast.sparse == (case == "topk-sparse")
    mine = fast.step_grads(x, stats=True)
    for name in ("mse", "l0", "total"):
        assert torch.allclose(mine[name], terms[name].detach(), atol=1e-6, rtol=1e-5), name
    pairs = [(fast.enc.grad.transpose(1, 2), model.W_enc.grad), (fast.dec.grad, model.W_dec.grad),
             (fast.b_enc.grad, model.b_enc.grad), (fast.b_dec.grad, model.b_dec.grad)]
    if case == "jumprelu":
        pairs.append((fast.log_threshold.grad, model.log_threshold.grad))
        assert model.log_threshold.grad.abs().sum() > 0  # the window caught some pre-activations
    for i, (analytic, reference) in enumerate(pairs):
        assert torch.allclose(analytic, reference, atol=1e-6, rtol=1e-4), (i, (analytic - reference).abs().max())
    if "_batch_min" in terms:
        assert torch.allclose(mine["_batch_min"], terms["_batch_min"])


FUSED_CASES = {  # the fused C++ kernel covers standard and topk with d_in a multiple of 16, dense or sparse
    "standard": dict(l1_coefficient=1e-2, init="tied", init_decoder_norm=0.1),
    "standard-centred": dict(l1_coefficient=1e-2, apply_b_dec_to_input=True),
    "topk": dict(k=3, l1_coefficient=1e-2, apply_b_dec_to_input=True),
    "topk-no-l1": dict(k=5),
    "topk-wide": dict(k=2, l1_coefficient=1e-2, width=70),  # width not a multiple of 16 or 32
}


def _fused_kernel(spec, sparse: bool):
    from benchmark.training.fused_kernel import KernelShape, load_kernel

    kernel = load_kernel(KernelShape(16, spec.width, spec.hyperparameters.k or 0, sparse))
    if kernel is None:
        pytest.skip("the fused kernel needs a C++ compiler")
    return kernel


@pytest.mark.parametrize("threads", [1, 3])
# 101: the last vector of samples is partial (8 or 16 lanes) and so is the last block; 4,201: more than one
# chunk (4,096 samples) between flushes of the accumulators
@pytest.mark.parametrize("batch", [96, 101, 4201])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("case", sorted(FUSED_CASES))
def test_fused_kernel_gradients_equal_autograd(case, sparse, batch, threads):
    """The fused C++ kernel's loss terms and gradients against autograd through BatchedSAE.losses."""
    from benchmark.training.fast_path import _FastSAE

    hp = dict(FUSED_CASES[case])
    width = hp.pop("width", 24)
    spec = recipe(case.split("-")[0], width=width, **hp)
    model = BatchedSAE(spec, 16, [3, 4, 5])
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        model.b_enc.copy_(0.1 * torch.randn(model.b_enc.shape, generator=gen))
        model.b_dec.copy_(0.1 * torch.randn(model.b_dec.shape, generator=gen))
    x = Organism("song2025-toy").samples(0, batch)
    terms = model.losses(x, spec, None)
    terms["total"].sum().backward()
    fast = _FastSAE(model, spec)
    fast.use_kernel(_fused_kernel(spec, sparse), threads)
    mine = fast.step_grads(x, stats=True)
    for name in ("mse", "l0", "total") + (("l1",) if "l1" in terms else ()):
        assert torch.allclose(mine[name], terms[name].detach(), atol=1e-6, rtol=1e-5), name
    pairs = [(fast.enc.grad.transpose(1, 2), model.W_enc.grad), (fast.dec.grad, model.W_dec.grad),
             (fast.b_enc.grad, model.b_enc.grad), (fast.b_dec.grad, model.b_dec.grad)]
    for i, (analytic, reference) in enumerate(pairs):
        assert reference.abs().sum() > 0
        assert torch.allclose(analytic, reference, atol=1e-6, rtol=1e-4), (i, (analytic - reference).abs().max())


def test_fused_kernel_trains_to_the_torch_paths_saes():
    """200 Adam steps on either path end at the same SAEs (float rounding apart)."""
    organism = Organism("song2025-toy")
    for architecture, hp in (("topk", dict(k=3, l1_coefficient=1e-2)), ("standard", dict(l1_coefficient=1e-2))):
        spec = recipe(architecture, width=32, seeds=[0, 1], lr=1e-3, steps=200, batch_size=512,
                      apply_b_dec_to_input=True, **hp)
        batches = organism.batches(512, 200)
        runs = {kernel: train_batched(spec, batches, d_in=16, quiet=True, kernel=kernel) for kernel in ("torch", "fused")}
        if not runs["fused"].log["kernel"]["name"].startswith("fused"):
            pytest.skip("the fused kernel is unavailable here")
        assert runs["torch"].log["kernel"]["name"] == "torch"
        for seed in (0, 1):
            a, b = runs["torch"].saes[seed], runs["fused"].saes[seed]
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-4, rtol=1e-3), (architecture, name)


def test_kth_largest_matches_topk():
    from benchmark.training.fast_path import kth_largest

    gen = torch.Generator().manual_seed(0)
    for shape, k in [((2, 32, 50), 3), ((3, 7, 5), 7), ((1, 40, 9), 8)]:
        pre = torch.randn(shape, generator=gen)
        pre[0, 1] = pre[0, 2]  # ties count once each, as in topk
        assert torch.equal(kth_largest(pre, k), pre.topk(k, dim=1).values[:, -1:])


def test_batch_threshold_search_is_exact_with_and_without_its_guess():
    from benchmark.training.fast_path import _FastSAE

    spec = recipe("batchtopk", k=3)
    fast = _FastSAE(BatchedSAE(spec, 16, [3, 4]), spec)
    rows = torch.rand(2, 1000, generator=torch.Generator().manual_seed(0))
    expected = rows.topk(50, dim=-1).values[:, -1]
    assert torch.equal(fast._batch_kth(rows, 50), expected)  # no guess yet: full search
    assert fast._kth_guess[0] == pytest.approx(0.9 * float(expected[0]))
    assert torch.equal(fast._batch_kth(rows, 50), expected)  # filtered by the guess
    halved = rows * 0.5  # the guess is now above the threshold: too few survive, full search again
    assert torch.equal(fast._batch_kth(halved, 50), halved.topk(50, dim=-1).values[:, -1])


def test_model_training_curve_rows_equal_plain_runs_and_never_train_on_heldout_rows():
    """perf/model_training_curve.py: the row at step N holds a plain N-step run's held-out EV / L0 (an
    independent numpy computation) and its decoder PW-MCC (scipy's assignment); the held-out rows never
    reach training (changing them changes no decoder)."""
    import importlib.util
    from itertools import combinations
    from pathlib import Path

    from benchmark.training.cache import epoch_batches

    path = Path(__file__).resolve().parents[2] / "perf" / "model_training_curve.py"
    module_spec = importlib.util.spec_from_file_location("model_training_curve", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    organism = Organism("song2025-toy")
    acts = organism.samples(0, 1280)
    spec = recipe("topk", k=3, seeds=(0, 1, 2), steps=30)
    rows, log = module.curve(spec, acts, [12, 30], heldout=256)
    assert [row["steps"] for row in rows] == [12, 30] and log["steps"] == 30
    train, heldout = acts[:1024], acts[1024:].double().numpy()
    for row in rows:
        plain = train_batched(_steps(spec, row["steps"]), epoch_batches(train, 64, seed=0), d_in=16, quiet=True)
        evs, l0s = [], []
        for sae in plain.saes.values():
            W_enc, b_enc, W_dec, b_dec = (getattr(sae, n).double().numpy() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
            pre = (heldout - b_dec) @ W_enc + b_enc
            kth = np.sort(pre, axis=1)[:, -3][:, None]
            z = np.where((pre >= kth) & (pre > 0), pre, 0.0)
            resid = ((z @ W_dec + b_dec - heldout) ** 2).sum()
            evs.append(1 - resid / ((heldout - heldout.mean(0)) ** 2).sum())
            l0s.append((z > 0).sum(1).mean())
        assert row["explained_variance"] == pytest.approx(np.mean(evs), abs=1e-5)
        assert row["l0"] == pytest.approx(np.mean(l0s), abs=1e-9)
        mccs = [scipy_mcc(plain.saes[a].W_dec.numpy(), plain.saes[b].W_dec.numpy()) for a, b in combinations((0, 1, 2), 2)]
        assert row["decoder_pw_mcc"] == pytest.approx(np.mean(mccs), abs=1e-6)
    changed = acts.clone()
    changed[1024:] = torch.randn(256, 16)
    rows_changed, _ = module.curve(spec, changed, [30], heldout=256)
    assert rows_changed[0]["decoder_pw_mcc"] == rows[-1]["decoder_pw_mcc"]
    assert rows_changed[0]["explained_variance"] != rows[-1]["explained_variance"]
