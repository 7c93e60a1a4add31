"""Checkpoint sources: turn a manifest entry or a URI into files on disk, and record exactly which.

Three kinds of source:

* ``hf://owner/repo@<revision>/path/in/repo`` (revision optional, default ``main``): fetched through
  ``huggingface_hub`` into the standard Hub cache (or ``hub_cache``), downloading only the files a
  checkpoint needs from that one folder (configs and weights; never code).
* ``saelens://<release>/<sae_id>``: looked up in sae-lens's ``pretrained_saes.yaml`` (read from the
  installed package without importing it), then fetched like an ``hf://`` source. The registry has no
  revision, so the branch is resolved to a commit and both are recorded.
* a local folder or file.

Every resolution yields a :class:`ResolvedCheckpoint` whose :meth:`~ResolvedCheckpoint.record` goes
into each result row: repo, requested and resolved revision, path, and size + sha256 of every file.
Branch names are resolved to a commit sha before anything is downloaded, so a branch that moves later
never changes what a recorded sha points at.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, TypeVar, Union

from huggingface_hub import HfApi, snapshot_download

from benchmark.errors import SourceError
from benchmark.submission.manifest import CONTROL_CHARACTERS, require_inside_submission

log = logging.getLogger(__name__)

# Anchored with \A ... \Z and used with fullmatch ("$" also matches before a final newline).
COMMIT_SHA = re.compile(r"\A[0-9a-f]{40}\Z")
SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")
HUB_REPO = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
# A branch or tag name (one path segment in an hf:// URI), or a Hub pull request's ref.
REVISION_NAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}\Z")
PR_REF = re.compile(r"\Arefs/pr/[1-9][0-9]{0,9}\Z")
DEFAULT_REVISION = "main"
# owner/name[@revision][/path]: a revision is one segment, or two more after "refs/" (refs/pr/N)
_HF_URI = re.compile(r"(?P<owner>[^/@]*)/(?P<name>[^/@]*)(?P<at>@(?P<rev>refs/[^/]*/[^/]*|[^/]*))?(?:/(?P<path>.*))?",
                     re.DOTALL)

# What a checkpoint folder may hold that we need: configs and weights. Never code (*.py), never
# anything below the folder (sibling checkpoints of a multi-SAE repo stay on the Hub).
CHECKPOINT_FILE_PATTERNS = ("cfg.json", "config.json", "*.safetensors", "*.npz", "ae.pt")
CONFIG_NAMES = ("cfg.json", "config.json")
# Side files that are not weights: a folder holding only these has no checkpoint.
NOT_WEIGHTS = ("sparsity.safetensors",)

RETRY_ATTEMPTS = 4
RETRY_BASE_DELAY_S = 1.0
#: No retry starts once this long has passed since the first attempt (huggingface_hub retries
#: inside each attempt too, so attempts alone do not bound the wait).
RETRY_BUDGET_S = 60.0
_sleep: Callable[[float], None] = time.sleep  # tests replace it
_clock: Callable[[], float] = time.monotonic  # tests replace it
#: How long the one reachability probe of a process waits for the Hub to answer.
PROBE_TIMEOUT_S = 5.0

_TRANSIENT_NAMES = frozenset({
    "TimeoutException", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "Timeout",
    "ConnectError", "ReadError", "WriteError", "NetworkError", "RemoteProtocolError", "ConnectionError",
    "ChunkedEncodingError",
})

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- URIs
@dataclass(frozen=True)
class HubRef:
    """A location on the Hub: ``repo`` at ``revision`` (branch, tag or sha), ``path`` inside it."""

    repo: str
    revision: str
    path: str = ""

    @property
    def uri(self) -> str:
        return f"hf://{self.repo}@{self.revision}" + (f"/{self.path}" if self.path else "")


@dataclass(frozen=True)
class SaelensRef:
    """An SAE named in sae-lens's registry of pretrained SAEs."""

    release: str
    sae_id: str

    @property
    def uri(self) -> str:
        return f"saelens://{self.release}/{self.sae_id}"


def _check_repo_path(path: str, uri: str) -> str:
    path = path.strip("/")
    if "\\" in path or "\x00" in path or ".." in PurePosixPath(path).parts:
        raise SourceError(f"path {path!r} may not contain '..', backslashes or NUL bytes", field=uri)
    return path


def check_revision(revision: str, where: str) -> str:
    """A branch, tag, commit sha or Hub pull-request ref (``refs/pr/N``); SourceError otherwise."""
    if PR_REF.fullmatch(revision) or (REVISION_NAME.fullmatch(revision) and ".." not in revision):
        return revision
    raise SourceError(f"revision {revision!r} is not a branch, tag, commit or refs/pr/N", field=where)


def parse_source(uri: str) -> Union[HubRef, SaelensRef, Path]:
    """Parse ``hf://owner/repo[@rev][/path]``, ``saelens://release/sae_id`` or a local path.

    ``rev`` is one path segment (a branch, tag or sha) or a Hub pull request's ``refs/pr/N``:
    ``hf://org/repo@refs/pr/1/layer_3`` is revision ``refs/pr/1``, path ``layer_3``.
    """
    if CONTROL_CHARACTERS.search(uri):
        raise SourceError("control characters are not allowed in a source", field=repr(uri)[:200])
    if uri.startswith("hf://"):
        rest = uri[len("hf://"):]
        match = _HF_URI.fullmatch(rest)
        if match is None or not match["owner"] or not match["name"]:
            raise SourceError("expected hf://owner/repo@REVISION/path", field=uri)
        repo = f"{match['owner']}/{match['name']}"
        if not HUB_REPO.fullmatch(repo):
            raise SourceError(f"{repo!r} is not a Hub repo id of the form owner/name", field=uri)
        if match["at"] and not match["rev"]:
            raise SourceError("empty revision after '@'", field=uri)
        revision = check_revision(match["rev"] or DEFAULT_REVISION, uri)
        return HubRef(repo=repo, revision=revision, path=_check_repo_path(match["path"] or "", uri))
    if uri.startswith("saelens://"):
        release, _, sae_id = uri[len("saelens://"):].partition("/")
        if not release or not sae_id:
            raise SourceError("expected saelens://RELEASE/SAE_ID", field=uri)
        return SaelensRef(release=release, sae_id=sae_id)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", uri):
        raise SourceError("unknown scheme; use hf://, saelens:// or a local path", field=uri)
    return Path(uri)


# ---------------------------------------------------------------------------------------- results
@dataclass
class ResolvedCheckpoint:
    """A checkpoint's files on disk plus where they came from.

    ``path`` is the local folder (or single file) to load. ``files`` maps each file name relative to
    the checkpoint folder to ``{"bytes": int, "sha256": str}``.
    """

    path: Path
    local: bool
    source: str
    repo: str | None = None
    requested_revision: str | None = None
    resolved_revision: str | None = None
    path_in_repo: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    saelens: dict[str, Any] | None = None
    # Set by resolve_checkpoint: the sizes the manifest declares (load_sae honours them) and the header
    # facts read with them. Neither goes into record().
    expect: Any = None
    info: Any = None

    def record(self) -> dict[str, Any]:
        """A JSON-serialisable provenance record (goes into every result row)."""
        out: dict[str, Any] = {
            "source": self.source,
            "repo": self.repo,
            "requested_revision": self.requested_revision,
            "resolved_revision": self.resolved_revision,
            "path": self.path_in_repo,
            "local": self.local,
            "files": {name: dict(info) for name, info in sorted(self.files.items())},
        }
        if self.saelens is not None:
            out["saelens"] = dict(self.saelens)
        return out


# ---------------------------------------------------------------------------- environment and cache
def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set now, or was when huggingface_hub was imported."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


class _Reachability:
    """Whether the Hub answered this process's one probe (None: not asked yet)."""

    reason: str | None = None
    probed: bool = False


_REACHABILITY = _Reachability()


def _probe_hub() -> str | None:
    """Ask the Hub's endpoint once (a HEAD request through huggingface_hub's own HTTP session, so
    proxies and certificates are the library's): None when anything answers, else why not."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S, follow_redirects=False)
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer means "not reachable"
        return f"{type(exc).__name__}: {_first_line(exc)}"
    return None


def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached from this process (None when it can, or when ``HF_HUB_OFFLINE``
    is set: offline mode never asks).

    Detected ONCE per process, before the first Hub request, by :func:`_probe_hub`; a connection
    failure during a later request marks it too (:func:`mark_hub_unreachable`). After that every
    source resolves from the local Hub cache alone and fails at once with one line, instead of each
    request waiting through huggingface_hub's and our retries (about 25 s per request without a network).
    """
    if hub_offline():
        return None
    if not _REACHABILITY.probed:
        _REACHABILITY.probed = True
        _REACHABILITY.reason = _probe_hub()
        if _REACHABILITY.reason is not None:
            log.info("the Hugging Face Hub cannot be reached (%s); using the local Hub cache only", _REACHABILITY.reason)
    return _REACHABILITY.reason


def mark_hub_unreachable(reason: str) -> None:
    """Remember for the rest of the process that the Hub cannot be reached (see :func:`hub_unreachable`)."""
    if _REACHABILITY.reason is None:
        log.info("the Hugging Face Hub cannot be reached (%s); using the local Hub cache only", reason)
    _REACHABILITY.probed = True
    _REACHABILITY.reason = reason


def reset_hub_reachability() -> None:
    """Forget the probe's answer (tests; a long-lived process whose network came back)."""
    _REACHABILITY.probed = False
    _REACHABILITY.reason = None


def default_hub_cache() -> Path:
    """The Hub cache folder, honouring ``HF_HUB_CACHE`` / ``HF_HOME`` as they are set now."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _repo_cache_folder(hub_cache: Path, repo: str) -> Path:
    return hub_cache / ("models--" + repo.replace("/", "--"))


def cached_revision(repo: str, revision: str, *, hub_cache: Path | str | None = None) -> str | None:
    """The commit a branch/tag pointed at when last fetched into the cache (``refs/<revision>``)."""
    ref = _repo_cache_folder(Path(hub_cache) if hub_cache else default_hub_cache(), repo) / "refs" / revision
    try:
        sha = ref.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return sha if COMMIT_SHA.fullmatch(sha) else None


# ------------------------------------------------------------------------------- errors and retries
def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


#: Errors that mean "no route to the Hub at all" (DNS failure, connection refused): never retried by
#: us (huggingface_hub has already retried them), and they mark the Hub unreachable for the process.
_NO_CONNECTION_NAMES = frozenset({"ConnectError", "NetworkError", "ConnectionError"})


def is_unreachable(exc: BaseException) -> bool:
    """A DNS or connection failure (not a timeout or a server error) anywhere in the chain."""
    for e in _chain(exc):
        names = {cls.__name__ for cls in type(e).__mro__}
        if "OfflineModeIsEnabled" in names or _status_code(e) is not None:
            return False
        if names & _NO_CONNECTION_NAMES or isinstance(e, (ConnectionRefusedError, socket.gaierror)):
            return True
    return False


def is_transient(exc: BaseException) -> bool:
    """Timeouts, dropped connections, HTTP 5xx and 429: worth another try. Offline mode is not."""
    for e in _chain(exc):
        names = {cls.__name__ for cls in type(e).__mro__}
        if "OfflineModeIsEnabled" in names:
            return False
        code = _status_code(e)
        if code is not None:
            return code >= 500 or code == 429
        if isinstance(e, TimeoutError) or names & _TRANSIENT_NAMES:
            return True
    return False


def _with_retries(action: Callable[[], T], *, what: str) -> T:
    """Run ``action``; on a transient error (timeout, 5xx, 429) wait 1 s, 2 s, 4 s ... and try again,
    at most :data:`RETRY_ATTEMPTS` times and never past :data:`RETRY_BUDGET_S`. A connection failure is not retried: it marks the Hub
    unreachable for the rest of the process (:func:`mark_hub_unreachable`). Retry notes go to the
    INFO log, so ``--quiet`` shows only the final one-line error."""
    started = _clock()
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return action()
        except Exception as exc:
            if is_unreachable(exc):
                mark_hub_unreachable(f"{type(exc).__name__}: {_first_line(exc)}")
                raise
            delay = RETRY_BASE_DELAY_S * 2 ** (attempt - 1)
            if attempt == RETRY_ATTEMPTS or not is_transient(exc) or _clock() - started + delay > RETRY_BUDGET_S:
                raise
            log.info("%s: %s: %s; retrying in %.0f s (attempt %d of %d)",
                     what, type(exc).__name__, _first_line(exc), delay, attempt + 1, RETRY_ATTEMPTS)
            _sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _explain(exc: BaseException, *, offline: bool, hub_cache: Path, unreachable: str | None = None) -> str:
    """One line saying why a Hub request failed, from the real huggingface_hub exception type.
    ``unreachable``: why the Hub could not be reached, when that was known before the request."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if unreachable is not None and not offline:
        return (f"the Hub cannot be reached ({unreachable}) and the files are not in the local Hub cache "
                f"({hub_cache}); connect to the network, or fetch them once where it works")
    code = _status_code(exc)
    if "GatedRepoError" in names:
        return "gated repository: accept its terms on the Hub and log in (hf auth login)"
    if "RepositoryNotFoundError" in names:
        return "repository not found on the Hub (or private and no access)"
    if "RevisionNotFoundError" in names:
        return "revision not found in the repository"
    if "RemoteEntryNotFoundError" in names or ("EntryNotFoundError" in names and code == 404):
        return "file not found in the repository at this revision"
    if "LocalEntryNotFoundError" in names or "OfflineModeIsEnabled" in names:
        if offline:
            return f"not in the local Hub cache ({hub_cache}) and HF_HUB_OFFLINE is set, so nothing can be downloaded"
        cause = next((e for e in _chain(exc) if e is not exc), None)
        why = f" ({type(cause).__name__}: {_first_line(cause)})" if cause is not None else ""
        return f"the Hub could not be reached{why} and the files are not in the local cache ({hub_cache})"
    if code == 401 or code == 403:
        return f"access denied (HTTP {code}); log in with a token that can read this repository"
    if code == 404:
        return "not found on the Hub (HTTP 404)"
    if is_transient(exc):
        return f"the Hub did not answer after {RETRY_ATTEMPTS} attempts ({type(exc).__name__}: {_first_line(exc)})"
    return f"{type(exc).__name__}: {_first_line(exc)}"


# ------------------------------------------------------------------------------------------ hashing
def _memo_path(cache_dir: Path | str | None) -> Path | None:
    return None if cache_dir is None else Path(cache_dir) / "sources" / "sha256-memo.json"


def _load_memo(cache_dir: Path | str | None) -> dict[str, list]:
    path = _memo_path(cache_dir)
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a damaged memo only costs re-hashing
    return data if isinstance(data, dict) else {}


def _save_memo(cache_dir: Path | str | None, memo: dict[str, list]) -> None:
    path = _memo_path(cache_dir)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".memo-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(memo, handle, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def file_digest(path: Path, memo: dict[str, list] | None = None) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of a file (symlinks followed), streamed in 8 MiB chunks.

    ``memo`` maps real path + size + mtime to a digest computed before, so large files are hashed
    once per change rather than once per run.
    """
    real = Path(os.path.realpath(path))
    stat = real.stat()
    key = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
    if memo is not None and key in memo:
        size, digest = memo[key]
        return {"bytes": int(size), "sha256": str(digest)}
    hasher = hashlib.sha256()
    with open(real, "rb") as handle:
        for chunk in iter(functools.partial(handle.read, 8 << 20), b""):
            hasher.update(chunk)
    digest = hasher.hexdigest()
    # Hub cache blobs of LFS files are named by their sha256: a mismatch is a damaged download.
    if "blobs" in real.parts and SHA256_HEX.fullmatch(real.name) and real.name != digest:
        raise SourceError(f"cached file {path.name} is damaged (sha256 {digest[:12]}… but blob {real.name[:12]}…); "
                          f"delete {real} and fetch again", file=str(path))
    if memo is not None:
        memo[key] = [stat.st_size, digest]
    return {"bytes": stat.st_size, "sha256": digest}


def checkpoint_files(target: Path) -> list[Path]:
    """The files that make up a checkpoint: the file itself plus its folder's configs, or a folder's
    configs and weights (top level only, matching :data:`CHECKPOINT_FILE_PATTERNS`)."""
    if target.is_file():
        siblings = [target.parent / n for n in CONFIG_NAMES if (target.parent / n).is_file() and n != target.name]
        return [target, *siblings]
    if not target.is_dir():
        return []
    found = []
    for child in sorted(target.iterdir()):
        if child.is_file() and any(PurePosixPath(child.name).match(p) for p in CHECKPOINT_FILE_PATTERNS):
            found.append(child)
    return found


def _has_weights(files: list[Path]) -> bool:
    return any(
        f.suffix in (".safetensors", ".npz", ".pt") and f.name not in NOT_WEIGHTS for f in files
    )


def describe_files(target: Path, *, cache_dir: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each checkpoint file, keyed by name relative to the checkpoint folder."""
    memo = _load_memo(cache_dir)
    before = len(memo)
    base = target.parent if target.is_file() else target
    out = {f.relative_to(base).as_posix(): file_digest(f, memo) for f in checkpoint_files(target)}
    if len(memo) != before:
        _save_memo(cache_dir, memo)
    return out


# ---------------------------------------------------------------------------------------- revisions
def resolve_revision(repo: str, revision: str, *, hub_cache: Path | str | None = None) -> str:
    """The 40-hex commit sha that ``revision`` (branch, tag or sha) of ``repo`` names.

    Online: asks the Hub (with retries) and falls back to the cache's ``refs/`` when the Hub cannot be
    reached. Offline: the cache's ``refs/`` only.
    """
    if COMMIT_SHA.fullmatch(revision):
        return revision
    check_revision(revision, f"{repo}@{revision}")
    cache = Path(hub_cache) if hub_cache else default_hub_cache()
    where = f"{repo}@{revision}"
    if hub_offline():
        sha = cached_revision(repo, revision, hub_cache=cache)
        if sha is None:
            raise SourceError(f"cannot resolve revision {revision!r} to a commit: HF_HUB_OFFLINE is set and the "
                              f"local Hub cache ({cache}) has no refs/{revision} for this repo", field=where)
        return sha
    unreachable = hub_unreachable()
    if unreachable is not None:
        sha = cached_revision(repo, revision, hub_cache=cache)
        if sha is None:
            raise SourceError(f"cannot resolve revision {revision!r} to a commit: the Hub cannot be reached "
                              f"({unreachable}) and the local Hub cache ({cache}) has no refs/{revision} for this repo",
                              field=where)
        log.warning("%s: the Hub cannot be reached; using the cached commit %s", where, sha)
        return sha
    try:
        info = _with_retries(lambda: HfApi().repo_info(repo, revision=revision), what=f"resolving {where}")
    except Exception as exc:
        sha = cached_revision(repo, revision, hub_cache=cache) if is_transient(exc) or is_unreachable(exc) else None
        if sha is not None:
            log.warning("%s: the Hub could not be reached; using the cached commit %s", where, sha)
            return sha
        raise SourceError(_explain(exc, offline=False, hub_cache=cache), field=where) from None
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not COMMIT_SHA.fullmatch(sha):
        raise SourceError(f"the Hub returned no commit sha for revision {revision!r}", field=where)
    return sha


# ---------------------------------------------------------------------------------------- resolving
def _escape_glob(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def download_patterns(path: str) -> tuple[list[str], list[str]]:
    """``(allow_patterns, ignore_patterns)`` fetching only the checkpoint at ``path`` in a repo.

    ``path`` may name a folder or one file (and folders may have file-like names, e.g. sae-lens's
    ``v5_32k_layer_6.pt``), so both readings are allowed: the exact path, the checkpoint files directly
    inside it, and the configs next to it. Nothing deeper and no code is fetched.
    """
    if not path:
        return list(CHECKPOINT_FILE_PATTERNS), ["*/*", "*.py"]
    escaped = _escape_glob(path)
    parent = str(PurePosixPath(path).parent)
    parent_prefix = "" if parent in ("", ".") else _escape_glob(parent) + "/"
    allow = [escaped]
    allow += [f"{escaped}/{pattern}" for pattern in CHECKPOINT_FILE_PATTERNS]
    allow += [parent_prefix + name for name in CONFIG_NAMES]
    return allow, [f"{escaped}/*/*", "*.py"]


def _download(repo: str, sha: str, path: str, *, hub_cache: Path, offline: bool) -> Path:
    allow, ignore = download_patterns(path)
    folder = _with_retries(
        lambda: snapshot_download(
            repo, revision=sha, cache_dir=str(hub_cache), allow_patterns=allow, ignore_patterns=ignore,
            local_files_only=offline,
        ),
        what=f"downloading {repo}@{sha}/{path}",
    )
    return Path(folder)


def resolve_hub(
    repo: str,
    revision: str,
    path: str = "",
    *,
    cache_dir: Path | str | None = None,
    hub_cache: Path | str | None = None,
    source: str | None = None,
    saelens: dict[str, Any] | None = None,
) -> ResolvedCheckpoint:
    """Fetch the checkpoint at ``repo@revision/path`` (only its own files) and describe it.

    ``hub_cache``: the Hub cache folder (default: the standard one, ``HF_HUB_CACHE``). ``cache_dir``:
    CanonBench's cache, where file digests are memoised. Raises :class:`SourceError` with one line
    naming repo, revision and path.
    """
    cache = Path(hub_cache) if hub_cache else default_hub_cache()
    path = _check_repo_path(path, f"{repo}@{revision}/{path}")
    sha = resolve_revision(repo, revision, hub_cache=cache)
    where = f"{repo}@{sha}" + (f"/{path}" if path else "")
    offline = hub_offline()
    unreachable = hub_unreachable()
    try:
        snapshot = _download(repo, sha, path, hub_cache=cache, offline=offline or unreachable is not None)
    except Exception as exc:
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise SourceError(_explain(exc, offline=offline, hub_cache=cache, unreachable=unreachable), field=where) from None
    target = snapshot / path if path else snapshot
    files = checkpoint_files(target)
    if not files or (target.is_dir() and not _has_weights(files)):
        looked = ", ".join(CHECKPOINT_FILE_PATTERNS)
        if offline:
            raise SourceError(f"no checkpoint files ({looked}) at this path in the local Hub cache ({cache}) "
                              "and HF_HUB_OFFLINE is set, so nothing can be downloaded", field=where)
        raise SourceError(f"no checkpoint files ({looked}) at this path in the repository", field=where)
    return ResolvedCheckpoint(
        path=target, local=False, source=source or f"hf://{repo}@{revision}" + (f"/{path}" if path else ""),
        repo=repo, requested_revision=revision, resolved_revision=sha, path_in_repo=path,
        files=describe_files(target, cache_dir=cache_dir), saelens=saelens,
    )


def resolve_local(path: Path | str, *, display: str | None = None, cache_dir: Path | str | None = None,
                  manifest_path: Path | str | None = None, field: str | None = None,
                  declared_outside: bool = False) -> ResolvedCheckpoint:
    """Describe a checkpoint in a local folder or file (nothing is copied).

    With ``manifest_path`` (a manifest's local checkpoint), the folder and every checkpoint file in it
    must pass :func:`~benchmark.submission.manifest.require_inside_submission` before anything is read
    or hashed: a link to a file outside the submission is refused, never described, unless the
    manifest declares the folder outside (``declared_outside``, from ``local_outside = true``).
    """
    target = Path(path)
    shown = display if display is not None else str(path)
    if not target.exists():
        raise SourceError("no such file or folder", field=shown)
    files = checkpoint_files(target)
    if not files or (target.is_dir() and not _has_weights(files)):
        raise SourceError(f"no checkpoint files ({', '.join(CHECKPOINT_FILE_PATTERNS)}) in this folder", field=shown)
    if manifest_path is not None:
        where = field or shown
        target = require_inside_submission(manifest_path, target, field=where, declared_outside=declared_outside)
        for file in files:
            require_inside_submission(manifest_path, file, field=where, declared_outside=declared_outside)
    return ResolvedCheckpoint(
        path=target.resolve(), local=True, source=shown, path_in_repo=shown,
        files=describe_files(target, cache_dir=cache_dir),
    )


# -------------------------------------------------------------------------------------- sae-lens
def saelens_registry_path() -> Path:
    """Where the installed sae-lens keeps ``pretrained_saes.yaml``, found without importing sae_lens."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("saelens:// sources need the sae-lens package for its registry of pretrained SAEs "
                          "(pip install sae-lens), or give the Hub location as hf://owner/repo@SHA/path")
    for folder in spec.submodule_search_locations:
        for candidate in (Path(folder) / "pretrained_saes.yaml", Path(folder) / "toolkit" / "pretrained_saes.yaml"):
            if candidate.is_file():
                return candidate
    raise SourceError("the installed sae-lens has no pretrained_saes.yaml; give the Hub location as "
                      "hf://owner/repo@SHA/path")


@functools.lru_cache(maxsize=4)
def _read_registry(path: str, mtime_ns: int) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as handle:
        data = yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader
    if not isinstance(data, dict):
        raise SourceError("not a mapping of releases", file=path)
    return data


def lookup_saelens(release: str, sae_id: str, *, registry_path: Path | str | None = None) -> dict[str, Any]:
    """``{repo, path, model, conversion_func, release, sae_id}`` for an SAE in sae-lens's registry."""
    path = Path(registry_path) if registry_path else saelens_registry_path()
    registry = _read_registry(str(path), path.stat().st_mtime_ns)
    uri = f"saelens://{release}/{sae_id}"
    entry = registry.get(release)
    if not isinstance(entry, dict):
        near = difflib.get_close_matches(release, [str(k) for k in registry], n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise SourceError(f"release {release!r} is not in sae-lens's registry ({path}){hint}", field=uri)
    saes = entry.get("saes") or []
    match = next((s for s in saes if isinstance(s, dict) and str(s.get("id")) == sae_id), None)
    if match is None:
        ids = [str(s.get("id")) for s in saes if isinstance(s, dict)]
        near = difflib.get_close_matches(sae_id, ids, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else f" ({len(ids)} ids in this release)"
        raise SourceError(f"sae id {sae_id!r} is not in release {release!r}{hint}", field=uri)
    repo = entry.get("repo_id")
    if not isinstance(repo, str) or not HUB_REPO.fullmatch(repo):
        raise SourceError(f"release {release!r} has no usable repo_id in the registry", field=uri)
    return {
        "release": release,
        "sae_id": sae_id,
        "repo": repo,
        "path": _check_repo_path(str(match.get("path") or ""), uri),
        "model": entry.get("model"),
        "conversion_func": entry.get("conversion_func"),
    }


# ---------------------------------------------------------------------------------------- public API
def resolve_source(
    uri: str,
    *,
    cache_dir: Path | str | None = None,
    hub_cache: Path | str | None = None,
    saelens_registry: Path | str | None = None,
) -> ResolvedCheckpoint:
    """Resolve an ``hf://`` / ``saelens://`` URI or a local path to files on disk, with provenance."""
    ref = parse_source(uri)
    if isinstance(ref, HubRef):
        return resolve_hub(ref.repo, ref.revision, ref.path, cache_dir=cache_dir, hub_cache=hub_cache, source=uri)
    if isinstance(ref, SaelensRef):
        entry = lookup_saelens(ref.release, ref.sae_id, registry_path=saelens_registry)
        info = {k: entry[k] for k in ("release", "sae_id", "model", "conversion_func")}
        return resolve_hub(entry["repo"], DEFAULT_REVISION, entry["path"], cache_dir=cache_dir,
                           hub_cache=hub_cache, source=uri, saelens=info)
    return resolve_local(ref, display=uri, cache_dir=cache_dir)


def expected_size(manifest, spec=None) -> Any:
    """The sizes a manifest's checkpoint ``spec`` must declare (its ladder ``width``, else ``sae.width``;
    ``sae.d_in``), for :func:`benchmark.sae.checkpoints.load_sae` / ``inspect_checkpoint``'s ``expect``.
    Without ``spec``: the primary width's."""
    from benchmark.sae.checkpoints import ExpectedSize

    sub = manifest.submission
    sae = sub.sae
    declared_in = f"the manifest {Path(manifest.path).name}"
    if spec is not None and spec.width is not None:
        index = next((i for i, c in enumerate(sub.checkpoints) if c is spec), None)
        key = f"checkpoints[{index}].width" if index is not None else "checkpoints[].width"
        return ExpectedSize(d_sae=spec.width, d_in=sae.d_in, declared_in=declared_in, width_field=key)
    return ExpectedSize(d_sae=sae.width, d_in=sae.d_in, declared_in=declared_in)


def resolve_checkpoint(manifest, spec, *, cache_dir: Path | str | None = None,
                       hub_cache: Path | str | None = None, check_header: bool = True) -> ResolvedCheckpoint:
    """Resolve one :class:`~benchmark.submission.manifest.CheckpointSpec` of a loaded manifest.

    Local paths are relative to the manifest's folder and must stay inside it (symlinks included),
    unless the entry declares ``local_outside = true``;
    Hub entries are always pinned to a sha by the schema. Errors name the manifest file and the
    checkpoint entry.

    ``check_header`` (default): the checkpoint's headers are checked now, with the sizes the manifest
    declares (:func:`expected_size`), before any weight is read; the result carries that ``expect`` and
    the header facts (``info``), so ``load_sae(resolved)`` is bounded by the manifest's sizes.
    ``validate`` passes False and compares the header facts itself.
    """
    checkpoints = list(manifest.submission.checkpoints)
    index = next((i for i, c in enumerate(checkpoints) if c is spec), None)
    if index is None:
        index = checkpoints.index(spec)
    entry = f"checkpoints[{index}]"
    try:
        if spec.local is not None:
            where = f"{entry}.local"
            folder = manifest.resolve_local(spec.local, field=where, outside=spec.local_outside)
            resolved = resolve_local(folder, display=spec.local, cache_dir=cache_dir, manifest_path=manifest.path,
                                     field=where, declared_outside=spec.local_outside)
        else:
            resolved = resolve_hub(spec.repo, spec.revision, spec.path, cache_dir=cache_dir, hub_cache=hub_cache)
    except SourceError as exc:
        where = f"{entry}.local" if spec.local is not None else entry
        subject = exc.field or ""
        detail = f"{subject}: {exc.detail}" if subject else exc.detail
        raise SourceError(detail, file=manifest.path, field=where) from None
    if check_header:
        from benchmark.sae.checkpoints import inspect_checkpoint

        fmt = None if manifest.submission.sae.format == "auto" else manifest.submission.sae.format
        resolved.expect = expected_size(manifest, spec)
        resolved.info = inspect_checkpoint(resolved.path, fmt, expect=resolved.expect)
    return resolved
