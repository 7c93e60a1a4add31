"""Pieces every format reader shares: the inspection record, JSON reading, tensor checks, SAE assembly."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import CheckpointError
from benchmark.sae.model import SAE, SAEConfig


@dataclass
class CheckpointInfo:
    """What a checkpoint is, read from configs and headers only (no weights).

    ``files``: names, relative to ``path`` (the checkpoint folder, or the file's folder), of the files
    the checkpoint consists of. ``dtype``: the stored dtype of the encoder weights.
    """

    format: str
    architecture: str
    d_in: int
    d_sae: int
    k: int | float | None
    model_name: str | None
    hook_name: str | None
    files: list[str]
    path: str = ""
    dtype: str | None = None
    training_architecture: str | None = None
    apply_b_dec_to_input: bool | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadHints:
    """Facts about a checkpoint that live outside its files (from ``benchmark.submission.sources``)."""

    repo: str | None = None
    path_in_repo: str | None = None
    norm_scaling_factor: float | None = None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; CheckpointError naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CheckpointError("file is missing", file=path, field=path.name) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read: {exc}", file=path, field=path.name) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"not valid JSON ({exc})", file=path, field=path.name) from exc
    if not isinstance(data, dict):
        raise CheckpointError("top level is not a JSON object", file=path, field=path.name)
    return data


def config_int(cfg: dict[str, Any], key: str, file: Path, *, required: bool = True) -> int | None:
    """A positive integer config value, or a CheckpointError naming ``key``."""
    value = cfg.get(key)
    if value is None:
        if required:
            raise CheckpointError("required config key is missing", file=file, field=key)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise CheckpointError(f"expected a positive integer, got {value!r}", file=file, field=key)
    return int(value)


def integral(value: Any) -> Any:
    """``3.0`` -> ``3``; other values unchanged (BatchTopK's k may be a float average)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def require(tensors: dict[str, Any], name: str, file: Path, *, what: str = "") -> Any:
    if name not in tensors:
        have = ", ".join(sorted(tensors)) or "none"
        raise CheckpointError(f"missing tensor{what} (file has: {have})", file=file, field=name)
    return tensors[name]


def as_tensor(value: torch.Tensor | np.ndarray, name: str, file: Path, *, dtype: torch.dtype,
              shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A float tensor in ``dtype`` with the expected shape and only finite values.

    Values are only ever upcast (bf16/fp16 -> fp32 is exact), so stored weights are kept exactly.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    if not (torch.is_floating_point(tensor)):
        raise CheckpointError(f"dtype {tensor.dtype} is not a float type", file=file, field=name)
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise CheckpointError(f"shape {tuple(tensor.shape)} does not match expected {tuple(shape)}", file=file,
                              field=name)
    tensor = tensor.to(dtype)
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        raise CheckpointError(f"{int((~finite).sum())} NaN/inf values", file=file, field=name)
    return tensor


def check_shape(actual: tuple[int, ...] | None, expected: tuple[int, ...], name: str, file: Path) -> None:
    """Header-level shape check used by the inspectors."""
    if actual is None:
        raise CheckpointError("missing tensor", file=file, field=name)
    if tuple(actual) != tuple(expected):
        raise CheckpointError(f"shape {tuple(actual)} does not match expected {tuple(expected)}", file=file,
                              field=name)


def build_sae(config: SAEConfig, tensors: dict[str, torch.Tensor], *, file: Path) -> SAE:
    """The SAE module (its constructor re-checks shapes and finiteness, naming ``file``)."""
    return SAE(config, source=str(file), **tensors)


_LAYER_MODULE = re.compile(r"^(?:model\.|gpt_neox\.|transformer\.|language_model\.model\.)?(?:layers|h)\.(\d+)$")
_BERT_LAYER = re.compile(r"^(?:bert\.|model\.)?encoder\.layers?\.(\d+)$")


def transformer_lens_hook(hf_module: str) -> str:
    """The transformer-lens hook name for a Hugging Face module name used as a hookpoint.

    ``layers.N`` (pre-LN decoders) is the residual stream after block N; a BERT layer's output comes
    after its final LayerNorm. Names with no known equivalent are returned unchanged.
    """
    if (match := _LAYER_MODULE.match(hf_module)) is not None:
        return f"blocks.{match.group(1)}.hook_resid_post"
    if (match := _BERT_LAYER.match(hf_module)) is not None:
        return f"blocks.{match.group(1)}.hook_normalized_resid_post"
    if hf_module in ("embed_tokens", "model.embed_tokens", "embed_in", "gpt_neox.embed_in", "wte", "transformer.wte"):
        return "hook_embed"
    return hf_module


def stored_dtype_name(dtype: Any) -> str:
    """A short dtype name (``float32``, ``bfloat16``) for torch dtypes, numpy dtypes and safetensors codes."""
    codes = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    if isinstance(dtype, str):
        return codes.get(dtype, dtype.lower())
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return str(np.dtype(dtype))
