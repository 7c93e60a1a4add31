"""``canonbench new-submission``: write a checkpoints manifest from published checkpoints.

Each source (one per seed) is resolved to a commit sha, its files are fetched (configs and weights of
that folder only), its format is detected and its config read for d_in, d_sae, k, model and hook.
What cannot be known from the files (title, authors, license, the base model's commit) is written as
a ``TODO`` marker that ``canonbench validate`` refuses until it is filled in.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from benchmark.errors import CanonBenchError, ManifestError, SourceError
from benchmark.submission.manifest import ARCHITECTURES, FORMATS, HOOK_NAME, MODEL_NAME, SUBMISSION_NAME

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:  # lone surrogates cannot be written in TOML
            out.append("\\uFFFD")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _line(key: str, value: Any, comment: str | None = None) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, list):
        text = "[" + ", ".join(toml_string(str(v)) for v in value) + "]"
    else:
        text = toml_string(str(value))
    return f"{key} = {text}" + (f"  # {comment}" if comment else "")


def _agree(values: list[Any], what: str, sources: list[str]) -> Any:
    known = [(v, s) for v, s in zip(values, sources) if v is not None]
    distinct = {v for v, _ in known}
    if len(distinct) > 1:
        detail = ", ".join(f"{s}: {v}" for v, s in known)
        raise SourceError(f"the checkpoints disagree on {what} ({detail}); one submission holds one configuration",
                          field="sources")
    return known[0][0] if known else None


def _architecture(info: Any) -> str | None:
    """The architecture to declare: how it was trained when the checkpoint says so (BatchTopK SAEs
    are saved as JumpReLU; a dictionary_learning Matryoshka SAE is ``matryoshka``), else how it runs
    (:func:`benchmark.submission.agreement.declared_architecture`)."""
    from benchmark.submission.agreement import declared_architecture

    return declared_architecture(info) or getattr(info, "architecture", None)


#: A subfolder named for its seed: sparsify's ``seed3``, or ``seed_3`` / ``seed-3``.
SEED_NAME = re.compile(r"\Aseed[_-]?(\d{1,18})\Z")


def _folder_seed(folder: Path) -> int | None:
    """The seed a checkpoint folder's name or config states: ``seed<K>`` (sparsify's multi-seed
    layout) or dictionary_learning's ``trainer.seed``."""
    match = SEED_NAME.fullmatch(folder.name)
    if match is not None:
        return int(match.group(1))
    try:
        from benchmark.sae.checkpoints import inspect_checkpoint

        seed = inspect_checkpoint(folder).metadata.get("seed")
    except CanonBenchError:
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def expand_seed_folders(sources: list[str], seeds: list[int] | None) -> tuple[list[str], list[int] | None]:
    """One local source that is a folder holding one checkpoint per seed (sparsify's
    ``<run>/<hookpoint>/seed<K>``, dictionary_learning's ``trainer_<i>``, or any folder of checkpoint
    folders) becomes one source per subfolder. Seeds: ``seeds`` if given, else those the subfolders
    state (names ``seed<K>``, dictionary_learning's ``trainer.seed``) when all do and differ, else
    None (numbered 0, 1, ...). Anything else is returned unchanged."""
    from benchmark.sae.checkpoints import checkpoint_subfolders
    from benchmark.submission.sources import HubRef, SaelensRef, parse_source

    if len(sources) != 1 or isinstance(parse_source(sources[0]), (HubRef, SaelensRef)):
        return sources, seeds
    inside = checkpoint_subfolders(Path(sources[0]))
    if not inside:
        return sources, seeds
    log.info("%s holds %d checkpoints (%s): one seed each", sources[0], len(inside), ", ".join(p.name for p in inside))
    expanded = [str(p) for p in inside]
    if seeds is not None:
        return expanded, seeds
    stated = [_folder_seed(p) for p in inside]
    if all(s is not None for s in stated) and len(set(stated)) == len(stated):
        return expanded, [int(s) for s in stated]  # type: ignore[arg-type]
    return expanded, None


def _integer_k(k: Any) -> int | None:
    if isinstance(k, bool) or k is None:
        return None
    if isinstance(k, (int, float)) and float(k).is_integer() and k > 0:
        return int(k)
    return None


def _default_out(name: str) -> Path:
    org, short = name.split("/")
    return Path("submissions") / org / f"{short}.toml"


def write_new_submission(
    sources: list[str],
    *,
    name: str,
    seeds: list[int] | None = None,
    out: Path | str | None = None,
    cache_dir: Path | str | None = None,
    hub_cache: Path | str | None = None,
    saelens_registry: Path | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Resolve ``sources`` (one per seed), inspect them and write a manifest; return its path.

    ``sources``: ``hf://owner/repo@REV/path`` (REV a branch, tag or sha; it is pinned to its commit),
    ``saelens://release/sae_id`` or local folders (one per seed, or one folder holding a checkpoint per
    seed; a folder outside the manifest's is written as ``local_outside = true`` with its absolute path).
    """
    from benchmark.sae.checkpoints import inspect_checkpoint
    from benchmark.submission.sources import HubRef, SaelensRef, parse_source, resolve_local, resolve_source

    if not SUBMISSION_NAME.fullmatch(name):
        raise ManifestError(f"{name!r} must look like 'org/name' (lowercase letters, digits, . _ -)", field="--name")
    if not sources:
        raise SourceError("give at least one checkpoint source", field="sources")
    sources, seeds = expand_seed_folders(list(sources), None if seeds is None else list(seeds))
    seeds = list(range(len(sources))) if seeds is None else list(seeds)
    if len(seeds) != len(sources):
        raise ManifestError(f"{len(seeds)} seeds for {len(sources)} sources; give one seed per source", field="--seeds")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ManifestError(f"seeds must be distinct and non-negative, got {seeds}", field="--seeds")
    if len(set(sources)) != len(sources):
        raise SourceError("the same source is given twice; each seed needs its own checkpoint", field="sources")
    out_path = Path(out) if out is not None else _default_out(name)
    if out_path.exists() and not overwrite:
        raise ManifestError("already exists; choose another --out or remove it first", file=out_path)
    manifest_dir = out_path.parent.resolve()

    entries: list[dict[str, Any]] = []
    infos = []
    for uri, seed in zip(sources, seeds):
        ref = parse_source(uri)
        if isinstance(ref, (HubRef, SaelensRef)):
            resolved = resolve_source(uri, cache_dir=cache_dir, hub_cache=hub_cache, saelens_registry=saelens_registry)
            entry = {"seed": seed, "repo": resolved.repo, "revision": resolved.resolved_revision}
            if resolved.path_in_repo:
                entry["path"] = resolved.path_in_repo
            entry["_comment"] = f"from {uri}" + (
                f" ({resolved.requested_revision} on {dt.date.today().isoformat()})"
                if resolved.requested_revision != resolved.resolved_revision else ""
            )
        else:
            absolute = Path(ref).resolve()
            relative = Path(os.path.relpath(absolute, manifest_dir))
            outside = bool(relative.parts) and relative.parts[0] == ".."
            # below the manifest, every file must stay inside its folder too (no links leading out);
            # a folder elsewhere is kept where it is and declared outside (local_outside = true)
            resolved = resolve_local(absolute, display=uri, cache_dir=cache_dir, manifest_path=out_path, field=uri,
                                     declared_outside=outside)
            if outside:
                entry = {"seed": seed, "local": absolute.as_posix(), "local_outside": True,
                         "_comment": "outside the manifest's folder: kept where it is (this submission is local only)"}
            else:
                entry = {"seed": seed, "local": relative.as_posix(), "_comment": None}
        try:
            info = inspect_checkpoint(resolved.path, None)
        except CanonBenchError as exc:
            raise SourceError(f"cannot read the checkpoint: {exc}", field=uri) from None
        entries.append(entry)
        infos.append(info)

    if any("repo" in e for e in entries) and any(e.get("local_outside") for e in entries):
        raise SourceError("Hub checkpoints and local folders outside the manifest's folder cannot share a submission "
                          "(a Hub-bound submission keeps its local files below its manifest)", field="sources")
    fmt = _agree([getattr(i, "format", None) for i in infos], "format", sources)
    architecture = _agree([_architecture(i) for i in infos], "architecture", sources)
    d_in = _agree([getattr(i, "d_in", None) for i in infos], "d_in", sources)
    d_sae = _agree([getattr(i, "d_sae", None) for i in infos], "d_sae (width)", sources)
    k = _agree([_integer_k(getattr(i, "k", None)) for i in infos], "k", sources)
    model_name = _agree([getattr(i, "model_name", None) for i in infos], "model name", sources)
    hook = _agree([getattr(i, "hook_name", None) for i in infos], "hook", sources)
    if d_sae is None:
        raise SourceError("could not read the SAE width (d_sae) from the checkpoint", field=sources[0])

    model_revision = _model_revision(model_name, hub_cache=hub_cache)
    text = _render(
        name=name, entries=entries, fmt=fmt, architecture=architecture, d_in=d_in, d_sae=d_sae, k=k,
        model_name=model_name, model_revision=model_revision, hook=hook, out_path=out_path,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_path)
    log.info("wrote %s", out_path)
    return out_path


def _model_revision(model_name: str | None, *, hub_cache) -> str | None:
    """The base model's current commit on the Hub (or in the cache when offline), if it is a Hub id."""
    from benchmark.submission.sources import resolve_revision

    if not model_name or not MODEL_NAME.fullmatch(model_name):
        return None
    try:
        return resolve_revision(model_name, "main", hub_cache=hub_cache)
    except SourceError as exc:
        log.info("base model %s: %s; leaving its revision as TODO", model_name, exc)
        return None


def _render(*, name, entries, fmt, architecture, d_in, d_sae, k, model_name, model_revision, hook, out_path) -> str:
    lines = [
        "# Written by `canonbench new-submission`. Replace every value starting with TODO, then run:",
        f"#   canonbench validate {out_path.as_posix()} --check-files",
        _line("name", name),
        _line("kind", "checkpoints"),
        _line("title", "TODO: a short title for these SAEs"),
        _line("authors", ["TODO: author name"]),
        _line("license", "TODO: the checkpoints' license, e.g. MIT or Apache-2.0"),
        "# contact = \"you@example.org\"",
        "# notes = \"How they were trained; anything a reader should know.\"",
        "",
        "[links]",
    ]
    hub = next((e for e in entries if "repo" in e), None)
    if hub is not None:
        url = f"https://huggingface.co/{hub['repo']}/tree/{hub['revision']}" + (f"/{hub['path']}" if "path" in hub else "")
        lines.append(_line("weights", url))
    lines += ["# paper = \"https://arxiv.org/abs/...\"", "# code = \"https://github.com/...\"", ""]

    lines += ["[model]", "# The base model the SAEs read, pinned by exactly one of revision (a 40-hex Hub commit),"
              " package or local."]
    name_ok = bool(model_name) and bool(MODEL_NAME.fullmatch(model_name))
    lines.append(_line("name", model_name, "from the checkpoint config; must be the Hub id, not a transformer-lens alias")
                 if name_ok else _line("name", "TODO: the base model's Hub id"
                                       + (f" (the checkpoint says {model_name})" if model_name else "")))
    hook_ok = bool(hook) and bool(HOOK_NAME.fullmatch(hook))
    lines.append(_line("hook", hook, "from the checkpoint config; must be a transformer-lens hook name") if hook_ok
                 else _line("hook", "TODO: the transformer-lens hook name, e.g. blocks.6.hook_resid_post"))
    if model_revision:
        lines.append(_line("revision", model_revision, f"{model_name}@main on {dt.date.today().isoformat()}; check it"))
    else:
        lines.append(_line("revision", "TODO: the base model's 40-hex commit sha on the Hub"))
    lines.append("")

    lines.append("[sae]")
    if architecture in ARCHITECTURES:
        lines.append(_line("architecture", architecture, "from the checkpoint (how it was trained, where it says so)"))
    else:
        lines.append(_line("architecture", f"TODO: one of {', '.join(ARCHITECTURES)}"
                           + (f" (the checkpoint says {architecture})" if architecture else "")))
    lines.append(_line("width", int(d_sae)))
    if d_in is not None:
        lines.append(_line("d_in", int(d_in)))
    if k is not None:
        lines.append(_line("k", int(k)))
    if fmt in FORMATS:
        lines.append(_line("format", fmt, "detected"))
    for entry in entries:
        lines += ["", "[[checkpoints]]"]
        if entry.get("_comment"):
            lines.append(f"# {entry['_comment']}")
        for key in ("seed", "repo", "revision", "path", "local", "local_outside"):
            if key in entry:
                lines.append(_line(key, entry[key]))
    text = "\n".join(lines) + "\n"
    try:  # what we write must be TOML that reads back to the same values
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - a bug here, not bad input
        raise ManifestError(f"internal error: the manifest written is not valid TOML ({exc})", file=out_path) from None
    return text
