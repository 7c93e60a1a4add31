"""SAELens checkpoints: ``cfg.json`` + ``sae_weights.safetensors`` (v6 configs and the flat pre-6.0 ones).

Semantics follow sae-lens (sae_lens/saes/{standard,topk,jumprelu,gated,batchtopk}_sae.py and
loading/pretrained_sae_loaders.py):

* encode: ``pre = (norm(x) - b_dec*apply_b_dec_to_input) @ W_enc + b_enc`` then the architecture's rule;
  decode ``z @ W_dec + b_dec`` then the inverse normalisation.
* BatchTopK is saved for inference as ``jumprelu`` with one shared threshold and
  ``metadata.training_architecture = "batchtopk"``; it loads here as architecture ``batchtopk`` with
  that threshold. Training checkpoints (``architecture: batchtopk`` + a scalar ``topk_threshold``)
  are converted the way sae-lens saves an inference model (decoder norms folded when
  ``rescale_acts_by_decoder_norm``).
* ``expected_average_only_in`` and ``covariance_whitening`` do nothing at inference in sae-lens unless
  a factor is folded in: a ``norm_scaling_factor`` (from the registry, via the sources helper) is folded
  exactly as ``fold_activation_norm_scaling_factor`` does; otherwise the input is used as is.
* pre-6.0 ``finetuning_scaling_factor`` multiplies latents before decoding; it is folded into W_dec rows.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import CheckpointError
from benchmark.sae.model import SAE, SAEConfig

from .common import (
    CheckpointInfo,
    LoadHints,
    as_tensor,
    build_sae,
    check_weight_header,
    config_int,
    integral,
    read_json,
    require,
    stored_dtype_name,
)
from .safetensors_header import SafetensorsHeader, load_safetensors, read_safetensors_header

logger = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
OPTIONAL_FILES = ("sparsity.safetensors", "runner_cfg.json")
NATIVE_MARKER = "canonbench_format_version"
NATIVE_SCALE_KEY = "canonbench_input_scale"
THRESHOLD_NAMES = ("threshold", "log_threshold", "topk_threshold")
SCALING_NAMES = ("finetuning_scaling_factor", "scaling_factor")

BATCHTOPK_TRAINING = ("batchtopk", "matryoshka_batchtopk")
SUPPORTED = ("standard", "topk", "jumprelu", "gated", *BATCHTOPK_TRAINING)
NORMALISATIONS = {
    "none": "none",
    "constant_norm_rescale": "constant_norm_rescale",
    "layer_norm": "layer_norm",
    # identity at inference in sae-lens unless a factor / whitening is folded into the weights
    "expected_average_only_in": "none",
    "covariance_whitening": "none",
}


@dataclass
class SaelensConfig:
    """A cfg.json reduced to what decides the encode/decode math."""

    architecture: str
    saved_architecture: str
    d_in: int
    d_sae: int
    k: int | float | None
    apply_b_dec_to_input: bool
    normalize_activations: str
    rescale_acts_by_decoder_norm: bool
    finetuning_scaling_factor: bool
    model_name: str | None
    hook_name: str | None
    training_architecture: str | None
    version: str | None
    native: bool
    input_scale: float | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _major_version(version: Any) -> int | None:
    match = re.match(r"\s*v?(\d+)", str(version)) if version is not None else None
    return int(match.group(1)) if match else None


def parse_config(cfg: dict[str, Any], file: Path) -> SaelensConfig:
    """Read a v6 or pre-6.0 cfg.json; CheckpointError naming the key at fault."""
    metadata = cfg.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError("metadata is not an object", file=file, field="metadata")
    version = cfg.get("sae_lens_version") or (metadata or {}).get("sae_lens_version")
    v6 = isinstance(metadata, dict) and (_major_version(version) is None or _major_version(version) >= 6)
    flat = dict(cfg) if not v6 else {}
    if not v6:
        # pre-6.0 names (sae-lens handle_pre_6_0_config)
        for old, new in (("hook_point", "hook_name"), ("activation_fn_str", "activation_fn"),
                         ("hook_point_layer", "hook_layer")):
            if old in flat and new not in flat:
                flat[new] = flat[old]
        metadata = {k: v for k, v in flat.items() if k not in ("d_in", "d_sae")}
    source = cfg if v6 else flat

    d_in = config_int(source, "d_in", file)
    d_sae = config_int(source, "d_sae", file)
    saved_arch = source.get("architecture") or ("standard" if not v6 else None)
    if saved_arch is None:
        raise CheckpointError("required config key is missing", file=file, field="architecture")
    if not isinstance(saved_arch, str):
        raise CheckpointError(f"expected a string, got {saved_arch!r}", file=file, field="architecture")

    k: int | float | None = None
    if not v6:
        activation = source.get("activation_fn") or "relu"
        kwargs = source.get("activation_fn_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise CheckpointError("expected an object", file=file, field="activation_fn_kwargs")
        if activation == "topk":
            if kwargs.get("k") is None:
                raise CheckpointError("topk activation needs activation_fn_kwargs.k", file=file,
                                      field="activation_fn_kwargs")
            saved_arch = "topk"
            k = config_int(kwargs, "k", file)
        elif activation != "relu":
            raise CheckpointError(f"unsupported activation function {activation!r} (supported: relu, topk)",
                                  file=file, field="activation_fn")
    if saved_arch not in SUPPORTED:
        raise CheckpointError(f"unknown architecture {saved_arch!r} (supported: {', '.join(SUPPORTED)})",
                              file=file, field="architecture")

    training_arch = metadata.get("training_architecture") if v6 else None
    details = metadata.get("training_architecture_details") if v6 else None
    details = details if isinstance(details, dict) else {}
    architecture = saved_arch
    if saved_arch == "topk" and k is None:
        k = config_int(source, "k", file)
    elif saved_arch in BATCHTOPK_TRAINING:
        architecture = "batchtopk"
        training_arch = training_arch if training_arch in BATCHTOPK_TRAINING else saved_arch
        k = integral(source.get("k"))
    elif saved_arch == "jumprelu" and training_arch in BATCHTOPK_TRAINING:
        architecture = "batchtopk"
        k = integral(details.get("k"))
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, float)) or k <= 0):
        raise CheckpointError(f"expected a positive number, got {k!r}", file=file, field="k")

    apply_b_dec = source.get("apply_b_dec_to_input", True)
    if not isinstance(apply_b_dec, bool):
        raise CheckpointError(f"expected true/false, got {apply_b_dec!r}", file=file, field="apply_b_dec_to_input")

    normalize = source.get("normalize_activations", "none")
    if isinstance(normalize, bool):  # pre-6.0 spelling
        normalize = "expected_average_only_in" if normalize else "none"
    normalize = "none" if normalize is None else normalize
    if normalize not in NORMALISATIONS:
        raise CheckpointError(f"unknown normalisation {normalize!r} (known: {', '.join(NORMALISATIONS)})",
                              file=file, field="normalize_activations")

    # sae-lens training configs default to rescaling by decoder norms; inference configs do not.
    rescale_default = saved_arch in BATCHTOPK_TRAINING
    rescale = source.get("rescale_acts_by_decoder_norm", rescale_default)
    if not isinstance(rescale, bool):
        raise CheckpointError(f"expected true/false, got {rescale!r}", file=file, field="rescale_acts_by_decoder_norm")

    native = v6 and NATIVE_MARKER in metadata
    input_scale = metadata.get(NATIVE_SCALE_KEY) if native else None
    if input_scale is not None and (isinstance(input_scale, bool) or not isinstance(input_scale, (int, float))
                                    or not input_scale > 0):
        raise CheckpointError(f"expected a positive number, got {input_scale!r}", file=file,
                              field=f"metadata.{NATIVE_SCALE_KEY}")

    model_name = (metadata.get("model_name") if v6 else source.get("model_name"))
    hook_name = (metadata.get("hook_name") if v6 else source.get("hook_name"))
    return SaelensConfig(
        architecture=architecture, saved_architecture=saved_arch, d_in=d_in, d_sae=d_sae, k=k,
        apply_b_dec_to_input=apply_b_dec, normalize_activations=normalize, rescale_acts_by_decoder_norm=rescale,
        finetuning_scaling_factor=bool(source.get("finetuning_scaling_factor", False)),
        model_name=model_name if isinstance(model_name, str) else None,
        hook_name=hook_name if isinstance(hook_name, str) else None,
        training_architecture=training_arch if isinstance(training_arch, str) else None,
        version=str(version) if version is not None else None, native=native,
        input_scale=float(input_scale) if input_scale is not None else None, metadata=dict(metadata),
    )


def checkpoint_folder(path: Path) -> Path:
    return path.parent if path.is_file() else path


def _expected_shapes(c: SaelensConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"W_enc": (c.d_in, c.d_sae), "W_dec": (c.d_sae, c.d_in), "b_dec": (c.d_in,)}
    if c.architecture == "gated":
        shapes.update(b_gate=(c.d_sae,), b_mag=(c.d_sae,), r_mag=(c.d_sae,))
    else:
        shapes["b_enc"] = (c.d_sae,)
    return shapes


def _threshold_name(c: SaelensConfig, names: set[str]) -> str | None:
    """Which stored tensor holds the JumpReLU threshold (None: none applies, or batch-level top-k)."""
    if c.architecture not in ("jumprelu", "batchtopk"):
        return None
    for name in THRESHOLD_NAMES:
        if name in names:
            return name
    if c.architecture == "jumprelu":
        return "threshold"  # reported as missing
    return None


def check_header(c: SaelensConfig, header: SafetensorsHeader, weights_file: Path) -> list[str]:
    """The header-level check shared by inspect and load: every tensor the SAE needs is present with the
    shape cfg.json implies and a float dtype. Returns the names of the tensors to load (only those are)."""
    context = f" from {CFG_FILE} (d_in={c.d_in}, d_sae={c.d_sae})"
    names = []
    for name, shape in _expected_shapes(c).items():
        entry = header.tensors.get(name)
        check_weight_header(weights_file, name, header.shape(name), entry.dtype if entry else None, shape,
                            context=context)
        names.append(name)
    threshold = _threshold_name(c, set(header.tensors))
    if c.architecture == "jumprelu" and not ({"threshold", "log_threshold"} & set(header.tensors)):
        raise CheckpointError("missing tensor", file=weights_file, field="threshold")
    for name in ([threshold] if threshold else []) + [n for n in SCALING_NAMES if n in header.tensors]:
        entry = header.tensors.get(name)
        if entry is None:
            raise CheckpointError("missing tensor", file=weights_file, field=name)
        wanted = () if name == "topk_threshold" else (c.d_sae,)  # one scalar learned in BatchTopK training
        check_weight_header(weights_file, name, entry.shape, entry.dtype, wanted, context=context)
        names.append(name)
    return names


def inspect(path: Path, *, format_name: str = "saelens") -> CheckpointInfo:
    """Config + safetensors header only."""
    folder = checkpoint_folder(path)
    cfg_file, weights_file = folder / CFG_FILE, folder / WEIGHTS_FILE
    c = parse_config(read_json(cfg_file), cfg_file)
    header = read_safetensors_header(weights_file)
    check_header(c, header, weights_file)
    files = [CFG_FILE, WEIGHTS_FILE] + [f for f in OPTIONAL_FILES if (folder / f).is_file()]
    return CheckpointInfo(
        format=format_name, architecture=c.architecture, d_in=c.d_in, d_sae=c.d_sae, k=c.k,
        model_name=c.model_name, hook_name=c.hook_name, files=files, path=str(folder),
        dtype=stored_dtype_name(header.tensors["W_enc"].dtype), training_architecture=c.training_architecture,
        apply_b_dec_to_input=c.apply_b_dec_to_input,
        metadata={"normalize_activations": c.normalize_activations, "sae_lens_version": c.version},
    )


def load(path: Path, *, dtype: torch.dtype = torch.float32, hints: LoadHints | None = None,
         format_name: str = "saelens") -> SAE:
    """Load an SAELens (or native) folder into an :class:`SAE` (CPU, ``dtype``)."""
    hints = hints or LoadHints()
    folder = checkpoint_folder(path)
    cfg_file, weights_file = folder / CFG_FILE, folder / WEIGHTS_FILE
    c = parse_config(read_json(cfg_file), cfg_file)
    names = check_header(c, read_safetensors_header(weights_file), weights_file)
    raw, header = load_safetensors(weights_file, names)
    wf = weights_file

    tensors = {name: as_tensor(require(raw, name, wf), name, wf, dtype=dtype, shape=shape)
               for name, shape in _expected_shapes(c).items()}
    threshold_name = _threshold_name(c, set(raw))
    if threshold_name is not None:
        stored = require(raw, threshold_name, wf)
        if threshold_name == "topk_threshold":
            # one scalar learned during BatchTopK training, shared by every latent (sae-lens's
            # process_state_dict_for_saving_inference does the same broadcast)
            value = as_tensor(stored.double(), threshold_name, wf, dtype=torch.float64, shape=())
            tensors["threshold"] = torch.full((c.d_sae,), float(value), dtype=dtype)
        else:
            value = as_tensor(stored, threshold_name, wf, dtype=dtype, shape=(c.d_sae,))
            tensors["threshold"] = value.exp() if threshold_name == "log_threshold" else value

    scaling_name = next((n for n in SCALING_NAMES if n in raw), None)
    if scaling_name is not None:
        scale = as_tensor(raw[scaling_name], scaling_name, wf, dtype=dtype, shape=(c.d_sae,))
        if not torch.allclose(scale, torch.ones_like(scale)):
            if not c.finetuning_scaling_factor:
                raise CheckpointError(f"non-unit scaling factor present but {CFG_FILE} has finetuning_scaling_factor "
                                      "false", file=wf, field=scaling_name)
            # decode computes (z * s) @ W_dec, i.e. z @ (s[:, None] * W_dec)
            tensors["W_dec"] = tensors["W_dec"] * scale[:, None]

    rescale = c.rescale_acts_by_decoder_norm and c.architecture in ("topk", "batchtopk")
    if c.saved_architecture in BATCHTOPK_TRAINING and "threshold" in tensors and rescale:
        # as sae-lens's inference save: fold decoder norms so the threshold applies to plain pre-acts
        norms = tensors["W_dec"].norm(dim=-1)
        tensors["b_enc"] = tensors["b_enc"] * norms
        tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
        tensors["W_enc"] = tensors["W_enc"] * norms[None, :]
        rescale = False
    if c.architecture == "batchtopk" and "threshold" in tensors:
        rescale = False  # thresholded inference never rescales (it is a JumpReLU SAE in sae-lens)

    input_normalisation = NORMALISATIONS[c.normalize_activations]
    input_scale = 1.0
    if c.native and c.input_scale is not None:
        input_normalisation, input_scale = "scalar", c.input_scale
    elif c.normalize_activations == "expected_average_only_in":
        if hints.norm_scaling_factor is not None:
            s = float(hints.norm_scaling_factor)
            tensors["W_enc"] = tensors["W_enc"] * s
            tensors["W_dec"] = tensors["W_dec"] / s
            tensors["b_dec"] = tensors["b_dec"] / s
        else:
            logger.warning("%s: normalize_activations=expected_average_only_in with no norm_scaling_factor; "
                           "inputs are used unscaled (as sae-lens does when loading from disk)", cfg_file)
    elif c.normalize_activations == "covariance_whitening":
        logger.warning("%s: covariance_whitening is not folded into these weights; inputs are used as is "
                       "(as sae-lens does)", cfg_file)

    metadata = dict(c.metadata)
    metadata.update(normalize_activations=c.normalize_activations, stored_dtype=stored_dtype_name(
        header.tensors["W_enc"].dtype), saved_architecture=c.saved_architecture)
    if hints.norm_scaling_factor is not None and c.normalize_activations == "expected_average_only_in":
        metadata["folded_norm_scaling_factor"] = float(hints.norm_scaling_factor)
    config = SAEConfig(
        architecture=c.architecture, d_in=c.d_in, d_sae=c.d_sae, k=c.k, apply_b_dec_to_input=c.apply_b_dec_to_input,
        rescale_acts_by_decoder_norm=rescale, input_normalisation=input_normalisation, input_scale=input_scale,
        model_name=c.model_name, hook_name=c.hook_name, training_architecture=c.training_architecture,
        format=format_name, metadata=metadata,
    )
    return build_sae(config, tensors, file=wf)


def claims(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def is_native(folder: Path) -> bool:
    """A SAELens folder written by :func:`benchmark.sae.checkpoints.native.save_native`."""
    try:
        cfg = read_json(folder / CFG_FILE)
    except CheckpointError:
        return False
    metadata = cfg.get("metadata")
    return isinstance(metadata, dict) and NATIVE_MARKER in metadata
