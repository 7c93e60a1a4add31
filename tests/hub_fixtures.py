"""Build real Hugging Face Hub cache layouts on disk for offline tests.

The layout is the one ``huggingface_hub`` writes and reads::

    <hub_cache>/models--<owner>--<name>/
        refs/<branch>                 # the commit sha, no newline
        blobs/<etag>                  # file contents; LFS files are named by sha256, others by git sha1
        snapshots/<sha>/<path>        # relative symlinks into ../blobs

Nothing of huggingface_hub is mocked: tests point it at this folder with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save as save_safetensors

LFS_SUFFIXES = (".safetensors", ".npz", ".pt", ".bin")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's bytes (the etag the Hub gives non-LFS files)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def fake_commit_sha(repo: str, files: dict[str, bytes], salt: str = "") -> str:
    """A deterministic 40-hex 'commit' for a repo state."""
    hasher = hashlib.sha1(f"{repo}|{salt}".encode())
    for name in sorted(files):
        hasher.update(name.encode() + b"\x00" + hashlib.sha256(files[name]).digest())
    return hasher.hexdigest()


def repo_folder(hub_cache: Path, repo: str) -> Path:
    return Path(hub_cache) / ("models--" + repo.replace("/", "--"))


def add_commit(
    hub_cache: Path | str,
    repo: str,
    files: dict[str, bytes],
    *,
    sha: str | None = None,
    branch: str | None = "main",
    salt: str = "",
) -> str:
    """Write one commit of ``repo`` (``{path_in_repo: bytes}``) into the cache; return its sha.

    ``branch`` (default ``main``) is pointed at the new commit; ``None`` leaves refs alone.
    """
    hub_cache = Path(hub_cache)
    sha = sha or fake_commit_sha(repo, files, salt)
    root = repo_folder(hub_cache, repo)
    blobs = root / "blobs"
    snapshot = root / "snapshots" / sha
    blobs.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_blob_sha1(data)
        blob = blobs / etag
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    snapshot.mkdir(parents=True, exist_ok=True)
    if branch is not None:
        ref = root / "refs" / branch
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(sha)
    return sha


def saelens_checkpoint(
    d_in: int,
    d_sae: int,
    *,
    architecture: str = "standard",
    k: int | None = None,
    model_name: str = "gpt2",
    hook_name: str = "blocks.0.hook_resid_pre",
    seed: int = 0,
    dtype: str = "float32",
) -> dict[str, bytes]:
    """A small SAELens-v6 checkpoint folder: ``cfg.json`` + ``sae_weights.safetensors``."""
    rng = np.random.default_rng(seed)
    tensors = {
        "W_enc": rng.standard_normal((d_in, d_sae)).astype(np.float32),
        "W_dec": rng.standard_normal((d_sae, d_in)).astype(np.float32),
        "b_enc": np.zeros(d_sae, dtype=np.float32),
        "b_dec": np.zeros(d_in, dtype=np.float32),
    }
    if architecture == "jumprelu":
        tensors["threshold"] = np.full(d_sae, 0.1, dtype=np.float32)
    cfg: dict = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": architecture,
        "metadata": {
            "model_name": model_name,
            "hook_name": hook_name,
            "context_size": 128,
            "prepend_bos": True,
            "sae_lens_version": "6.5.0",
        },
    }
    if k is not None:
        cfg["k"] = k
        cfg["rescale_acts_by_decoder_norm"] = False
    return {
        "cfg.json": json.dumps(cfg, indent=2).encode(),
        "sae_weights.safetensors": save_safetensors(tensors),
    }


def with_prefix(prefix: str, files: dict[str, bytes]) -> dict[str, bytes]:
    """Place a checkpoint's files under ``prefix/`` inside a repo."""
    return {f"{prefix}/{name}" if prefix else name: data for name, data in files.items()}


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` into a plain local folder."""
    for name, data in files.items():
        target = Path(folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return Path(folder)
