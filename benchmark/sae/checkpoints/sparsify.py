"""EleutherAI sparsify checkpoints: one folder per hookpoint with ``cfg.json`` + ``sae.safetensors``.

A run trained with several ``init_seeds`` saves one folder per seed below the hookpoint's
(``<run>/<hookpoint>/seed<K>/``, sparsify's trainer naming); the hookpoint is then the parent folder's
name, the seed is recorded as ``init_seed`` and the run's ``config.json`` is two levels up.

Semantics follow sparsify (sparsify/sparse_coder.py, fused_encoder.py, config.py): encode subtracts
``b_dec`` (always, for autoencoders), applies ``encoder`` (``nn.Linear``: weight ``[num_latents, d_in]``),
ReLU, then keeps the top ``k``; decode is ``z @ W_dec + b_dec`` with ``W_dec [num_latents, d_in]``.
``num_latents`` wins over ``expansion_factor * d_in``. Weights are often bf16; they are upcast exactly.
Transcoders, skip connections and the ``groupmax`` activation have no equivalent in the SAE module
and are refused with a clear error.
"""

from __future__ import annotations

import re
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
    read_json,
    require,
    stored_dtype_name,
    transformer_lens_hook,
)
from .safetensors_header import SafetensorsHeader, load_safetensors, read_safetensors_header

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
RUN_CONFIG = "config.json"  # run-level TrainConfig at the repo root (holds the model name)
TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


#: sparsify's name for one seed's folder when a run trains several (``f"{hook}/seed{seed}"``).
SEED_FOLDER = re.compile(r"\Aseed(\d{1,18})\Z")


def checkpoint_folder(path: Path) -> Path:
    return path.parent if path.is_file() else path


def hookpoint_and_seed(folder: Path) -> tuple[str, int | None, Path]:
    """``(hookpoint, init seed or None, run folder)`` of a checkpoint folder: ``<run>/<hookpoint>`` or,
    for multi-seed runs, ``<run>/<hookpoint>/seed<K>``."""
    match = SEED_FOLDER.fullmatch(folder.name)
    if match is not None:
        return folder.parent.name, int(match.group(1)), folder.parent.parent
    return folder.name, None, folder.parent


def _run_model(folder: Path) -> str | None:
    _, _, run = hookpoint_and_seed(folder)
    for candidate in (run / RUN_CONFIG, folder / RUN_CONFIG):
        if candidate.is_file():
            try:
                model = read_json(candidate).get("model")
            except CheckpointError:
                return None
            return model if isinstance(model, str) else None
    return None


def _parse(folder: Path, header: SafetensorsHeader) -> dict[str, Any]:
    cfg_file, weights_file = folder / CFG_FILE, folder / WEIGHTS_FILE
    cfg = read_json(cfg_file)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise CheckpointError(f"activation {activation!r} is not supported (only topk)", file=cfg_file,
                              field="activation")
    if cfg.get("transcode"):
        raise CheckpointError("transcoders do not reconstruct their input; not supported", file=cfg_file,
                              field="transcode")
    if cfg.get("skip_connection") or "W_skip" in header.tensors:
        raise CheckpointError("skip connections are not supported", file=cfg_file, field="skip_connection")
    k = config_int(cfg, "k", cfg_file)
    enc_shape = header.shape("encoder.weight")
    if enc_shape is None or len(enc_shape) != 2:
        raise CheckpointError(f"missing or not a matrix (shape {enc_shape})", file=weights_file, field="encoder.weight")
    d_in = config_int(cfg, "d_in", cfg_file, required=False) or enc_shape[1]
    num_latents = config_int(cfg, "num_latents", cfg_file, required=False)
    if num_latents is None:
        factor = config_int(cfg, "expansion_factor", cfg_file, required=False)
        if factor is None:
            raise CheckpointError("neither num_latents nor expansion_factor is set", file=cfg_file, field="num_latents")
        num_latents = factor * d_in
    expected = {"encoder.weight": (num_latents, d_in), "encoder.bias": (num_latents,),
                "W_dec": (num_latents, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():  # the header check inspect and load share
        entry = header.tensors.get(name)
        check_weight_header(weights_file, name, header.shape(name), entry.dtype if entry else None, shape,
                            context=f" from {CFG_FILE} (d_in={d_in}, num_latents={num_latents})")
    if k > num_latents:
        raise CheckpointError(f"k={k} exceeds num_latents={num_latents}", file=cfg_file, field="k")
    hookpoint, seed, _ = hookpoint_and_seed(folder)
    return {"cfg": cfg, "k": k, "d_in": d_in, "d_sae": num_latents, "hookpoint": hookpoint, "init_seed": seed,
            "hook_name": transformer_lens_hook(hookpoint), "model_name": _run_model(folder),
            "dtype": stored_dtype_name(header.tensors["encoder.weight"].dtype)}


def inspect(path: Path) -> CheckpointInfo:
    folder = checkpoint_folder(path)
    p = _parse(folder, read_safetensors_header(folder / WEIGHTS_FILE))
    files = [CFG_FILE, WEIGHTS_FILE]
    return CheckpointInfo(format="sparsify", architecture="topk", d_in=p["d_in"], d_sae=p["d_sae"], k=p["k"],
                          model_name=p["model_name"], hook_name=p["hook_name"], files=files, path=str(folder),
                          dtype=p["dtype"], apply_b_dec_to_input=True,
                          metadata={"hf_hookpoint": p["hookpoint"], "init_seed": p["init_seed"],
                                    "run_config": str(hookpoint_and_seed(folder)[2] / RUN_CONFIG) if p["model_name"] else None})


def load(path: Path, *, dtype: torch.dtype = torch.float32, hints: LoadHints | None = None) -> SAE:
    folder = checkpoint_folder(path)
    wf = folder / WEIGHTS_FILE
    p = _parse(folder, read_safetensors_header(wf))
    raw, header = load_safetensors(wf, list(TENSORS))
    d_in, d_sae = p["d_in"], p["d_sae"]
    encoder = as_tensor(require(raw, "encoder.weight", wf), "encoder.weight", wf, dtype=dtype, shape=(d_sae, d_in))
    tensors = {
        "W_enc": encoder.T.contiguous(),
        "b_enc": as_tensor(require(raw, "encoder.bias", wf), "encoder.bias", wf, dtype=dtype, shape=(d_sae,)),
        "W_dec": as_tensor(require(raw, "W_dec", wf), "W_dec", wf, dtype=dtype, shape=(d_sae, d_in)),
        "b_dec": as_tensor(require(raw, "b_dec", wf), "b_dec", wf, dtype=dtype, shape=(d_in,)),
    }
    metadata = {k: v for k, v in p["cfg"].items() if isinstance(v, (str, int, float, bool)) or v is None}
    metadata.update(hf_hookpoint=p["hookpoint"], stored_dtype=p["dtype"], init_seed=p["init_seed"])
    config = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=p["k"], apply_b_dec_to_input=True,
                       model_name=p["model_name"], hook_name=p["hook_name"], format="sparsify", metadata=metadata)
    return build_sae(config, tensors, file=wf)


def claims(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
