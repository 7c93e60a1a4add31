"""What a submission's numbers are computed *from*, as a hashable record (the inputs fingerprint).

A stored unit is reused only when its run spec (:mod:`benchmark.spec`) and its inputs are unchanged.
The inputs of a submission are:

* its checkpoints: a Hub checkpoint is named by repo, pinned commit and path (a commit is immutable,
  so nothing needs downloading to know it); a local checkpoint by the size and sha256 of each of its
  files (memoised per path, size and mtime, so unchanged files are not re-read);
* its recipe (every field but the seed list, which is in the record per seed) and the trainer version;
* its model: name, the pin (Hub commit, package name and version, or the local folder's content
  fingerprint) and hook, plus the activation settings the manifest fixes (tokens, context size);
* the activations file an ``[activations]`` table declares: its size and sha256, with the model, hook
  and corpus hash it declares.

Editing a local checkpoint file, re-pinning a Hub commit, changing a recipe or upgrading the model
package gives another fingerprint, so the runner recomputes instead of serving a stale score.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from benchmark.errors import SourceError
from benchmark.spec import short_hash

#: Bumped when the form of the fingerprint record changes.
IDENTITY_VERSION = 1


def checkpoint_identity(manifest, *, cache_dir=None) -> list[dict[str, Any]]:
    """One record per checkpoint of a ``kind = "checkpoints"`` manifest, in (seed, width) order. A
    ladder checkpoint's record holds its ``width`` (records of primary-width checkpoints have none, so
    manifests without a ladder keep their fingerprint)."""
    from benchmark.submission.sources import checkpoint_files, describe_files

    sub = manifest.submission
    out = []
    entries = list(enumerate(sub.checkpoints))  # index: the entry's place in the manifest
    for index, spec in sorted(entries, key=lambda entry: (entry[1].seed, sub.checkpoint_width(entry[1]))):
        rung = {} if spec.width is None else {"width": spec.width}
        if spec.local is None:
            out.append({"seed": spec.seed, **rung, "repo": spec.repo, "revision": spec.revision, "path": spec.path})
            continue
        target = manifest.resolve_local(spec.local, field=f"checkpoints[{index}].local", outside=spec.local_outside)
        if not target.exists() or not checkpoint_files(target):
            raise SourceError(f"no checkpoint files at {spec.local}", file=manifest.path, field=f"checkpoints[{index}].local")
        files = describe_files(target, cache_dir=cache_dir)
        out.append({"seed": spec.seed, **rung, "local": spec.local,
                    "files": {name: info["sha256"] for name, info in sorted(files.items())}})
    return out


def model_identity(manifest) -> dict[str, Any] | None:
    """The model pin of a manifest (None when it names no model)."""
    model = getattr(manifest.submission, "model", None)
    if model is None:
        return None
    record: dict[str, Any] = {"name": model.name, "hook": model.hook}
    if model.revision is not None:
        record["revision"] = model.revision
    elif model.package is not None:
        try:
            record["package"] = f"{model.package}=={metadata.version(model.package)}"
        except metadata.PackageNotFoundError:
            record["package"] = f"{model.package} (not installed)"
    elif model.local is not None:
        from benchmark.data.models import folder_fingerprint

        folder = manifest.resolve_local(model.local)
        record["local"] = model.local
        record["fingerprint"] = folder_fingerprint(folder) if folder.is_dir() else "missing"
    return record


def activations_identity(manifest, *, cache_dir=None) -> dict[str, Any] | None:
    """The ``[activations]`` file a manifest declares (None when it declares none): the path as
    written, its size and sha256, and the model, hook and corpus hash it declares."""
    spec = getattr(manifest.submission, "activations", None)
    if spec is None:
        return None
    from benchmark.submission.sources import _load_memo, _save_memo, file_digest

    path = manifest.resolve_local(spec.file, field="activations.file", outside=spec.local_outside)
    if not path.is_file():
        raise SourceError(f"activations file {spec.file!r} does not exist", file=manifest.path, field="activations.file")
    memo = _load_memo(cache_dir)
    before = len(memo)
    digest = file_digest(path, memo)
    if len(memo) != before:
        _save_memo(cache_dir, memo)
    return {"file": spec.file, "bytes": digest["bytes"], "sha256": digest["sha256"], "model": spec.model,
            "hook": spec.hook, "corpus_sha256": spec.corpus_sha256}


def inputs_record(manifest, *, cache_dir=None) -> dict[str, Any]:
    """The full inputs record of a manifest (see the module docstring)."""
    sub = manifest.submission
    record: dict[str, Any] = {"identity_version": IDENTITY_VERSION, "kind": sub.kind, "model": model_identity(manifest)}
    if sub.kind == "checkpoints":
        record["checkpoints"] = checkpoint_identity(manifest, cache_dir=cache_dir)
        record["sae"] = sub.sae.model_dump(mode="json")
        if sub.activations is not None:  # only then: fingerprints of submissions without one are unchanged
            record["activations"] = activations_identity(manifest, cache_dir=cache_dir)
    else:
        from benchmark.training import TRAINER_VERSION

        # a recipe without a width ladder keeps the fingerprint it had before ladders existed
        record["recipe"] = sub.recipe.model_dump(mode="json", exclude={"widths"} if sub.recipe.widths is None else None)
        record["trainer_version"] = TRAINER_VERSION
    return record


def inputs_hash(manifest, *, cache_dir=None) -> tuple[str, dict[str, Any]]:
    """``(hash, record)``: 16 hex characters of sha256 over :func:`inputs_record`."""
    record = inputs_record(manifest, cache_dir=cache_dir)
    return short_hash(record), record


__all__ = ["IDENTITY_VERSION", "activations_identity", "checkpoint_identity", "inputs_hash", "inputs_record", "model_identity"]
