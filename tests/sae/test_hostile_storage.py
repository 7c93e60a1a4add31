"""Issue #14, classes 1 and 9: tensor storage that is not what its shape says, and refused pickles.

A 2 KB dictionary_learning ``ae.pt`` whose tensors are stride-0 views declared 30000 x 20000 matrices;
``validate --check-files`` took 6.5 GB and ``run`` over 9 GB to accept it. ``ae.pt`` is now read
without unpickling (``torch_archive``): every tensor must be a dense block inside a storage member
holding exactly the bytes it declares, checked before any weight is read, and a manifest's sizes
(``ExpectedSize``) bound what may be declared at all.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint_fixtures as fx
import hostile_checkpoints as hc
from refusals import checkpoint_refusal as refusal
import memory_probe
from benchmark.sae.checkpoints import inspect_checkpoint, load_sae


def autoencoder_archive(path: Path, *, encoder: dict | None = None, storages: dict | None = None) -> Path:
    """A hand-written dictionary_learning AutoEncoder ae.pt (d_in 4, d_sae 6); ``encoder`` replaces the
    ``encoder.weight`` entry, ``storages`` adds or replaces storage members."""
    entries = [encoder or hc.dense_entry("encoder.weight", "0", (6, 4)), hc.dense_entry("bias", "1", (4,)),
               hc.dense_entry("encoder.bias", "2", (6,)), hc.dense_entry("decoder.weight", "3", (4, 6))]
    rng = np.random.default_rng(0)
    data = {"0": rng.normal(size=24).astype("<f4").tobytes(), "1": bytes(16), "2": bytes(24),
            "3": rng.normal(size=24).astype("<f4").tobytes()}
    data.update(storages or {})
    return hc.write_torch_archive(path, entries, data)


# ------------------------------------------------------------------------------ class 1: storage
def test_stride0_views_are_refused_before_any_weight_is_read(tmp_path):
    folder = hc.write_stride0_dictionary_learning(tmp_path / "run", d_in=2000, d_sae=3000)
    for action in (lambda: inspect_checkpoint(folder), lambda: load_sae(folder)):
        message = refusal(action, "ae.pt", ("bias", "encoder.weight", "encoder.bias", "decoder.weight"))
        assert "storage" in message and "elements" in message


def test_full_size_stride0_attack_costs_no_memory(tmp_path):
    """The attack as reported (30000 x 20000 from a 2 KB file): refused by inspect and load with no
    measurable growth of the process (it used 6.5 GB and 9.4 GB); the child may not map more than
    6 GB, so a regression fails fast instead of exhausting the machine."""
    result = memory_probe.measure("""
        folder = hc.write_stride0_dictionary_learning(WORK / "run", d_in=20000, d_sae=30000)
        for action in (inspect_checkpoint, load_sae):
            try:
                action(folder)
            except CanonBenchError as exc:
                assert "storage" in str(exc), str(exc)
            else:
                raise AssertionError("accepted")
        """, tmp_path, address_space_gb=6)
    assert result["outcome"] == "ok", result
    assert result["growth_mb"] < 32, result
    assert result["seconds"] < 10, result  # ~0.1 s here; the old reader took 19 s and 6.5 GB


def test_overlapping_strides_are_refused(tmp_path):
    folder = hc.write_overlapping_view_dictionary_learning(tmp_path / "run")
    message = refusal(lambda: inspect_checkpoint(folder), "ae.pt", "encoder.weight")
    assert "overlap" in message
    refusal(lambda: load_sae(folder), "ae.pt", "encoder.weight")


@pytest.mark.parametrize("change,fragment", [
    ({"offset": 20}, "after offset 20"),                          # a view running past its storage
    ({"numel": 10}, "storage holds 10"),                          # a storage declaring fewer elements
    ({"stride": [4, 0]}, "overlap"),                              # a stride-0 axis inside a real storage
    ({"stride": [8, 1]}, "gaps"),                                 # rows with holes between them
    ({"shape": [2**41, 2**41], "stride": [2**41, 1]}, "bounded"),  # enormous sizes
    ({"shape": [6, -4]}, "non-negative"),
    ({"storage": "PyObjectStorage"}, "pickle"),
])
def test_every_storage_lie_is_refused_by_header(tmp_path, change, fragment):
    entry = dict(hc.dense_entry("encoder.weight", "0", (6, 4)), **change)
    if "numel" in change:
        autoencoder_archive(tmp_path / "t" / "ae.pt", encoder=entry,
                            storages={"0": bytes(4 * change["numel"])})
    else:
        autoencoder_archive(tmp_path / "t" / "ae.pt", encoder=entry)
    fields = ("encoder.weight", "pickle")
    message = refusal(lambda: inspect_checkpoint(tmp_path / "t"), "ae.pt", fields)
    if fragment == "bounded":
        assert "at most" in message, message
    elif fragment == "non-negative":
        assert "non-negative" in message, message
    else:
        assert fragment in message, message


def test_storage_member_must_hold_exactly_its_declared_bytes(tmp_path):
    autoencoder_archive(tmp_path / "t" / "ae.pt", storages={"0": bytes(24 * 4 + 64)})
    message = refusal(lambda: inspect_checkpoint(tmp_path / "t"), "ae.pt", "encoder.weight")
    assert "member holds 160" in message
    entries = [hc.dense_entry("encoder.weight", "9", (6, 4))]
    hc.write_torch_archive(tmp_path / "u" / "ae.pt", entries, {})
    assert "missing" in refusal(lambda: inspect_checkpoint(tmp_path / "u"), "ae.pt", "encoder.weight")


def test_manifest_sizes_bound_what_may_be_loaded(tmp_path):
    """With the manifest's sizes, a checkpoint declaring more is refused on its header: before any
    weight is read, in inspect (validate) and load (run) alike."""
    from benchmark.sae.checkpoints import ExpectedSize

    folder, _, _ = fx.write_dictionary_learning(tmp_path / "run", "AutoEncoder", d_in=8, d_sae=32)
    expect = ExpectedSize(d_sae=16, d_in=8)
    message = refusal(lambda: load_sae(folder, expect=expect), "ae.pt", "d_sae")
    assert "d_sae=32" in message and "sae.width=16" in message
    refusal(lambda: inspect_checkpoint(folder, expect=expect), "ae.pt", "d_sae")
    fx.write_saelens(tmp_path / "s", "standard", d_in=8, d_sae=32)
    refusal(lambda: load_sae(tmp_path / "s", expect=ExpectedSize(d_sae=32, d_in=4)), "cfg.json", "d_in")
    assert load_sae(tmp_path / "s", expect=ExpectedSize(d_sae=32, d_in=8)).d_sae == 32


def test_real_torch_save_layouts_still_load(tmp_path):
    """What torch.save writes for real: nn.Linear state dicts (with _metadata), nn.Parameter objects,
    a tied decoder stored as a transposed view of the encoder, bf16 and int buffers."""
    encoder = torch.nn.Linear(8, 32)
    state = {"bias": torch.zeros(8), "encoder.weight": encoder.weight, "encoder.bias": encoder.bias.data,
             "decoder.weight": encoder.weight.data.T}  # shares the encoder's storage, transposed strides
    folder = tmp_path / "tied" / "trainer_0"
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    sae = load_sae(folder)
    torch.testing.assert_close(sae.W_dec, encoder.weight.data)
    torch.testing.assert_close(sae.W_enc, encoder.weight.data.T)
    torch.save(state, folder / "ae.pt", pickle_protocol=4)  # FRAME/MEMOIZE/STACK_GLOBAL opcodes
    torch.testing.assert_close(load_sae(folder).W_dec, encoder.weight.data)

    folder2 = tmp_path / "module" / "trainer_0"
    folder2.mkdir(parents=True)
    module = torch.nn.Module()
    module.encoder = torch.nn.Linear(8, 32).to(torch.bfloat16)
    module.decoder = torch.nn.Linear(32, 8, bias=False).to(torch.bfloat16)
    module.register_buffer("b_dec", torch.zeros(8, dtype=torch.bfloat16))
    module.register_buffer("k", torch.tensor(4, dtype=torch.int64))
    module.register_buffer("threshold", torch.tensor(0.5))
    torch.save(module.state_dict(), folder2 / "ae.pt")
    (folder2 / "config.json").write_text('{"trainer": {"dict_class": "AutoEncoderTopK"}}')
    info = inspect_checkpoint(folder2)
    assert (info.d_in, info.d_sae, info.k, info.dtype) == (8, 32, 4, "bfloat16")


# ------------------------------------------------------------------------------ class 9: pickles
def test_refused_pickle_says_what_and_never_suggests_weights_only_false(tmp_path):
    marker = tmp_path / "pwned"
    fx.write_malicious_pickle(tmp_path / "t" / "ae.pt", marker)
    message = refusal(lambda: load_sae(tmp_path / "t"), "ae.pt", "pickle")
    assert "weights_only" not in message and "False" not in message
    assert "system" in message  # what was refused
    assert "safetensors" in message and "npz" in message  # which formats are accepted
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps({"w": print}, protocol=2),                      # a global that is not a tensor part
    b"\x80\x02cbuiltins\neval\n(X\x04\x00\x00\x001+1tR.",       # eval via REDUCE
    b"\x80\x02(cos\nsystem\nX\x04\x00\x00\x00truei.",            # INST opcode
    b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00N.",           # harmless, but not a state dict
])
def test_any_other_pickle_is_refused_without_running_it(tmp_path, payload):
    hc.write_torch_archive(tmp_path / "t" / "ae.pt", [], {}, pickle_bytes=payload)
    message = refusal(lambda: inspect_checkpoint(tmp_path / "t"), "ae.pt", ("pickle", "state_dict"))
    assert "weights_only" not in message
