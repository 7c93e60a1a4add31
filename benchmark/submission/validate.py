"""``canonbench validate``: check manifests and report every problem, one line each.

Without ``--check-files`` nothing is read but the manifests: schema, TOML, names (unique, and matching
``submissions/<org>/<name>.toml``), pinned revisions, safe relative paths, distinct seeds, distinct
checkpoints and leftover ``TODO`` markers. With ``--check-files`` every checkpoint is also resolved
(fetched into the Hub cache if needed) and its configs and safetensors headers are read (no weights)
to check that shapes and architecture agree with the manifest, and a declared activations file is
checked for its shape.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from benchmark.errors import CanonBenchError, CheckpointError, ManifestError
from benchmark.submission.manifest import (
    SUBMISSIONS_FOLDER,
    LoadedManifest,
    discover_manifests,
    load_manifest,
    read_manifest_bytes,
    schema_problems,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

TODO_MARK = "TODO"

def _todo_fields(data: Any, prefix: str = "") -> Iterator[str]:
    """Fields whose value still starts with ``TODO`` (left by ``canonbench new-submission``)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _todo_fields(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _todo_fields(value, f"{prefix}[{index}]")
    elif isinstance(data, str) and data.lstrip().upper().startswith(TODO_MARK):
        yield prefix


def manifest_problems(path: Path) -> tuple[LoadedManifest | None, list[CanonBenchError]]:
    """Load one manifest and list ALL its problems (the loader stops at the first), plus fields
    still marked ``TODO``. The manifest is returned only when it has no problem."""
    try:
        manifest = load_manifest(path)
        problems: list[CanonBenchError] = []
    except ManifestError as first:
        manifest, problems = None, [first]
    text = _read_small_text(path)
    if text is None:
        return manifest, problems
    if manifest is None:
        problems = list(schema_problems(text, path)) or problems
    problems = [_with_toml_key(p, text) for p in problems]
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        return manifest, problems
    todo = list(_todo_fields(data))
    if not todo:
        return manifest, problems
    marked = [ManifestError("still marked TODO; fill it in", file=path, field=name) for name in todo]
    return None, marked + [p for p in problems if p.field not in todo]


def _with_toml_key(problem: CanonBenchError, text: str) -> CanonBenchError:
    """A TOML syntax error names a line; name the key written on that line too."""
    match = re.search(r"at line (\d+)", problem.detail)
    if problem.field is not None or not match or "not valid TOML" not in problem.detail:
        return problem
    number = int(match.group(1))
    lines = text.removeprefix("\ufeff").splitlines()
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    key = re.match(r"^\s*\[*\s*([A-Za-z0-9_.\-\"]+)", line)
    field = f"{key.group(1)} (line {number})" if key else f"line {number}"
    return ManifestError(problem.detail, file=problem.file, field=field)


def _read_small_text(path: Path) -> str | None:
    """The manifest's text through the one manifest reader (None when it refused the file: the
    loader has already reported why)."""
    try:
        return read_manifest_bytes(path).decode("utf-8")
    except (ManifestError, UnicodeDecodeError):
        return None


def _name_matches_location(manifest: LoadedManifest) -> CanonBenchError | None:
    """Under a ``submissions`` folder a manifest must sit at ``submissions/<org>/<name>.toml``."""
    resolved = manifest.path.resolve()
    parents = [p for p in resolved.parents if p.name == SUBMISSIONS_FOLDER]
    if not parents:
        return None
    relative = resolved.relative_to(parents[0])
    expected = "/".join(relative.with_suffix("").parts)
    if len(relative.parts) != 2 or manifest.name != expected:
        return ManifestError(
            f"{manifest.name!r} must match the file's place: submissions/<org>/<name>.toml "
            f"(this file says {expected!r})", file=manifest.path, field="name",
        )
    return None


def _duplicate_checkpoints(manifest: LoadedManifest) -> list[CanonBenchError]:
    """Two seeds pointing at the same checkpoint would score as perfectly consistent."""
    sub = manifest.submission
    if sub.kind != "checkpoints":
        return []
    seen: dict[tuple, int] = {}
    problems: list[CanonBenchError] = []
    for index, spec in enumerate(sub.checkpoints):
        if spec.local is not None:
            try:
                key = ("local", str(manifest.resolve_local(spec.local, field=f"checkpoints[{index}].local",
                                                           outside=spec.local_outside)))
            except ManifestError as exc:
                problems.append(exc)
                continue
        else:
            key = ("hub", spec.repo, spec.revision, spec.path.strip("/"))
        if key in seen:
            problems.append(ManifestError(
                f"same checkpoint as checkpoints[{seen[key]}]; each seed needs its own checkpoint",
                file=manifest.path, field=f"checkpoints[{index}]",
            ))
        else:
            seen[key] = index
    return problems


def _check_model_files(manifest: LoadedManifest) -> list[CanonBenchError]:
    model = getattr(manifest.submission, "model", None)
    if model is None or model.local is None:
        return []
    try:
        folder = manifest.resolve_local(model.local, field="model.local")
    except ManifestError as exc:
        return [exc]
    if not folder.exists():
        return [ManifestError(f"local model folder {model.local!r} does not exist", file=manifest.path, field="model.local")]
    return []


def _check_activation_file(manifest: LoadedManifest, *, cache_dir) -> list[CanonBenchError]:
    """A declared ``[activations]`` file exists, stays where the containment rule allows, and holds a
    ``[n_tokens, d_in]`` float array of the declared width (its header only: .npy and safetensors
    data are memory-mapped, not read)."""
    spec = getattr(manifest.submission, "activations", None)
    if spec is None:
        return []
    try:
        from benchmark.data.activation_files import file_activations_for_manifest

        acts = file_activations_for_manifest(manifest, cache_dir=cache_dir).activations()
    except CanonBenchError as exc:
        return [exc]
    d_in = manifest.submission.sae.d_in
    if d_in is not None and int(acts.shape[1]) != d_in:
        return [ManifestError(f"{spec.file} has width {int(acts.shape[1])} but the manifest says d_in = {d_in}",
                              file=manifest.path, field="activations.file")]
    return []


def _check_presets(manifest: LoadedManifest) -> list[CanonBenchError]:
    """A synthetic recipe must name presets that exist (at the version given, if any)."""
    sub = manifest.submission
    if sub.kind != "recipe" or sub.recipe.trains_on != "synthetic":
        return []
    from benchmark.data.organisms import get_preset

    problems: list[CanonBenchError] = []
    for index, preset in enumerate(sub.recipe.presets):
        try:
            get_preset(preset, file=manifest.path, field=f"recipe.presets[{index}]")
        except CanonBenchError as exc:
            problems.append(exc)
    return problems


def _check_checkpoint_files(manifest: LoadedManifest, *, cache_dir, hub_cache) -> list[CanonBenchError]:
    """Resolve every checkpoint and compare its header-level facts with the manifest."""
    from benchmark.submission.sources import resolve_checkpoint

    sub = manifest.submission
    sae = sub.sae
    fmt = None if sae.format == "auto" else sae.format
    problems: list[CanonBenchError] = []
    digests: dict[tuple, int] = {}
    for index, spec in enumerate(sub.checkpoints):
        entry = f"checkpoints[{index}]"
        try:
            resolved = resolve_checkpoint(manifest, spec, cache_dir=cache_dir, hub_cache=hub_cache, check_header=False)
        except CanonBenchError as exc:
            problems.append(exc)
            continue
        where = resolved.source if resolved.local else f"{resolved.repo}@{resolved.resolved_revision[:12]}/{resolved.path_in_repo}"
        fingerprint = tuple(sorted((n, f["sha256"]) for n, f in resolved.files.items()))
        if fingerprint in digests:
            problems.append(ManifestError(
                f"{where} has the same files as checkpoints[{digests[fingerprint]}]; each seed needs its own checkpoint",
                file=manifest.path, field=entry,
            ))
        digests.setdefault(fingerprint, index)
        try:
            from benchmark.sae.checkpoints import inspect_checkpoint

            info = inspect_checkpoint(resolved.path, fmt)  # the header check load_sae runs first, too
        except CanonBenchError as exc:
            problems.append(CheckpointError(f"{where}: {exc}", file=manifest.path, field=entry))
            continue
        except ImportError as exc:
            problems.append(CheckpointError(f"cannot inspect checkpoints ({exc})", file=manifest.path, field=entry))
            continue
        except Exception as exc:  # a malformed file must become a report line, not a crash
            problems.append(CheckpointError(f"{where}: cannot read checkpoint ({type(exc).__name__}: {exc})",
                                            file=manifest.path, field=entry))
            continue
        problems.extend(_compare(info, manifest, entry, where, width=sub.checkpoint_width(spec)))
    return problems


def _compare(info: Any, manifest: LoadedManifest, entry: str, where: str, *, width: int | None = None) -> list[CanonBenchError]:
    from benchmark.submission.agreement import disagreements

    return disagreements(info, manifest, entry=entry, where=where, width=width)


def validate_paths(
    paths: list[Path | str],
    check_files: bool = False,
    cache_dir: Path | str | None = None,
    *,
    hub_cache: Path | str | None = None,
) -> tuple[list[CanonBenchError], int]:
    """Check every manifest under ``paths``; return ``(problems, number of manifests checked)``.

    Never stops at the first problem. ``cache_dir`` is CanonBench's cache (file digests);
    ``hub_cache`` the Hugging Face cache (default: the standard one).
    """
    files, found_problems = discover_manifests(paths)
    problems: list[CanonBenchError] = list(found_problems)

    loaded: list[LoadedManifest] = []
    for path in files:
        manifest, found = manifest_problems(path)
        problems.extend(found)
        if manifest is not None:
            loaded.append(manifest)

    names: dict[str, Path] = {}
    for manifest in loaded:
        if manifest.name in names:
            problems.append(ManifestError(f"duplicate submission name {manifest.name!r} (also in {names[manifest.name]})",
                                          file=manifest.path, field="name"))
        else:
            names[manifest.name] = manifest.path
        location = _name_matches_location(manifest)
        if location is not None:
            problems.append(location)
        problems.extend(_duplicate_checkpoints(manifest))
        problems.extend(_check_presets(manifest))
        if check_files:
            problems.extend(_check_model_files(manifest))
            if manifest.submission.kind == "checkpoints":
                problems.extend(_check_checkpoint_files(manifest, cache_dir=cache_dir, hub_cache=hub_cache))
                problems.extend(_check_activation_file(manifest, cache_dir=cache_dir))
    distinct = list({str(p): p for p in problems}.values())  # a problem found twice is reported once
    return distinct, len(files)
