"""Without a network, Hub sources fail at once with one line: the Hub is probed once per process, a
connection failure is never retried, and ``--quiet`` shows only the errors.

Before this, ``canonbench validate submissions/ --check-files`` on a fresh clone without a network
waited through huggingface_hub's retries and ours for every checkpoint (8 min 21 s for five).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors

from benchmark.errors import SourceError
from benchmark.submission import sources
from benchmark.submission.validate import validate_paths

ROOT = Path(__file__).resolve().parents[2]
SHA = "9c41d2e7b05a3f86c1e2d4b7a9f0e3c5d8b6a142"
REPO = "example-org/gpt2-small-topk-16k-seeds"


def hub_manifest(folder: Path, name: str, seeds: int = 3) -> Path:
    """A manifest of ``seeds`` Hub checkpoints that are in no cache."""
    blocks = "".join(f'\n[[checkpoints]]\nseed = {s}\nrepo = "{REPO}"\nrevision = "{SHA}"\npath = "seed_{s}"\n'
                     for s in range(seeds))
    path = folder / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'name = "org/{name}"\nkind = "checkpoints"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
                    f'[model]\nname = "gpt2"\nhook = "blocks.8.hook_resid_pre"\nrevision = "{SHA}"\n'
                    f'[sae]\narchitecture = "topk"\nwidth = 64\n{blocks}', encoding="utf-8")
    return path


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Online as far as settings go (HF_HUB_OFFLINE unset), but the Hub's endpoint refuses connections;
    the probe and every download are counted, retries never sleep."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    probes, downloads, slept = [], [], []

    def probe():
        probes.append(1)
        return "ConnectError: [Errno 111] Connection refused"

    real_download = sources.snapshot_download

    def download(*args, **kwargs):
        downloads.append(kwargs)
        assert kwargs["local_files_only"], "a download was attempted although the Hub is unreachable"
        return real_download(*args, **kwargs)

    monkeypatch.setattr(sources, "_probe_hub", probe)
    monkeypatch.setattr(sources, "snapshot_download", download)
    monkeypatch.setattr(sources, "_sleep", slept.append)
    return probes, downloads, slept


def test_unreachable_hub_is_probed_once_and_each_checkpoint_fails_in_one_line(no_network, tmp_path):
    probes, downloads, slept = no_network
    folder = tmp_path / "subs"
    for name in ("a", "b"):
        hub_manifest(folder / "org", name)
    problems, checked = validate_paths([folder], check_files=True, cache_dir=tmp_path / "cache")
    assert checked == 2
    assert [p.field for p in problems] == [f"checkpoints[{i}]" for i in range(3)] * 2
    for problem in problems:
        text = str(problem)
        assert "\n" not in text and "cannot be reached (ConnectError" in text and "local Hub cache" in text
    assert probes == [1]  # once per process, not once per checkpoint
    assert len(downloads) == 6 and slept == []  # cache lookups only, no retry waits


def test_a_connection_failure_during_a_request_is_not_retried_and_marks_the_hub_unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "_probe_hub", lambda: None)  # the probe got through; then the network went
    slept, calls = [], []
    monkeypatch.setattr(sources, "_sleep", slept.append)

    def refused(*args, **kwargs):
        calls.append(kwargs["local_files_only"])
        if not kwargs["local_files_only"]:
            raise httpx2.ConnectError("[Errno 111] Connection refused")
        raise hf_errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(sources, "snapshot_download", refused)
    for seed in range(3):
        with pytest.raises(SourceError) as info:
            sources.resolve_hub(REPO, SHA, f"seed_{seed}", hub_cache=tmp_path / "hub")
        assert "\n" not in str(info.value)
    assert calls == [False, True, True]  # the first request failed to connect; the others ask the cache only
    assert slept == [] and sources.hub_unreachable() is not None


def test_offline_mode_never_probes(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sources, "_probe_hub", lambda: pytest.fail("offline mode must not probe the Hub"))
    assert sources.hub_unreachable() is None
    with pytest.raises(SourceError) as info:
        sources.resolve_hub(REPO, SHA, "seed_0", hub_cache=tmp_path / "hub")
    assert "HF_HUB_OFFLINE is set" in str(info.value)


def test_the_probe_reports_a_refused_connection(monkeypatch):
    """The real probe, against a local port nothing listens on."""
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    reason = sources._probe_hub()
    assert reason is not None and "Connect" in reason


def test_validate_without_a_network_through_the_cli_is_quick_and_quiet(tmp_path):
    """The command a new user runs, in a fresh interpreter with the endpoint refusing connections:
    ``-q`` prints one error line per checkpoint and nothing else (no retry chatter)."""
    hub_manifest(tmp_path / "subs" / "org", "a")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmark.cli", "validate", str(tmp_path / "subs"), "--check-files",
                           "--cache-dir", str(tmp_path / "cache"), "-q"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") and "cannot be reached" in line for line in lines), lines
    assert "Retry" not in proc.stderr and proc.stdout == ""


def test_retries_stop_when_the_time_budget_is_spent(monkeypatch, tmp_path):
    """Each attempt may itself wait through huggingface_hub's retries: the budget bounds the total."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "_probe_hub", lambda: None)
    now, calls, slept = [0.0], [], []
    monkeypatch.setattr(sources, "_clock", lambda: now[0])
    monkeypatch.setattr(sources, "_sleep", slept.append)

    def slow_timeout(*args, **kwargs):
        calls.append(1)
        now[0] += 40.0  # the library's own retries took 40 s before giving up
        raise httpx2.ReadTimeout("read timed out")

    monkeypatch.setattr(sources, "snapshot_download", slow_timeout)
    with pytest.raises(SourceError) as info:
        sources.resolve_hub(REPO, SHA, "seed_0", hub_cache=tmp_path / "hub")
    assert calls == [1, 1] and slept == [1.0]  # 40 s + 1 s wait < 60 s: one retry; 80 s + 2 s: none
    assert "did not answer" in str(info.value) and sources.RETRY_ATTEMPTS > 2
