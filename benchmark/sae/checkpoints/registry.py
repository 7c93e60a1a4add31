"""Which checkpoint formats exist, how each is recognised, and the public entry points."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from benchmark.errors import CheckpointError, SourceError
from benchmark.sae.model import SAE

from . import dictionary_learning, gemmascope, saelens, sparsify
from .common import CheckpointInfo, ExpectedSize, LoadHints

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointFormat:
    """One on-disk format: ``claims(folder)`` is a cheap file-name test; ``inspect``/``load`` read it."""

    name: str
    description: str
    marker_files: tuple[str, ...]
    claims: Callable[[Path], bool]
    inspect: Callable[..., CheckpointInfo]
    load: Callable[..., SAE]


def _native_claims(folder: Path) -> bool:
    return saelens.claims(folder) and saelens.is_native(folder)


FORMATS: dict[str, CheckpointFormat] = {
    "native": CheckpointFormat(
        "native", "CanonBench's own SAELens-v6-compatible folder", ("cfg.json", "sae_weights.safetensors"),
        _native_claims,
        lambda path, hints=None: saelens.inspect(path, format_name="native"),
        lambda path, *, dtype, hints=None: saelens.load(path, dtype=dtype, hints=hints, format_name="native")),
    "saelens": CheckpointFormat(
        "saelens", "SAELens (v6 and pre-6.0 cfg.json)", ("cfg.json", "sae_weights.safetensors"), saelens.claims,
        lambda path, hints=None: saelens.inspect(path),
        lambda path, *, dtype, hints=None: saelens.load(path, dtype=dtype, hints=hints)),
    "sparsify": CheckpointFormat(
        "sparsify", "EleutherAI sparsify (one folder per hookpoint)", ("cfg.json", "sae.safetensors"),
        sparsify.claims,
        lambda path, hints=None: sparsify.inspect(path),
        lambda path, *, dtype, hints=None: sparsify.load(path, dtype=dtype, hints=hints)),
    "gemmascope": CheckpointFormat(
        "gemmascope", "Gemma Scope params.npz / Gemma Scope 2 params.safetensors", ("params.npz", "params.safetensors"),
        gemmascope.claims,
        lambda path, hints=None: gemmascope.inspect(path, hints=hints),
        lambda path, *, dtype, hints=None: gemmascope.load(path, dtype=dtype, hints=hints)),
    "dictionary_learning": CheckpointFormat(
        "dictionary_learning", "saprmarks/dictionary_learning ae.pt + config.json", ("ae.pt",),
        dictionary_learning.claims,
        lambda path, hints=None: dictionary_learning.inspect(path),
        lambda path, *, dtype, hints=None: dictionary_learning.load(path, dtype=dtype, hints=hints)),
}

_ALIASES = {"sae_lens": "saelens", "sae-lens": "saelens", "eleuther": "sparsify", "gemma_scope": "gemmascope",
            "gemma-scope": "gemmascope", "dictionary-learning": "dictionary_learning",
            "dictlearn": "dictionary_learning"}

# A single file names its format (and the folder to read) by its file name.
_FILE_FORMATS = {
    "sae_weights.safetensors": None,  # saelens or native: decided from the folder
    "cfg.json": None,
    "sae.safetensors": "sparsify",
    "params.npz": "gemmascope",
    "params.safetensors": "gemmascope",
    "ae.pt": "dictionary_learning",
}


def format_name(name: str) -> str:
    """Canonical format name; CheckpointError for unknown names."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in FORMATS:
        raise CheckpointError(f"unknown format {name!r} (known: {', '.join(FORMATS)})", field="format")
    return key


def _folder_format(folder: Path) -> str | None:
    for name, spec in FORMATS.items():
        if spec.claims(folder):
            return name
    return None


def checkpoint_subfolders(folder: Path | str) -> list[Path]:
    """The subfolders of ``folder`` that each hold one checkpoint (e.g. sparsify's ``<hookpoint>/seed<K>``
    of a multi-seed run, or dictionary_learning's ``trainer_<i>``), sorted by name; empty when
    ``folder`` is itself a checkpoint or holds none. Linked folders are not followed."""
    path = Path(folder)
    if not path.is_dir() or _folder_format(path) is not None:
        return []
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and _folder_format(p) is not None),
                  key=lambda p: _natural_key(p.name))


def _natural_key(name: str) -> tuple:
    """``seed2`` before ``seed10``."""
    import re

    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def detect_format(folder_or_file: Path | str) -> str:
    """The format name of a checkpoint folder or file, from file names (and cfg.json for native)."""
    path = Path(folder_or_file)
    if not path.exists():
        raise CheckpointError("does not exist", file=path, field="path")
    if path.is_file():
        if path.name in _FILE_FORMATS:
            fmt = _FILE_FORMATS[path.name] or _folder_format(path.parent)
            if fmt is not None:
                return fmt
        elif path.suffix == ".pt":
            return "dictionary_learning"
        elif path.suffix == ".npz":
            return "gemmascope"
        raise CheckpointError("not a file of any known checkpoint format", file=path, field="format")
    fmt = _folder_format(path)
    if fmt is not None:
        return fmt
    inside = [p.name for p in checkpoint_subfolders(path)]
    if inside:
        shown = ", ".join(inside[:8]) + (f", ... ({len(inside)} in all)" if len(inside) > 8 else "")
        raise CheckpointError(f"holds several checkpoints, not one; pick a subfolder: {shown}", file=path,
                              field="path")
    markers = sorted({" + ".join(spec.marker_files) for spec in FORMATS.values()})
    raise CheckpointError(f"no known checkpoint files (looked for {'; '.join(markers)})", file=path, field="format")


def _hints(resolved: Any) -> LoadHints:
    info = getattr(resolved, "saelens", None)
    factor = info.get("norm_scaling_factor") if isinstance(info, dict) else None
    return LoadHints(repo=getattr(resolved, "repo", None), path_in_repo=getattr(resolved, "path_in_repo", None),
                     norm_scaling_factor=factor)


def _resolve(source: Any) -> tuple[Path, LoadHints]:
    """A local path and outside hints for ``source`` (path, hf:// / saelens:// URI, or resolved checkpoint)."""
    if isinstance(source, str) and source.startswith(("hf://", "saelens://")):
        from benchmark.submission.sources import resolve_source

        resolved = resolve_source(source)
        return Path(resolved.path), _hints(resolved)
    if hasattr(source, "path") and not isinstance(source, (str, Path)):
        return Path(source.path), _hints(source)
    return Path(source), LoadHints()


def _guarded(path: Path, action: Callable[[], Any]) -> Any:
    """Run a format reader; anything but a CheckpointError/SourceError becomes one line naming ``path``.

    The readers check every field they use, so this is a net, not the check: a reader bug on a hostile
    file still ends as ``<file>: checkpoint: cannot read (...)`` rather than a bare traceback, the
    same in ``validate``, ``run`` and the library calls.
    """
    try:
        return action()
    except (CheckpointError, SourceError):
        raise
    except MemoryError:
        raise CheckpointError("ran out of memory reading this checkpoint", file=path, field="checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.debug("reading %s failed", path, exc_info=True)
        text = str(exc).strip().splitlines()
        detail = text[0][:200] if text else "no detail"
        raise CheckpointError(f"cannot read ({type(exc).__name__}: {detail})", file=path,
                              field="checkpoint") from None


def inspect_checkpoint(folder_or_file: Path | str, format: str | None = None, *,
                       expect: ExpectedSize | None = None) -> CheckpointInfo:
    """Architecture, sizes, model and hook of a checkpoint from configs and headers only.

    No weight is read: safetensors and npz headers are parsed with bounds, and ``ae.pt``'s ``data.pkl``
    is interpreted without unpickling (its storages are checked against the archive). ``expect``: sizes
    the checkpoint must declare (from its manifest); a checkpoint that declares others is refused here.
    """
    path, hints = _resolve(folder_or_file)
    fmt = format_name(format) if format else detect_format(path)
    info = _guarded(path, lambda: FORMATS[fmt].inspect(path, hints=hints))
    if expect is not None:
        expect.check(info)
    return info


def load_sae(source: Any, format: str | None = None, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, expect: ExpectedSize | None = None) -> SAE:
    """Load a checkpoint of any known format as an :class:`~benchmark.sae.model.SAE` on ``device``.

    ``source``: a local folder or file, an ``hf://owner/repo@sha/path`` or ``saelens://release/sae_id``
    URI (resolved by ``benchmark.submission.sources.resolve_source``), or a resolved checkpoint (anything with a
    ``.path``). Weights are upcast to ``dtype`` (float32 by default; bf16/fp16 values are kept exactly).

    The same header check ``inspect_checkpoint`` (and so ``validate --check-files``) runs comes first,
    so a file is refused for the same reason on every path and before any weight is read. ``expect``
    (or a resolved checkpoint's own ``expect``, set by ``resolve_checkpoint`` from the manifest) bounds
    the sizes it may declare; without one, what is read is bounded by the file's own size.
    """
    path, hints = _resolve(source)
    expect = expect if expect is not None else getattr(source, "expect", None)
    fmt = format_name(format) if format else detect_format(path)
    if path.is_file() and fmt in ("saelens", "native", "sparsify"):
        path = path.parent
    info = _guarded(path, lambda: FORMATS[fmt].inspect(path, hints=hints))
    if expect is not None:
        expect.check(info)
    sae = _guarded(path, lambda: FORMATS[fmt].load(path, dtype=dtype, hints=hints))
    logger.debug("loaded %s checkpoint %s: %r", fmt, path, sae)
    return sae.to(torch.device(device))
