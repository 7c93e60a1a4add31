"""Pieces every format reader shares: the inspection record, JSON reading, tensor checks, SAE assembly."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import CheckpointError, file_kind
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


# ------------------------------------------------------------------------------- reading files
MAX_CONFIG_BYTES = 4 << 20  # a cfg.json / config.json is a few KB; sae-lens runner configs ~10 KB
MAX_JSON_DEPTH = 32  # configs nest 3-4 levels
MAX_JSON_INT_DIGITS = 30  # no size, seed or count in a config needs more; int() of long digit strings is slow


def open_regular_file(path: Path, *, field: str | None = None):
    """``path`` opened for binary reading, refusing anything that is not a regular file.

    Opened non-blocking and checked with ``fstat`` before any read, so a FIFO, a socket or a device
    (``/dev/stdin``, ``/dev/zero``) named as a checkpoint file is refused instead of hanging or
    streaming forever. Symlinks are followed (the Hub cache links every file to a blob); where a file
    may live is decided by the caller (``benchmark.submission.sources``).
    """
    field = field if field is not None else Path(path).name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointError("file is missing", file=path, field=field) from None
    except IsADirectoryError:
        raise CheckpointError("is a folder, not a file", file=path, field=field) from None
    except OSError as exc:
        raise CheckpointError(f"cannot open: {exc.strerror or type(exc).__name__}", file=path, field=field) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"is a {file_kind(info.st_mode)}, not a regular file", file=path, field=field)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Refused:
    """A JSON value the parser saw but refuses (reported with the key path it sits at)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _json_int(text: str) -> Any:
    digits = len(text.lstrip("-"))
    if digits > MAX_JSON_INT_DIGITS:
        return _Refused(f"an integer with {digits} digits (limit {MAX_JSON_INT_DIGITS})")
    return int(text)


def _json_float(text: str) -> Any:
    value = float(text)
    if not math.isfinite(value):
        return _Refused(f"{text[:40]} is not a finite number")
    return value


def _json_constant(name: str) -> Any:
    return _Refused(f"{name} is not a number JSON allows")


class _DuplicateKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _key_path(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,80}", text):
        text = repr(text[:60])
    return f"{path}.{text}" if path else text


def parse_json_bytes(raw: bytes, file: Path, *, field: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from ``raw`` with limits, or a one-line CheckpointError naming ``file`` and the key at fault.

    Refused: invalid UTF-8 or JSON, nesting deeper than ``max_depth``, duplicate keys, NaN/Infinity,
    numbers that overflow to infinity (``1e999``) and integers longer than ``MAX_JSON_INT_DIGITS``
    digits (converted lazily, so a 4 MB run of digits costs nothing). Every caller that reads JSON from
    a checkpoint goes through here, so every path (inspect, load, validate, run) reports alike.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=file, field=field) from None
    try:
        data = json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant,
                          object_pairs_hook=_json_object)
    except _DuplicateKey as exc:
        raise CheckpointError("key appears twice in one object", file=file, field=_key_path("", exc.args[0])) from None
    except RecursionError:
        raise CheckpointError(f"nested too deeply (limit {max_depth} levels)", file=file, field=field) from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(f"not valid JSON ({_first_line(exc)})", file=file, field=field) from None
    # iterative walk: refused values and depth, reported with their key path
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, _Refused):
            raise CheckpointError(f"refused value: {value.reason}", file=file, field=where or field)
        if isinstance(value, (dict, list)):
            if depth >= max_depth:
                raise CheckpointError(f"nested too deeply (limit {max_depth} levels)", file=file, field=where or field)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((child, _key_path(where, key), depth + 1) for key, child in reversed(list(items)))
    return data


def read_json(path: Path, *, max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """A JSON object from the config file ``path`` (at most ``max_bytes``), with the limits of
    :func:`parse_json_bytes`; CheckpointError naming the file (and the key) otherwise."""
    path = Path(path)
    with open_regular_file(path) as handle:
        try:
            raw = handle.read(max_bytes + 1)
        except OSError as exc:
            raise CheckpointError(f"cannot read: {exc.strerror or type(exc).__name__}", file=path,
                                  field=path.name) from None
    if len(raw) > max_bytes:
        raise CheckpointError(f"over {max_bytes} bytes; a config file is small", file=path, field=path.name)
    data = parse_json_bytes(raw, path, field=path.name)
    if not isinstance(data, dict):
        raise CheckpointError("top level is not a JSON object", file=path, field=path.name)
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def config_int(cfg: dict[str, Any], key: str, file: Path, *, required: bool = True) -> int | None:
    """A positive integer config value, or a CheckpointError naming ``key``."""
    value = cfg.get(key)
    if value is None:
        if required:
            raise CheckpointError("required config key is missing", file=file, field=key)
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())) or value < 1):
        raise CheckpointError(f"expected a positive integer, got {_short_repr(value)}", file=file, field=key)
    return int(value)


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


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
    if stored_dtype_name(tensor.dtype) not in FLOAT_DTYPE_NAMES:
        raise CheckpointError(f"dtype {stored_dtype_name(tensor.dtype)} is not a float type (weights must be "
                              "float16, bfloat16, float32 or float64)", file=file, field=name)
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


FLOAT_DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")


def check_weight_header(file: Path, name: str, shape: tuple[int, ...] | None, dtype: Any,
                        expected: tuple[int, ...], *, context: str = "") -> None:
    """The header-level check of one tensor a format will load: present, the expected shape, a float dtype.

    Every format calls this from ``inspect`` (what ``validate --check-files`` runs) and ``load`` (what
    ``run`` runs), before any tensor data is read, so both refuse the same files with the same reason.
    """
    if shape is None:
        raise CheckpointError("missing tensor", file=file, field=name)
    if tuple(shape) != tuple(expected):
        raise CheckpointError(f"shape {tuple(shape)} does not match expected {tuple(expected)}{context}", file=file,
                              field=name)
    dtype_name = stored_dtype_name(dtype)
    if dtype_name not in FLOAT_DTYPE_NAMES:
        raise CheckpointError(f"dtype {dtype_name} is not a float type (weights must be float16, bfloat16, float32 "
                              "or float64)", file=file, field=name)


@dataclass(frozen=True)
class ExpectedSize:
    """Sizes a checkpoint must declare (from its manifest), checked on headers before any weight is read.

    With it, the memory a load takes is bounded by what the manifest declares rather than by what a
    file claims: ``d_sae`` (the manifest's ``sae.width``) and ``d_in`` (``sae.d_in``, optional).
    """

    d_sae: int | None = None
    d_in: int | None = None
    declared_in: str = "the manifest"
    width_field: str = "sae.width"  # where d_sae is declared (a ladder rung's checkpoints[i].width)

    def check(self, info: "CheckpointInfo") -> None:
        file = Path(info.path) / info.files[0] if info.files else Path(info.path)
        for name, actual, wanted, key in (("d_sae", info.d_sae, self.d_sae, self.width_field),
                                          ("d_in", info.d_in, self.d_in, "sae.d_in")):
            if wanted is not None and actual != wanted:
                raise CheckpointError(f"declares {name}={actual} but {self.declared_in} says {key}={wanted}; "
                                      "refused before reading any weights", file=file, field=name)


def build_sae(config: SAEConfig, tensors: dict[str, torch.Tensor], *, file: Path) -> SAE:
    """The SAE module (its constructor re-checks shapes and finiteness, naming ``file``)."""
    return SAE(config, source=str(file), **tensors)


_LAYER_MODULE = re.compile(r"(?:model\.|gpt_neox\.|transformer\.|language_model\.model\.)?(?:layers|h)\.(\d+)")
_BERT_LAYER = re.compile(r"(?:bert\.|model\.)?encoder\.layers?\.(\d+)")


def transformer_lens_hook(hf_module: str) -> str:
    """The transformer-lens hook name for a Hugging Face module name used as a hookpoint.

    ``layers.N`` (pre-LN decoders) is the residual stream after block N; a BERT layer's output comes
    after its final LayerNorm. Names with no known equivalent are returned unchanged.
    """
    if (match := _LAYER_MODULE.fullmatch(hf_module)) is not None:
        return f"blocks.{match.group(1)}.hook_resid_post"
    if (match := _BERT_LAYER.fullmatch(hf_module)) is not None:
        return f"blocks.{match.group(1)}.hook_normalized_resid_post"
    if hf_module in ("embed_tokens", "model.embed_tokens", "embed_in", "gpt_neox.embed_in", "wte", "transformer.wte"):
        return "hook_embed"
    return hf_module


def stored_dtype_name(dtype: Any) -> str:
    """A short dtype name (``float32``, ``bfloat16``) for torch dtypes, numpy dtypes and safetensors codes."""
    codes = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
             "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
             "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
    if isinstance(dtype, str):
        return codes.get(dtype, dtype.lower())
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name  # "float32" for "<f4" and ">f4" alike
