"""The benchmark's own checkpoint format: a SAELens-v6-compatible folder.

``cfg.json`` (v6 keys + a ``metadata`` block with model_name, hook_name and training info) and
``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``,
``threshold`` for JumpReLU/thresholded BatchTopK, ``b_gate``/``b_mag``/``r_mag`` for Gated). A
thresholded BatchTopK SAE is written the way sae-lens writes one (``jumprelu`` +
``metadata.training_architecture = "batchtopk"``), so sae-lens can load every native folder except a
BatchTopK SAE without a threshold (kept as ``batchtopk`` for the benchmark's own reader).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from benchmark.errors import CheckpointError
from benchmark.sae.model import SAE
from benchmark.version import BENCHMARK_VERSION

from .saelens import CFG_FILE, NATIVE_MARKER, NATIVE_SCALE_KEY, WEIGHTS_FILE

FORMAT_VERSION = 1
# sae-lens treats a cfg.json without a version >= 6 as a flat pre-6.0 config; the layout written
# here is the v6 one, so it says so.
SAE_LENS_LAYOUT_VERSION = "6.0.0"
_SAELENS_NORMALISATION = {"none": "none", "constant_norm_rescale": "constant_norm_rescale",
                          "layer_norm": "layer_norm", "scalar": "expected_average_only_in"}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def native_config(sae: SAE, extra_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cfg.json dict for ``sae``."""
    c = sae.config
    architecture = c.architecture
    metadata: dict[str, Any] = {k: v for k, v in (c.metadata or {}).items() if _jsonable(v)}
    cfg: dict[str, Any] = {
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": _SAELENS_NORMALISATION[c.input_normalisation],
        "reshape_activations": "none",
    }
    if architecture == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=c.rescale_acts_by_decoder_norm)
    elif architecture == "batchtopk" and sae.threshold is not None:
        architecture = "jumprelu"
        metadata["training_architecture"] = c.training_architecture or "batchtopk"
        details = dict(metadata.get("training_architecture_details") or {})
        details["k"] = c.k
        metadata["training_architecture_details"] = details
    elif architecture == "batchtopk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=c.rescale_acts_by_decoder_norm)
        if c.training_architecture:
            metadata["training_architecture"] = c.training_architecture
    elif c.training_architecture:
        metadata["training_architecture"] = c.training_architecture
    cfg["architecture"] = architecture
    if c.input_normalisation == "scalar":
        metadata[NATIVE_SCALE_KEY] = float(c.input_scale)
    else:
        metadata.pop(NATIVE_SCALE_KEY, None)
    for key in ("normalize_activations", "stored_dtype", "saved_architecture"):
        metadata.pop(key, None)  # facts about a previous file, not this one
    metadata.update(
        model_name=c.model_name,
        hook_name=c.hook_name,
        sae_lens_version=SAE_LENS_LAYOUT_VERSION,
        sae_lens_training_version=None,
        canonbench_version=BENCHMARK_VERSION,
        **{NATIVE_MARKER: FORMAT_VERSION},
    )
    for key, value in (extra_metadata or {}).items():
        if not _jsonable(value):
            raise CheckpointError(f"value {value!r} is not JSON-serialisable", field=f"extra_metadata.{key}")
        metadata[key] = value
    cfg["metadata"] = metadata
    return cfg


def native_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """The tensors as sae-lens names them, float32, contiguous, on the CPU."""
    def plain(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32).contiguous().clone()

    out = {"W_enc": plain(sae.W_enc), "W_dec": plain(sae.W_dec), "b_dec": plain(sae.b_dec)}
    if sae.architecture == "gated":
        out.update(b_gate=plain(sae.b_enc), b_mag=plain(sae.b_mag), r_mag=plain(sae.r_mag))
    else:
        out["b_enc"] = plain(sae.b_enc)
    if sae.threshold is not None:
        out["threshold"] = plain(sae.threshold)
    return out


def save_native(sae: SAE, folder: Path | str, *, extra_metadata: dict[str, Any] | None = None,
                overwrite: bool = False) -> Path:
    """Write ``sae`` to ``folder`` atomically (a temp folder beside it, then a rename); returns ``folder``.

    ``extra_metadata`` (JSON values: training recipe, seed, losses, ...) goes into cfg.json's
    ``metadata`` block. An existing folder is replaced only with ``overwrite=True``; without it, a
    folder another process writes meanwhile is never replaced (this call raises instead: the first
    writer wins).
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise CheckpointError("already exists (pass overwrite=True to replace it)", file=folder, field="folder")
    for name, tensor in native_tensors(sae).items():
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError("NaN/inf values; refusing to save", file=folder, field=name)
    if sae.config.input_normalisation == "scalar" and not (math.isfinite(sae.config.input_scale)
                                                           and sae.config.input_scale > 0):
        raise CheckpointError("input_scale must be a positive number", file=folder, field="input_scale")
    cfg = native_config(sae, extra_metadata)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(native_tensors(sae), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        with (tmp / CFG_FILE).open("w", encoding="utf-8") as handle:
            json.dump(cfg, handle, indent=2, sort_keys=True, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        with (tmp / WEIGHTS_FILE).open("rb") as handle:
            os.fsync(handle.fileno())
        if folder.exists() and overwrite:
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        elif folder.exists():  # another writer finished first (checked above): its folder stays
            raise CheckpointError("already exists (written meanwhile by another process)", file=folder, field="folder")
        else:
            tmp.rename(folder)  # fails (folder not empty) if another writer's folder appears right now: it stays
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
