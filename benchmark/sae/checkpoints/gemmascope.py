"""Gemma Scope checkpoints: ``params.npz`` (Gemma 2) and ``params.safetensors`` (Gemma Scope 2, Gemma 3).

JumpReLU with no b_dec subtraction (Gemma Scope tutorial; sae-lens gemma_2/gemma_3 loaders):
``pre = x @ W_enc + b_enc``, ``z = relu(pre) * (pre > threshold)``, ``x_hat = z @ W_dec + b_dec``.
There is no config for Gemma Scope 1: layer, width and hook come from the path
(``layer_{L}/width_{16k}/average_l0_{N}``) and the repo name (``-res`` / ``-mlp`` / ``-att``), read
from the Hub cache folder name (``models--google--gemma-scope-2b-pt-res``) or the sources hint.
Gemma Scope 2 folders are ``{resid_post,attn_out,mlp_out}[_all]/layer_{L}_width_{W}_l0_{size}``,
optionally with a ``config.json``. Transcoders (and affine skip connections) are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import CheckpointError
from benchmark.sae.model import SAE, SAEConfig

from .archive import BoundedZip
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
from .npz_header import array_names, load_npz, read_npz_headers
from .safetensors_header import load_safetensors, read_safetensors_header

NPZ_FILE = "params.npz"
SAFETENSORS_FILE = "params.safetensors"
GS2_CONFIG = "config.json"
TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")

_WIDTH = re.compile(r"width_(\d+)([km]?)(?=[_/]|$)")
_LAYER = re.compile(r"layer_(\d+)")
_HUB_FOLDER = re.compile(r"^models--(.+?)--(.+)$")
# sae-lens's table: which Gemma 2 model a Gemma Scope repo belongs to
_GEMMA2_MODELS = (("2b-it", "gemma-2-2b-it"), ("9b-it", "gemma-2-9b-it"), ("27b-it", "gemma-2-27b-it"),
                  ("2b", "gemma-2-2b"), ("9b", "gemma-2-9b"), ("27b", "gemma-2-27b"))


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in (NPZ_FILE, SAFETENSORS_FILE):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"no {NPZ_FILE} or {SAFETENSORS_FILE}", file=path, field="params")


def _canonical(name: str) -> str:
    """Gemma Scope 2 spells the matrices ``w_enc``/``w_dec``; sae-lens maps ``w_*`` to ``W_*``."""
    return "W_" + name[2:] if name.startswith("w_") else name


def repo_name(path: Path, hints: LoadHints) -> str | None:
    """``owner/name`` of the Hub repo the file came from, if the path or the hint tells."""
    if hints.repo:
        return hints.repo
    for part in path.resolve().parts:
        if (match := _HUB_FOLDER.match(part)) is not None:
            return f"{match.group(1)}/{match.group(2)}"
    for part in path.resolve().parts:
        if part.startswith("gemma-scope"):
            return part
    return None


def _width(text: str) -> int | None:
    match = _WIDTH.search(text)
    if match is None:
        return None
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2)]


def describe_path(path: Path, repo: str | None) -> dict[str, Any]:
    """Layer, width, hook and model from the folder names and repo name (sae-lens's conventions)."""
    folder = path.parent if path.suffix else path
    rel = "/".join(folder.parts[-4:])
    repo_tail = (repo or "").split("/")[-1]
    info: dict[str, Any] = {"layer": None, "width": None, "hook_name": None, "model_name": None, "generation": 1}
    layers = _LAYER.findall(rel)
    info["layer"] = int(layers[-1]) if layers else None
    info["width"] = _width(folder.name) or _width(rel)
    if match := re.search(r"average_l0_(\d+)", rel):
        info["average_l0"] = int(match.group(1))
    if match := re.search(r"_l0_([a-z0-9]+)", folder.name):
        info["l0"] = match.group(1)
    if "transcoder" in rel or "clt" in rel.split("/") or "transcoder" in repo_tail:
        raise CheckpointError("Gemma Scope transcoders do not reconstruct their input; not supported",
                              file=folder, field="path")
    layer = info["layer"]
    embedding = "embedding" in rel
    if repo_tail.startswith("gemma-scope-2-") or re.search(r"(resid_post|attn_out|mlp_out)(_all)?/layer_", rel):
        info["generation"] = 2
        site = re.search(r"(resid_post|attn_out|mlp_out)", rel)
        if site and layer is not None:
            info["hook_name"] = {"resid_post": f"blocks.{layer}.hook_resid_post",
                                 "attn_out": f"blocks.{layer}.attn.hook_z",
                                 "mlp_out": f"blocks.{layer}.hook_mlp_out"}[site.group(1)]
        if repo_tail.startswith("gemma-scope-2-"):
            info["model_name"] = "google/" + repo_tail.replace("gemma-scope-2", "gemma-3")
    else:
        if embedding:
            info["hook_name"] = "hook_embed"
        elif layer is not None:
            if repo_tail.endswith("-res") or "-res-" in repo_tail:
                info["hook_name"] = f"blocks.{layer}.hook_resid_post"
            elif repo_tail.endswith("-mlp") or "-mlp-" in repo_tail:
                info["hook_name"] = f"blocks.{layer}.hook_mlp_out"
            elif repo_tail.endswith("-att") or "-att-" in repo_tail:
                info["hook_name"] = f"blocks.{layer}.attn.hook_z"
        size = next((model for key, model in _GEMMA2_MODELS if key in repo_tail), None)
        info["model_name"] = size
    return info


STORED_NAMES = (*TENSORS, "w_enc", "w_dec")  # Gemma Scope 2 spells the matrices in lower case


def _shapes_from(headers: dict[str, tuple[tuple[int, ...], str]], present: set[str], file: Path) -> tuple[int, int]:
    """d_in and d_sae from the headers of the tensors to load: shapes and float dtypes checked
    (:func:`check_weight_header`) before any data is read, in inspect and load alike."""
    if "W_enc" not in headers:
        raise CheckpointError("missing tensor", file=file, field="W_enc")
    shape = headers["W_enc"][0]
    if len(shape) != 2:
        raise CheckpointError(f"shape {shape} is not a matrix", file=file, field="W_enc")
    d_in, d_sae = shape
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
                "threshold": (d_sae,)}
    for name, want in expected.items():
        actual, dtype = headers.get(name, (None, None))
        if actual is not None and actual != want and name == "W_dec" and len(actual) == 2 and actual[0] == d_sae:
            raise CheckpointError(f"W_dec maps to {actual[1]} outputs, not d_in={d_in}: a transcoder, "
                                  "not supported", file=file, field=name)
        check_weight_header(file, name, actual, dtype, want, context=f" (from W_enc {shape})")
    if {"affine_skip_connection", "w_skip", "W_skip"} & present:
        raise CheckpointError("affine skip connections are not supported", file=file, field="affine_skip_connection")
    return d_in, d_sae


def _headers(file: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], set[str], str]:
    """Headers of the tensors the SAE needs (only those are read), every name present, the stored dtype."""
    if file.suffix == ".npz":
        with BoundedZip(file, field="archive") as archive:
            present = set(array_names(archive))
        npz = {_canonical(n): h for n, h in read_npz_headers(file, [n for n in STORED_NAMES if n in present]).items()}
        shapes = {n: (h.shape, stored_dtype_name(h.dtype)) for n, h in npz.items()}
    else:
        header = read_safetensors_header(file)
        present = set(header.tensors)
        shapes = {_canonical(n): (t.shape, stored_dtype_name(t.dtype)) for n, t in header.tensors.items()
                  if n in STORED_NAMES}
    enc = shapes.get("W_enc")
    return shapes, {_canonical(n) for n in present} | present, enc[1] if enc else "unknown"


def _describe(file: Path, hints: LoadHints) -> tuple[dict[str, Any], int, int, str]:
    shapes, present, dtype = _headers(file)
    d_in, d_sae = _shapes_from(shapes, present, file)
    info = describe_path(file, repo_name(file, hints))
    gs2_config = file.parent / GS2_CONFIG
    if gs2_config.is_file():
        cfg = read_json(gs2_config)
        arch = cfg.get("architecture", "jump_relu")
        if arch not in ("jump_relu", "jumprelu"):
            raise CheckpointError(f"unknown architecture {arch!r} (expected jump_relu)", file=gs2_config,
                                  field="architecture")
        if isinstance(cfg.get("model_name"), str):
            # sae-lens's normalisation of Gemma Scope 2 model names to Hub repo ids
            name = cfg["model_name"]
            name = (name if "/" in name else "google/" + name).replace("-v3", "-3")
            info["model_name"] = name.replace("-pt", "") if "270m" in name else name
        if isinstance(cfg.get("hf_hook_point_in"), str):
            info["hf_hook_point"] = cfg["hf_hook_point_in"]
    if info["width"] is not None and info["width"] != d_sae:
        raise CheckpointError(f"the path says width {info['width']} but W_enc has {d_sae} latents", file=file,
                              field="width")
    return info, d_in, d_sae, dtype


def inspect(path: Path, *, hints: LoadHints | None = None) -> CheckpointInfo:
    file = _weights_file(path)
    info, d_in, d_sae, dtype = _describe(file, hints or LoadHints())
    files = [file.name] + ([GS2_CONFIG] if (file.parent / GS2_CONFIG).is_file() else [])
    return CheckpointInfo(format="gemmascope", architecture="jumprelu", d_in=d_in, d_sae=d_sae, k=None,
                          model_name=info["model_name"], hook_name=info["hook_name"], files=files,
                          path=str(file.parent), dtype=dtype, apply_b_dec_to_input=False, metadata=info)


def load(path: Path, *, dtype: torch.dtype = torch.float32, hints: LoadHints | None = None) -> SAE:
    file = _weights_file(path)
    info, d_in, d_sae, stored = _describe(file, hints or LoadHints())
    if file.suffix == ".npz":
        arrays, _ = load_npz(file, list(STORED_NAMES))
        raw: dict[str, Any] = {_canonical(n): a for n, a in arrays.items()}
    else:
        tensors, _ = load_safetensors(file, list(STORED_NAMES))
        raw = {_canonical(n): t for n, t in tensors.items()}
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
              "threshold": (d_sae,)}
    tensors = {name: as_tensor(require(raw, name, file), name, file, dtype=dtype, shape=shapes[name])
               for name in TENSORS}
    metadata = dict(info, stored_dtype=stored, generation=info["generation"])
    config = SAEConfig(architecture="jumprelu", d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False,
                       model_name=info["model_name"], hook_name=info["hook_name"], format="gemmascope",
                       metadata=metadata)
    return build_sae(config, tensors, file=file)


def claims(folder: Path) -> bool:
    return (folder / NPZ_FILE).is_file() or (folder / SAFETENSORS_FILE).is_file()
