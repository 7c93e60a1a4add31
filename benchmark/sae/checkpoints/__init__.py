"""Every common SAE checkpoint format -> the uniform :class:`benchmark.sae.model.SAE`.

Formats (``FORMATS``): ``native`` (the benchmark's own SAELens-v6-compatible folders),
``saelens`` (v6 and pre-6.0), ``sparsify`` (EleutherAI), ``gemmascope`` (params.npz and Gemma
Scope 2 params.safetensors) and ``dictionary_learning`` (ae.pt + config.json).

    load_sae(source, format=None, *, device="cpu", expect=None) -> SAE   # header check first, then weights
    detect_format(folder_or_file) -> str
    checkpoint_subfolders(folder) -> [Path]   # a folder holding one checkpoint per seed
    inspect_checkpoint(folder_or_file, format=None, *, expect=None) -> CheckpointInfo   # configs + headers only
    save_native(sae, folder, *, extra_metadata=None) -> Path
"""

from __future__ import annotations

from .common import CheckpointInfo, ExpectedSize, LoadHints
from .native import save_native
from .registry import FORMATS, CheckpointFormat, checkpoint_subfolders, detect_format, format_name, inspect_checkpoint, load_sae

__all__ = [
    "FORMATS",
    "CheckpointFormat",
    "CheckpointInfo",
    "ExpectedSize",
    "LoadHints",
    "checkpoint_subfolders",
    "detect_format",
    "format_name",
    "inspect_checkpoint",
    "load_sae",
    "save_native",
]
