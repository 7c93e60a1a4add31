"""saprmarks/dictionary_learning checkpoints: ``<run>/trainer_<i>/ae.pt`` (a state dict) + ``config.json``.

``ae.pt`` is never unpickled: its ``data.pkl`` is read opcode by opcode and only the parts of a state
dict of tensors are accepted (:mod:`~benchmark.sae.checkpoints.torch_archive`); a pickle that needs
code to load is refused, never run. Semantics follow dictionary_learning/dictionary.py and trainers/{top_k,
batch_top_k,matryoshka_batch_top_k}.py (each class's default ``encode``):

* ``AutoEncoder``: ``relu(encoder(x - bias))``, decode ``decoder(z) + bias`` (nn.Linear weights:
  ``encoder.weight [d_sae, d_in]``, ``decoder.weight [d_in, d_sae]``).
* ``AutoEncoderNew``: ``relu(encoder(x))``, decode ``decoder(z)`` (decoder has a bias, no input centring).
* ``AutoEncoderTopK``: top-k of ``relu(encoder(x - b_dec))`` (its threshold buffer is unused by default).
* ``BatchTopKSAE`` / ``MatryoshkaBatchTopKSAE``: ``relu(pre) * (relu(pre) > threshold)`` with one scalar
  threshold; equal to the SAE module's ``relu(pre) * (pre > threshold)`` for every threshold value.
* ``JumpReluAutoEncoder``: ``relu(pre * (pre > threshold))`` with no b_dec subtraction (the class default).
* ``GatedAutoEncoder``: gate ``(x - decoder_bias) @ W + gate_bias > 0``, magnitude
  ``relu(exp(r_mag) * ((x - decoder_bias) @ W) + mag_bias)``.

Weights are kept as stored: the library's ``AutoEncoder.from_pretrained`` would by default rescale
decoder columns to unit norm (changing latent magnitudes, not directions or reconstructions); that
step is not applied here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from benchmark.errors import CheckpointError
from benchmark.sae.model import SAE, SAEConfig

from .common import (
    CheckpointInfo,
    LoadHints,
    as_tensor,
    build_sae,
    check_weight_header,
    read_json,
    require,
    stored_dtype_name,
)
from .torch_archive import TorchArchive

WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path if path.suffix == ".pt" else path.parent / WEIGHTS_FILE
    return path / WEIGHTS_FILE


def load_state_dict(file: Path) -> TorchArchive:
    """The tensors ``file`` declares, checked against their storages without unpickling or reading
    weights (:class:`~benchmark.sae.checkpoints.torch_archive.TorchArchive`); close it when done."""
    return TorchArchive(file)


class _Header:
    """A tensor known from its header only (``inspect`` reads no weights)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)


def _shape(state: TorchArchive, name: str, file: Path, ndim: int) -> tuple[int, ...]:
    tensor = require(state, name, file)
    if tensor.ndim != ndim:
        raise CheckpointError(f"shape {tuple(tensor.shape)} should have {ndim} dimension(s)", file=file, field=name)
    return tuple(tensor.shape)


def _tensors(state: TorchArchive, file: Path, dtype: torch.dtype | None,
             spec: dict[str, tuple[str, tuple[int, ...], bool]]) -> dict[str, Any]:
    """``spec``: SAE name -> (stored name, stored shape, transpose?). Every header is checked (shape,
    float dtype) before any is read; ``dtype=None`` reads nothing and returns header shapes only."""
    for stored, shape, _ in spec.values():
        ref = state.tensors.get(stored)
        check_weight_header(file, stored, ref.shape if ref else None, ref.dtype if ref else None, shape)
    out: dict[str, Any] = {}
    for target, (stored, shape, transpose) in spec.items():
        if dtype is None:
            out[target] = _Header(shape[::-1] if transpose else shape)
            continue
        tensor = as_tensor(state.load(stored), stored, file, dtype=dtype, shape=shape)
        out[target] = tensor.T.contiguous() if transpose else tensor
    return out


def _scalar(state: TorchArchive, name: str, file: Path) -> float:
    tensor = require(state, name, file)
    if tensor.numel() != 1:
        raise CheckpointError(f"expected a scalar, got shape {tuple(tensor.shape)}", file=file, field=name)
    value = float(state.load(name).double())
    if value != value or value in (float("inf"), float("-inf")):
        raise CheckpointError("NaN/inf value", file=file, field=name)
    return value


def _threshold(state: TorchArchive, file: Path, dtype: torch.dtype | None, d_sae: int) -> Any:
    value = _scalar(state, "threshold", file)
    return _Header((d_sae,)) if dtype is None else torch.full((d_sae,), value, dtype=dtype)


def _linear_dims(state, file) -> tuple[int, int]:
    d_sae, d_in = _shape(state, "encoder.weight", file, 2)
    return d_in, d_sae


def _autoencoder(state, file, dtype):
    d_in, d_sae = _linear_dims(state, file)
    tensors = _tensors(state, file, dtype, {
        "W_enc": ("encoder.weight", (d_sae, d_in), True), "b_enc": ("encoder.bias", (d_sae,), False),
        "W_dec": ("decoder.weight", (d_in, d_sae), True), "b_dec": ("bias", (d_in,), False)})
    return "standard", tensors, None, True, {}


def _autoencoder_new(state, file, dtype):
    d_in, d_sae = _linear_dims(state, file)
    tensors = _tensors(state, file, dtype, {
        "W_enc": ("encoder.weight", (d_sae, d_in), True), "b_enc": ("encoder.bias", (d_sae,), False),
        "W_dec": ("decoder.weight", (d_in, d_sae), True), "b_dec": ("decoder.bias", (d_in,), False)})
    return "standard", tensors, None, False, {}


def _k(state, file) -> int:
    k = _scalar(state, "k", file)
    if k < 1 or int(k) != k:
        raise CheckpointError(f"expected a positive integer, got {k}", file=file, field="k")
    return int(k)


def _topk(state, file, dtype):
    d_in, d_sae = _linear_dims(state, file)
    tensors = _tensors(state, file, dtype, {
        "W_enc": ("encoder.weight", (d_sae, d_in), True), "b_enc": ("encoder.bias", (d_sae,), False),
        "W_dec": ("decoder.weight", (d_in, d_sae), True), "b_dec": ("b_dec", (d_in,), False)})
    return "topk", tensors, _k(state, file), True, {}


def _batch_topk(state, file, dtype):
    d_in, d_sae = _linear_dims(state, file)
    tensors = _tensors(state, file, dtype, {
        "W_enc": ("encoder.weight", (d_sae, d_in), True), "b_enc": ("encoder.bias", (d_sae,), False),
        "W_dec": ("decoder.weight", (d_in, d_sae), True), "b_dec": ("b_dec", (d_in,), False)})
    tensors["threshold"] = _threshold(state, file, dtype, d_sae)
    return "batchtopk", tensors, _k(state, file), True, {}


def _param_dims(state, file) -> tuple[int, int]:
    d_in, d_sae = _shape(state, "W_enc", file, 2)
    return d_in, d_sae


def _matryoshka(state, file, dtype):
    d_in, d_sae = _param_dims(state, file)
    tensors = _tensors(state, file, dtype, {
        "W_enc": ("W_enc", (d_in, d_sae), False), "b_enc": ("b_enc", (d_sae,), False),
        "W_dec": ("W_dec", (d_sae, d_in), False), "b_dec": ("b_dec", (d_in,), False)})
    tensors["threshold"] = _threshold(state, file, dtype, d_sae)
    extra: dict[str, Any] = {"training_architecture": "matryoshka_batchtopk"}
    if "group_sizes" in state:
        groups = state["group_sizes"]
        if groups.ndim != 1 or groups.numel() > d_sae or groups.dtype.is_floating_point or groups.dtype == torch.bool:
            raise CheckpointError(f"expected at most d_sae={d_sae} integer sizes, got {groups.dtype} {groups.shape}",
                                  file=file, field="group_sizes")
        sizes = [int(s) for s in state.load("group_sizes").tolist()]
        if sum(sizes) != d_sae:
            raise CheckpointError(f"group sizes sum to {sum(sizes)}, not d_sae={d_sae}", file=file, field="group_sizes")
        extra["group_sizes"] = sizes
    return "batchtopk", tensors, _k(state, file), True, extra


def _jumprelu(state, file, dtype):
    d_in, d_sae = _param_dims(state, file)
    tensors = _tensors(state, file, dtype, {
        "W_enc": ("W_enc", (d_in, d_sae), False), "b_enc": ("b_enc", (d_sae,), False),
        "W_dec": ("W_dec", (d_sae, d_in), False), "b_dec": ("b_dec", (d_in,), False),
        "threshold": ("threshold", (d_sae,), False)})
    return "jumprelu", tensors, None, False, {}


def _gated(state, file, dtype):
    d_in, d_sae = _linear_dims(state, file)
    tensors = _tensors(state, file, dtype, {
        "W_enc": ("encoder.weight", (d_sae, d_in), True), "b_gate": ("gate_bias", (d_sae,), False),
        "b_mag": ("mag_bias", (d_sae,), False), "r_mag": ("r_mag", (d_sae,), False),
        "W_dec": ("decoder.weight", (d_in, d_sae), True), "b_dec": ("decoder_bias", (d_in,), False)})
    return "gated", tensors, None, True, {}


DICT_CLASSES: dict[str, Callable] = {
    "AutoEncoder": _autoencoder,
    "AutoEncoderNew": _autoencoder_new,
    "AutoEncoderTopK": _topk,
    "BatchTopKSAE": _batch_topk,
    "MatryoshkaBatchTopKSAE": _matryoshka,
    "JumpReluAutoEncoder": _jumprelu,
    "GatedAutoEncoder": _gated,
}


def _infer_class(state: dict[str, torch.Tensor]) -> str | None:
    keys = set(state)
    if {"gate_bias", "mag_bias", "r_mag"} <= keys:
        return "GatedAutoEncoder"
    if "group_sizes" in keys:
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= keys:
        return "JumpReluAutoEncoder"
    if "bias" in keys and "encoder.weight" in keys:
        return "AutoEncoder"
    if "decoder.bias" in keys:
        return "AutoEncoderNew"
    if "k" in keys and "encoder.weight" in keys:
        # BatchTopK uses its threshold at inference, TopK ignores it; the keys are identical
        return None
    return None


def _trainer_config(folder: Path) -> tuple[dict[str, Any], Path | None]:
    cfg_file = folder / CONFIG_FILE
    if not cfg_file.is_file():
        return {}, None
    trainer = read_json(cfg_file).get("trainer", {})
    if not isinstance(trainer, dict):
        raise CheckpointError("expected an object", file=cfg_file, field="trainer")
    return trainer, cfg_file


def _hook_name(trainer: dict[str, Any]) -> str | None:
    layer = trainer.get("layer")
    if not isinstance(layer, int) or isinstance(layer, bool):
        return None
    sub = str(trainer.get("submodule_name") or "").lower()
    if "mlp" in sub:
        return f"blocks.{layer}.hook_mlp_out"
    if "attn" in sub or "attention" in sub:
        return f"blocks.{layer}.hook_attn_out"
    # dictionary_learning's buffers read the output of ``model.layers[layer]`` by default
    return f"blocks.{layer}.hook_resid_post"


def _decode(path: Path, state: TorchArchive, dtype: torch.dtype | None):
    file = _weights_file(path)
    trainer, cfg_file = _trainer_config(file.parent)
    dict_class = trainer.get("dict_class") or _infer_class(state)
    if dict_class is None:
        raise CheckpointError("cannot tell the dictionary class from the tensors; config.json trainer.dict_class "
                              "is needed", file=cfg_file or file, field="trainer.dict_class")
    if dict_class not in DICT_CLASSES:
        raise CheckpointError(f"unknown architecture (dict_class {dict_class!r}; known: {', '.join(DICT_CLASSES)})",
                              file=cfg_file or file, field="trainer.dict_class")
    arch, tensors, k, apply_b_dec, extra = DICT_CLASSES[dict_class](state, file, dtype)
    d_in, d_sae = tensors["W_enc"].shape
    for key, value in (("activation_dim", d_in), ("dict_size", d_sae), ("k", k)):
        declared = trainer.get(key)
        if declared is not None and value is not None and declared != value:
            raise CheckpointError(f"{declared} disagrees with {value} in {file.name}", file=cfg_file,
                                  field=f"trainer.{key}")
    model = trainer.get("lm_name")
    seed = trainer.get("seed")
    info = {"dict_class": dict_class, "trainer_class": trainer.get("trainer_class"), "layer": trainer.get("layer"),
            "submodule_name": trainer.get("submodule_name"),
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None, **extra}
    return arch, tensors, k, apply_b_dec, info, (model if isinstance(model, str) else None), _hook_name(trainer), file


def _stored_dtype(state: TorchArchive) -> str | None:
    enc = next((state[n] for n in ("encoder.weight", "W_enc") if n in state), None)
    return stored_dtype_name(enc.dtype) if enc is not None else None


def inspect(path: Path) -> CheckpointInfo:
    """Config + the archive's declarations (data.pkl and the storage sizes); no weight is read."""
    with load_state_dict(_weights_file(path)) as state:
        arch, tensors, k, apply_b_dec, info, model, hook, file = _decode(path, state, None)
        dtype = _stored_dtype(state)
    files = [WEIGHTS_FILE] + ([CONFIG_FILE] if (file.parent / CONFIG_FILE).is_file() else [])
    return CheckpointInfo(format="dictionary_learning", architecture=arch, d_in=tensors["W_enc"].shape[0],
                          d_sae=tensors["W_enc"].shape[1], k=k, model_name=model, hook_name=hook, files=files,
                          path=str(file.parent), dtype=dtype,
                          training_architecture=info.get("training_architecture"), apply_b_dec_to_input=apply_b_dec,
                          metadata=info)


def load(path: Path, *, dtype: torch.dtype = torch.float32, hints: LoadHints | None = None) -> SAE:
    file = _weights_file(path)
    with load_state_dict(file) as state:
        arch, tensors, k, apply_b_dec, info, model, hook, file = _decode(path, state, dtype)
        info["stored_dtype"] = _stored_dtype(state)
    config = SAEConfig(architecture=arch, d_in=tensors["W_enc"].shape[0], d_sae=tensors["W_enc"].shape[1], k=k,
                       apply_b_dec_to_input=apply_b_dec, model_name=model, hook_name=hook,
                       training_architecture=info.get("training_architecture"), format="dictionary_learning",
                       metadata=info)
    return build_sae(config, tensors, file=file)


def claims(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file()

