"""The training kernel is chosen by a timed self-check, falls back safely, and is recorded in the log."""

from __future__ import annotations

import pytest
import torch

from benchmark import native
from benchmark.data.organisms import Organism
from benchmark.submission.manifest import Hyperparameters, RecipeSpec
from benchmark.training import BatchedSAE, cpu_features, fused_kernel, kernel_choice, train_batched  # noqa: F401
from benchmark.training.fast_path import _FastSAE


def recipe(architecture: str = "topk", width: int = 32, **hp) -> RecipeSpec:
    defaults = dict(lr=1e-3, steps=5, batch_size=256, init="unit", l1_coefficient=1e-2, k=3 if architecture == "topk" else None)
    defaults.update(hp)
    return RecipeSpec(architecture=architecture, width=width, seeds=[0, 1], trains_on="synthetic", presets=["song2025-toy"],
                      hyperparameters=Hyperparameters(**defaults))


@pytest.fixture
def fresh_choices(monkeypatch):
    """No choice or loaded kernel carried over from other tests."""
    monkeypatch.setattr(kernel_choice, "_cache", {})
    monkeypatch.setattr(fused_kernel, "_loaded", {})


def fused_available() -> bool:
    """Whether a fused kernel builds here (a compiler that works; CXX=false makes every build fail)."""
    return fused_kernel.load_kernel(fused_kernel.KernelShape(16, 32, 3, True)) is not None


def fast_sae(spec: RecipeSpec) -> _FastSAE:
    return _FastSAE(BatchedSAE(spec, 16, spec.seeds), spec)


def batch(n: int = 256) -> torch.Tensor:
    return Organism("song2025-toy").samples(0, n)


def test_log_records_the_choice_the_flags_and_the_probe(fresh_choices):
    result = train_batched(recipe(), Organism("song2025-toy").batches(256, 5), d_in=16, quiet=True)
    record = result.log["kernel"]
    assert record["name"] in ("torch", "fused-dense", "fused-sparse")
    machine = record["machine"]
    assert set(machine["flags"]) <= set(cpu_features.INTERESTING)
    assert machine["fp32_gflops"] > 0 and machine["bf16_gflops"] > 0
    assert machine["bf16_speedup"] == pytest.approx(machine["bf16_gflops"] / machine["fp32_gflops"], rel=0.05)
    if fused_available():
        # every candidate was timed; the winner is the fastest of them
        probe = record["probe_ms"]
        assert "torch" in probe and any(name.startswith("fused-sparse") for name in probe)
        winner = min(probe, key=probe.get)
        assert winner.split("×")[0] == record["name"]
        if record["name"] != "torch":
            assert int(winner.split("×")[1]) == record["threads"]


def test_the_choice_is_cached_per_process(fresh_choices, monkeypatch):
    fast, x = fast_sae(recipe()), batch()
    first = kernel_choice.choose_kernel(fast, x, max_threads=1)
    monkeypatch.setattr(kernel_choice, "_self_check", lambda *a, **k: pytest.fail("self-check ran twice"))
    assert kernel_choice.choose_kernel(fast, x, max_threads=1) is first


def test_without_a_compiler_training_keeps_the_torch_path(fresh_choices, monkeypatch):
    monkeypatch.setattr(native, "compiler", lambda: None)
    choice = kernel_choice.choose_kernel(fast_sae(recipe()), batch(), max_threads=1)
    assert choice.name == "torch" and choice.kernel is None
    assert "unavailable" in choice.record["reason"]


def test_a_failed_build_keeps_the_torch_path_with_one_log_line(fresh_choices, monkeypatch, tmp_path, caplog):
    broken = tmp_path / "broken-c++"
    broken.write_text("#!/bin/sh\necho 'fatal error: simulated' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    monkeypatch.setenv("CANONBENCH_KERNEL_CACHE", str(tmp_path / "kernels"))
    with caplog.at_level("INFO", logger="benchmark.training"):
        result = train_batched(recipe(), Organism("song2025-toy").batches(256, 5), d_in=16, quiet=True)
    record = result.log["kernel"]
    assert record["name"] == "torch" and "unavailable" in record["reason"]
    failures = [r for r in caplog.records if "build failed" in r.getMessage()]
    assert failures and all("torch path" in r.getMessage() for r in failures)
    assert not list((tmp_path / "kernels").rglob("*.so"))  # nothing half-built is left to be loaded later


def test_the_build_cache_is_a_user_cache_dir(monkeypatch, tmp_path):
    from pathlib import Path

    monkeypatch.delenv("CANONBENCH_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native.kernel_cache_dir() == tmp_path / "xdg" / "canonbench" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    repo = Path(native.__file__).resolve().parents[1]
    default = native.kernel_cache_dir().resolve()
    assert default.is_relative_to(Path.home().resolve()) and not default.is_relative_to(repo)


def test_a_slower_fused_kernel_loses_the_self_check(fresh_choices, monkeypatch):
    if not fused_available():
        pytest.skip("needs a C++ compiler")
    import time

    honest = fused_kernel.FusedKernel.step

    def slow(self, *args, **kwargs):
        time.sleep(0.2)  # far above a 256-sample torch step, even on a loaded machine
        return honest(self, *args, **kwargs)

    monkeypatch.setattr(fused_kernel.FusedKernel, "step", slow)
    choice = kernel_choice.choose_kernel(fast_sae(recipe()), batch(), max_threads=1)
    assert choice.name == "torch" and choice.kernel is None
    assert any(name.startswith("fused") for name in choice.record["probe_ms"])  # it was measured, and lost


def test_trained_saes_say_which_kernel_trained_them(fresh_choices, tmp_path):
    from benchmark.training.cache import organism_data, train_or_load

    spec = recipe()
    data = organism_data(Organism("song2025-toy"))
    _, fresh = train_or_load(spec, data, cache_dir=tmp_path, quiet=True)
    _, loaded = train_or_load(spec, data, cache_dir=tmp_path, quiet=True)
    assert [r["trained_now"] for r in fresh + loaded] == [True, True, False, False]
    for record in fresh + loaded:
        kernel = record["training"]["kernel"]
        assert kernel["name"] in ("torch", "fused-dense", "fused-sparse") and "machine" in kernel
        assert record["training"]["path"] == "analytic"
    assert [r["training"]["kernel"] for r in loaded] == [r["training"]["kernel"] for r in fresh]


def test_a_kernel_that_disagrees_with_the_torch_path_is_never_used(fresh_choices, monkeypatch):
    if not fused_available():
        pytest.skip("needs a C++ compiler")
    honest = fused_kernel.FusedKernel.step

    def off_by_a_little(self, *args, **kwargs):
        g_enc, g_bias, g_dec, g_bdec, sums = honest(self, *args, **kwargs)
        return g_enc * 1.01, g_bias, g_dec, g_bdec, sums  # a 1 % error in one gradient

    monkeypatch.setattr(fused_kernel.FusedKernel, "step", off_by_a_little)
    choice = kernel_choice.choose_kernel(fast_sae(recipe()), batch(), max_threads=1, only="fused")
    assert choice.name == "torch"
    assert set(choice.record["rejected"]) == {"fused-dense×1", "fused-sparse×1"}


@pytest.mark.parametrize("spec", [recipe("standard", k=None), recipe("topk", width=256, k=2)],
                         ids=["standard", "wide-topk"])
def test_both_ways_through_the_kernel_are_measured(fresh_choices, spec):
    """ReLU SAEs may train sparse too, and a wide TopK (whose torch path is the sparse one) may train on
    the fused kernel: the self-check times both fused ways against the torch path and rejects neither."""
    if not fused_available():
        pytest.skip("needs a C++ compiler")
    fast = fast_sae(spec)
    assert fast.sparse == (spec.width == 256)
    choice = kernel_choice.choose_kernel(fast, batch(), max_threads=1)
    assert {"torch", "fused-dense×1", "fused-sparse×1"} <= set(choice.record["probe_ms"])
    assert "rejected" not in choice.record


def test_architectures_without_a_fused_kernel_stay_on_torch(fresh_choices):
    spec = recipe("jumprelu", l0_coefficient=1e-3, k=None, l1_coefficient=None)
    choice = kernel_choice.choose_kernel(fast_sae(spec), batch(), max_threads=1)
    assert choice.name == "torch" and "jumprelu" in choice.record["reason"]
    forced = kernel_choice.choose_kernel(fast_sae(recipe()), batch(), max_threads=1, only="torch")
    assert forced.name == "torch"
    with pytest.raises(ValueError, match="unknown kernel"):
        kernel_choice.choose_kernel(fast_sae(recipe()), batch(), max_threads=1, only="bf16")


def test_unsupported_shapes_are_refused_before_building():
    assert fused_kernel.KernelShape(20, 32, 3, False).supported()  # d_in not a multiple of 16
    assert fused_kernel.KernelShape(16, 5000, 3, True).supported()  # wider than MAX_WIDTH
    assert fused_kernel.KernelShape(16, 32, 0, True).supported() is None  # ReLU may train sparse
    assert fused_kernel.KernelShape(16, 32, 40, False).supported()  # k above the insertion network's size
    assert fused_kernel.KernelShape(16, 32, 3, True).supported() is None


def test_thread_ranges_cover_the_batch_on_lane_boundaries():
    assert fused_kernel._ranges(101, 3) == [(0, 32), (32, 64), (64, 101)]
    assert fused_kernel._ranges(10, 4) == [(0, 10)]  # one lane group cannot be split
    for n, parts in [(50_000, 2), (96, 3), (17, 2)]:
        ranges = fused_kernel._ranges(n, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] and a[1] % fused_kernel.LANES == 0 for a, b in zip(ranges, ranges[1:]))


def test_kernel_builds_are_cached_on_disk_by_content(tmp_path, monkeypatch, fresh_choices):
    monkeypatch.setenv("CANONBENCH_KERNEL_CACHE", str(tmp_path))
    shape = fused_kernel.KernelShape(16, 8, 2, False)
    kernel = fused_kernel.load_kernel(shape)
    if kernel is None:
        pytest.skip("needs a working C++ compiler")
    assert kernel is not None and kernel.library.parent == tmp_path
    built = list(tmp_path.glob("*.so"))
    assert len(built) == 1 and "16x8_k2" in built[0].name
    fused_kernel._loaded.clear()
    # same source, flags, compiler and CPU: the cached library is loaded without compiling again
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    again = fused_kernel.load_kernel(shape)
    assert again is not None and again.library == kernel.library


def test_the_kernel_refuses_tensors_of_another_shape(fresh_choices):
    kernel = fused_kernel.load_kernel(fused_kernel.KernelShape(16, 32, 3, False))
    if kernel is None:
        pytest.skip("needs a working C++ compiler")
    S, B = 2, 64
    x = torch.zeros(B, 16)
    args = dict(x_BD=x, x_DB=x.T.contiguous(), enc_SFD=torch.zeros(S, 32, 16), bias_SF=torch.zeros(S, 32),
                dec_SFD=torch.zeros(S, 32, 16), b_dec_SD=torch.zeros(S, 16))
    kernel.step(**args, l1_over_B=0.0, grad_scale=1.0)  # the built shape runs
    for name, wrong in (("enc_SFD", torch.zeros(S, 40, 16)), ("x_DB", torch.zeros(16, B + 16)), ("b_dec_SD", torch.zeros(S, 32))):
        with pytest.raises(ValueError, match=name):
            kernel.step(**{**args, name: wrong}, l1_over_B=0.0, grad_scale=1.0)
