"""Hub, sae-lens and local checkpoint sources, against real Hub cache layouts on disk.

huggingface_hub itself reads the caches built here (offline); only the download function is replaced
where a test needs the Hub's failures (timeouts, 5xx, 404), and then with the library's own exception
types.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import OfflineModeIsEnabled, filter_repo_objects

from benchmark.submission import sources
from benchmark.errors import SourceError
from benchmark.submission.manifest import parse_manifest

try:
    from tests.hub_fixtures import add_commit, saelens_checkpoint, with_prefix, write_folder
except ImportError:  # tests/ not a package
    from hub_fixtures import add_commit, saelens_checkpoint, with_prefix, write_folder

REPO = "example-org/gpt2-saes"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Offline, with the Hub cache in a fresh folder; retries never sleep."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    slept: list[float] = []
    monkeypatch.setattr(sources, "_sleep", slept.append)
    return slept


@pytest.fixture
def hub(tmp_path) -> Path:
    return tmp_path / "hub"


def two_seed_repo(hub: Path, **extra: bytes) -> tuple[str, dict[str, bytes]]:
    files = {
        **with_prefix("seed0/blocks.6", saelens_checkpoint(8, 32, seed=0)),
        **with_prefix("seed1/blocks.6", saelens_checkpoint(8, 32, seed=1)),
        **with_prefix("seed0/blocks.6/extra", {"sae_weights.safetensors": b"nested, not part of the checkpoint"}),
        "seed0/blocks.6/train.py": b"import os  # code is never fetched\n",
        "README.md": b"# SAEs\n",
        **extra,
    }
    return add_commit(hub, REPO, files), files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "uri, expected",
    [
        ("hf://org/repo@main/a/b", sources.HubRef("org/repo", "main", "a/b")),
        ("hf://org/repo/a/b", sources.HubRef("org/repo", "main", "a/b")),
        ("hf://org/repo@" + "a" * 40, sources.HubRef("org/repo", "a" * 40, "")),
        ("hf://org/repo@v1.0/x.pt/", sources.HubRef("org/repo", "v1.0", "x.pt")),
        ("saelens://gpt2-small-res-jb/blocks.8.hook_resid_pre", sources.SaelensRef("gpt2-small-res-jb", "blocks.8.hook_resid_pre")),
        ("saelens://gemma-scope/layer_1/width_16k", sources.SaelensRef("gemma-scope", "layer_1/width_16k")),
        ("some/folder", Path("some/folder")),
    ],
)
def test_parse_source(uri, expected):
    assert sources.parse_source(uri) == expected


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("hf://org", "hf://owner/repo"),
        ("hf://org/repo@/x", "empty revision"),
        ("hf://org/repo@main/a/../../etc", "'..'"),
        ("hf://org/re po@main/x", "not a Hub repo id"),
        ("saelens://release-only", "saelens://RELEASE/SAE_ID"),
        ("s3://bucket/key", "unknown scheme"),
    ],
)
def test_parse_source_refuses(uri, fragment):
    with pytest.raises(SourceError) as info:
        sources.parse_source(uri)
    assert fragment in str(info.value) and uri in str(info.value)


def test_download_patterns_select_only_one_checkpoint():
    repo_files = [
        "README.md", "config.json", "run.py",
        "seed0/blocks.6/cfg.json", "seed0/blocks.6/sae_weights.safetensors", "seed0/blocks.6/sparsity.safetensors",
        "seed0/blocks.6/runner_cfg.json", "seed0/blocks.6/hook.py", "seed0/blocks.6/extra/sae_weights.safetensors",
        "seed0/cfg.json", "seed1/blocks.6/cfg.json", "seed1/blocks.6/sae_weights.safetensors",
        "v5_32k_layer_6.pt/cfg.json", "v5_32k_layer_6.pt/sae_weights.safetensors",
        "layer_1/width_16k/params.npz", "layer_1/width_16k/other.npz", "layer_1/config.json",
    ]

    def chosen(path):
        allow, ignore = sources.download_patterns(path)
        return set(filter_repo_objects(repo_files, allow_patterns=allow, ignore_patterns=ignore))

    assert chosen("seed0/blocks.6") == {
        "seed0/blocks.6/cfg.json", "seed0/blocks.6/sae_weights.safetensors", "seed0/blocks.6/sparsity.safetensors",
        "seed0/cfg.json",  # a config next to the folder is cheap and may describe the run
    }
    # a folder with a file-like name (as in sae-lens's registry)
    assert chosen("v5_32k_layer_6.pt") == {"v5_32k_layer_6.pt/cfg.json", "v5_32k_layer_6.pt/sae_weights.safetensors", "config.json"}
    # one file: that file and the configs beside it, not its siblings
    assert chosen("layer_1/width_16k/params.npz") == {"layer_1/width_16k/params.npz"}
    # the repo root: top-level files only, never code
    assert chosen("") == {"config.json"}


# ------------------------------------------------------------------------------------ Hub, offline
def test_branch_resolves_to_commit_and_records_every_file(hub, tmp_path):
    sha, files = two_seed_repo(hub)
    resolved = sources.resolve_source(f"hf://{REPO}@main/seed0/blocks.6", hub_cache=hub, cache_dir=tmp_path / "cb")
    record = resolved.record()
    assert record["repo"] == REPO
    assert record["requested_revision"] == "main"
    assert record["resolved_revision"] == sha
    assert record["path"] == "seed0/blocks.6"
    assert record["local"] is False
    # exactly the checkpoint's own files; sizes and digests computed independently here
    assert record["files"] == {
        name: {"bytes": len(files[f"seed0/blocks.6/{name}"]), "sha256": sha256(files[f"seed0/blocks.6/{name}"])}
        for name in ("cfg.json", "sae_weights.safetensors")
    }
    assert resolved.path == hub / f"models--{REPO.replace('/', '--')}" / "snapshots" / sha / "seed0" / "blocks.6"
    assert json.loads(json.dumps(record)) == record


def test_pinned_sha_wins_over_a_branch_that_moved(hub):
    old_files = with_prefix("sae", saelens_checkpoint(8, 32, seed=0))
    new_files = with_prefix("sae", saelens_checkpoint(8, 64, seed=5))
    old = add_commit(hub, REPO, old_files, salt="old")
    new = add_commit(hub, REPO, new_files, salt="new")  # main now points here
    assert old != new
    pinned = sources.resolve_source(f"hf://{REPO}@{old}/sae", hub_cache=hub)
    assert pinned.resolved_revision == pinned.requested_revision == old
    assert pinned.files["sae_weights.safetensors"]["sha256"] == sha256(old_files["sae/sae_weights.safetensors"])
    latest = sources.resolve_source(f"hf://{REPO}@main/sae", hub_cache=hub)
    assert latest.resolved_revision == new
    assert latest.files["sae_weights.safetensors"]["sha256"] == sha256(new_files["sae/sae_weights.safetensors"])


def test_single_file_checkpoint(hub):
    params = b"PK\x03\x04 not really an npz but bytes are bytes"
    sha = add_commit(hub, "google/gemma-scope-2b-pt-res", {
        "layer_1/width_16k/average_l0_9/params.npz": params,
        "layer_1/width_16k/average_l0_50/params.npz": b"another",
    })
    resolved = sources.resolve_source(f"hf://google/gemma-scope-2b-pt-res@{sha}/layer_1/width_16k/average_l0_9/params.npz",
                                      hub_cache=hub)
    assert resolved.path.is_file() and resolved.path.name == "params.npz"
    assert resolved.files == {"params.npz": {"bytes": len(params), "sha256": sha256(params)}}


def test_offline_cold_cache_is_one_clear_line(hub):
    sha = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(SourceError) as info:
        sources.resolve_source(f"hf://{REPO}@{sha}/seed0", hub_cache=hub)
    text = str(info.value)
    assert f"{REPO}@{sha}/seed0" in text and "HF_HUB_OFFLINE" in text and "\n" not in text


def test_offline_branch_without_refs(hub):
    with pytest.raises(SourceError) as info:
        sources.resolve_source(f"hf://{REPO}@dev/seed0", hub_cache=hub)
    assert f"{REPO}@dev" in str(info.value) and "refs/dev" in str(info.value)


def test_missing_path_names_repo_revision_and_path(hub):
    sha, _ = two_seed_repo(hub)
    with pytest.raises(SourceError) as info:
        sources.resolve_source(f"hf://{REPO}@{sha}/seed7/blocks.6", hub_cache=hub)
    assert f"{REPO}@{sha}/seed7/blocks.6" in str(info.value)


def test_folder_without_weights_is_refused(hub):
    sha = add_commit(hub, REPO, {"only-config/cfg.json": b"{}", "only-config/sparsity.safetensors": b"x"})
    with pytest.raises(SourceError, match="no checkpoint files"):
        sources.resolve_source(f"hf://{REPO}@{sha}/only-config", hub_cache=hub)


def test_damaged_blob_is_detected(hub):
    sha, files = two_seed_repo(hub)
    blob = hub / f"models--{REPO.replace('/', '--')}" / "blobs" / sha256(files["seed1/blocks.6/sae_weights.safetensors"])
    blob.write_bytes(b"truncated")
    with pytest.raises(SourceError, match="damaged"):
        sources.resolve_source(f"hf://{REPO}@{sha}/seed1/blocks.6", hub_cache=hub)


def test_hub_cache_from_environment_at_call_time(hub, monkeypatch):
    sha, _ = two_seed_repo(hub)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert sources.resolve_source(f"hf://{REPO}@{sha}/seed1/blocks.6").resolved_revision == sha


# --------------------------------------------------------------------- transient errors and retries
def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{REPO}"))


@pytest.fixture
def online(monkeypatch):
    """'Online' as far as our code can tell; the download function is replaced by each test, and any
    real Hub call fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "_probe_hub", lambda: None)  # the Hub answers the reachability probe

    class NoHub:
        def __init__(self, *args, **kwargs):
            raise AssertionError("this test must not reach the Hub API")

    monkeypatch.setattr(sources, "HfApi", NoHub)


def test_timeouts_are_retried_with_backoff(hub, monkeypatch, online, offline):
    sha, files = two_seed_repo(hub)
    real_download = sources.snapshot_download
    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) <= 2:
            raise httpx2.ConnectTimeout("timed out")
        return real_download(*args, **{**kwargs, "local_files_only": True})

    monkeypatch.setattr(sources, "snapshot_download", flaky)
    resolved = sources.resolve_source(f"hf://{REPO}@{sha}/seed0/blocks.6", hub_cache=hub)
    assert len(calls) == 3 and offline == [1.0, 2.0]
    assert resolved.files["cfg.json"]["sha256"] == sha256(files["seed0/blocks.6/cfg.json"])
    assert all(kw["revision"] == sha for kw in calls)  # always the pinned commit, never a branch
    assert not any(p.endswith(".py") for p in calls[0]["allow_patterns"])


def test_server_errors_give_up_after_the_last_attempt(hub, monkeypatch, online, offline):
    sha = "0123456789abcdef0123456789abcdef01234567"
    calls = []

    def down(*args, **kwargs):
        calls.append(1)
        raise hf_errors.HfHubHTTPError("503 Service Unavailable", response=_response(503))

    monkeypatch.setattr(sources, "snapshot_download", down)
    with pytest.raises(SourceError) as info:
        sources.resolve_source(f"hf://{REPO}@{sha}/seed0", hub_cache=hub)
    assert len(calls) == sources.RETRY_ATTEMPTS and offline == [1.0, 2.0, 4.0]
    assert f"{REPO}@{sha}/seed0" in str(info.value) and "did not answer" in str(info.value)


@pytest.mark.parametrize(
    "error, fragment",
    [
        (lambda: hf_errors.RepositoryNotFoundError("404", response=_response(404)), "repository not found"),
        (lambda: hf_errors.GatedRepoError("403", response=_response(403)), "gated repository"),
        (lambda: hf_errors.RevisionNotFoundError("404", response=_response(404)), "revision not found"),
        (lambda: hf_errors.RemoteEntryNotFoundError("404", response=_response(404)), "file not found"),
        (lambda: hf_errors.HfHubHTTPError("401", response=_response(401)), "access denied"),
    ],
)
def test_permanent_errors_are_not_retried(hub, monkeypatch, online, offline, error, fragment):
    sha = "0123456789abcdef0123456789abcdef01234567"
    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        raise error()

    monkeypatch.setattr(sources, "snapshot_download", fail)
    with pytest.raises(SourceError) as info:
        sources.resolve_source(f"hf://{REPO}@{sha}/seed0", hub_cache=hub)
    assert calls == [1] and offline == []
    assert fragment in str(info.value) and f"{REPO}@{sha}/seed0" in str(info.value)


def test_transient_classification():
    wrapped = hf_errors.LocalEntryNotFoundError("cannot find")
    wrapped.__cause__ = httpx2.ReadTimeout("slow")
    assert sources.is_transient(wrapped)
    assert sources.is_transient(hf_errors.HfHubHTTPError("429", response=_response(429)))
    assert not sources.is_transient(hf_errors.HfHubHTTPError("404", response=_response(404)))
    offline_error = hf_errors.LocalEntryNotFoundError("offline")
    offline_error.__cause__ = OfflineModeIsEnabled("offline")
    assert not sources.is_transient(offline_error)
    assert not sources.is_transient(ValueError("bad"))


def test_branch_is_resolved_online_through_the_api(hub, monkeypatch, online):
    sha, _ = two_seed_repo(hub)
    asked = []

    class Api:
        def repo_info(self, repo, revision=None):
            asked.append((repo, revision))
            return type("Info", (), {"sha": sha})()

    monkeypatch.setattr(sources, "HfApi", Api)
    real_download = sources.snapshot_download
    monkeypatch.setattr(sources, "snapshot_download",
                        lambda *a, **kw: real_download(*a, **{**kw, "local_files_only": True}))
    resolved = sources.resolve_source(f"hf://{REPO}@release-1/seed1/blocks.6", hub_cache=hub)
    assert asked == [(REPO, "release-1")]
    assert (resolved.requested_revision, resolved.resolved_revision) == ("release-1", sha)


# ------------------------------------------------------------------------------------------- local
def test_local_folder(tmp_path):
    files = saelens_checkpoint(4, 16)
    folder = write_folder(tmp_path / "ckpt", {**files, "notes.txt": b"ignored", "load.py": b"ignored"})
    resolved = sources.resolve_source(str(folder))
    record = resolved.record()
    assert record["local"] is True and record["repo"] is None and record["resolved_revision"] is None
    assert record["files"] == {n: {"bytes": len(d), "sha256": sha256(d)} for n, d in files.items()}


def test_local_missing_and_empty(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        sources.resolve_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no checkpoint files"):
        sources.resolve_source(str(tmp_path / "empty"))


def test_digest_memo_is_used_and_invalidated(tmp_path):
    folder = write_folder(tmp_path / "ckpt", saelens_checkpoint(4, 16))
    cache = tmp_path / "cb"
    first = sources.describe_files(folder, cache_dir=cache)
    memo_file = cache / "sources" / "sha256-memo.json"
    memo = json.loads(memo_file.read_text())
    assert len(memo) == 2
    # the memo is trusted while size and mtime are unchanged ...
    memo = {k: [v[0], "f" * 64] for k, v in memo.items()}
    memo_file.write_text(json.dumps(memo))
    assert {f["sha256"] for f in sources.describe_files(folder, cache_dir=cache).values()} == {"f" * 64}
    # ... and ignored once the file changes
    weights = folder / "sae_weights.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again = sources.describe_files(folder, cache_dir=cache)
    assert again["sae_weights.safetensors"] == first["sae_weights.safetensors"]


# ------------------------------------------------------------------------------------ manifests
def _manifest(tmp_path: Path, checkpoints: str) -> object:
    text = f'''
name = "org/x"
kind = "checkpoints"
title = "t"
authors = ["a"]
license = "MIT"
[model]
name = "gpt2"
hook = "blocks.6.hook_resid_post"
revision = "{"1" * 40}"
[sae]
architecture = "standard"
width = 32
{checkpoints}
'''
    path = tmp_path / "org" / "x.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return parse_manifest(text, path)


def test_resolve_checkpoint_hub_and_local(hub, tmp_path):
    sha, files = two_seed_repo(hub)
    write_folder(tmp_path / "org" / "local-seed", saelens_checkpoint(8, 32, seed=9))
    manifest = _manifest(tmp_path, f'''
[[checkpoints]]
seed = 0
repo = "{REPO}"
revision = "{sha}"
path = "seed0/blocks.6"
[[checkpoints]]
seed = 1
local = "local-seed"
''')
    hub_ckpt = sources.resolve_checkpoint(manifest, manifest.submission.checkpoints[0], cache_dir=None, hub_cache=hub)
    local_ckpt = sources.resolve_checkpoint(manifest, manifest.submission.checkpoints[1], cache_dir=None)
    assert hub_ckpt.record()["resolved_revision"] == sha
    assert local_ckpt.record()["local"] is True and local_ckpt.record()["path"] == "local-seed"
    assert local_ckpt.path == (tmp_path / "org" / "local-seed").resolve()


def test_resolve_checkpoint_errors_name_manifest_and_entry(hub, tmp_path):
    sha, _ = two_seed_repo(hub)
    manifest = _manifest(tmp_path, f'''
[[checkpoints]]
seed = 0
repo = "{REPO}"
revision = "{sha}"
path = "seed0/blocks.6"
[[checkpoints]]
seed = 1
repo = "{REPO}"
revision = "{sha}"
path = "seed5/blocks.6"
''')
    with pytest.raises(SourceError) as info:
        sources.resolve_checkpoint(manifest, manifest.submission.checkpoints[1], cache_dir=None, hub_cache=hub)
    text = str(info.value)
    assert text.startswith(f"{manifest.path}: checkpoints[1]: ")
    assert f"{REPO}@{sha}/seed5/blocks.6" in text


# ---------------------------------------------------------------------------------------- sae-lens
REGISTRY = """
gpt2-small-res-jb:
  conversion_func: null
  model: gpt2-small
  repo_id: example-org/gpt2-saes
  saes:
  - id: blocks.6.hook_resid_pre
    path: seed0/blocks.6
    l0: 13.0
  - id: blocks.7.hook_resid_pre
    path: seed1/blocks.6
other-release:
  repo_id: someone/else
  saes: []
"""


def test_saelens_source_maps_to_repo_and_pins_the_branch(hub, tmp_path):
    sha, files = two_seed_repo(hub)
    registry = tmp_path / "pretrained_saes.yaml"
    registry.write_text(REGISTRY)
    resolved = sources.resolve_source("saelens://gpt2-small-res-jb/blocks.7.hook_resid_pre", hub_cache=hub,
                                      saelens_registry=registry)
    record = resolved.record()
    assert (record["repo"], record["path"]) == (REPO, "seed1/blocks.6")
    assert (record["requested_revision"], record["resolved_revision"]) == ("main", sha)
    assert record["saelens"]["release"] == "gpt2-small-res-jb" and record["saelens"]["model"] == "gpt2-small"
    assert record["files"]["cfg.json"]["sha256"] == sha256(files["seed1/blocks.6/cfg.json"])


def test_saelens_unknown_names_suggest(tmp_path):
    registry = tmp_path / "pretrained_saes.yaml"
    registry.write_text(REGISTRY)
    with pytest.raises(SourceError, match="did you mean gpt2-small-res-jb"):
        sources.lookup_saelens("gpt2-small-res-jbb", "x", registry_path=registry)
    with pytest.raises(SourceError, match="did you mean blocks.6.hook_resid_pre"):
        sources.lookup_saelens("gpt2-small-res-jb", "blocks.6.hook_resid_prex", registry_path=registry)


def test_saelens_registry_found_without_importing_sae_lens(tmp_path, monkeypatch):
    package = tmp_path / "site" / "sae_lens"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('sae_lens must not be imported')\n")
    (package / "pretrained_saes.yaml").write_text(REGISTRY)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "sae_lens", raising=False)
    assert sources.saelens_registry_path() == package / "pretrained_saes.yaml"
    assert "sae_lens" not in sys.modules
    assert sources.lookup_saelens("gpt2-small-res-jb", "blocks.6.hook_resid_pre")["path"] == "seed0/blocks.6"


def test_saelens_missing_package_is_a_clear_error(monkeypatch):
    real_find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name, *a: None if name == "sae_lens" else real_find_spec(name, *a))
    with pytest.raises(SourceError, match="pip install sae-lens"):
        sources.resolve_source("saelens://gpt2-small-res-jb/blocks.6.hook_resid_pre")
