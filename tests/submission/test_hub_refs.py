"""Issue #14, class 8: Hub pull-request refs in ``hf://`` sources.

``hf://org/repo@refs/pr/1/path`` parsed as revision ``refs`` and path ``pr/1/path``. A revision is now
one path segment, or ``refs/pr/N`` (other ``refs/...`` are refused by name), resolved to a commit sha
like a branch, and recorded as requested.
"""

from __future__ import annotations

import pytest

from benchmark.errors import SourceError
from benchmark.submission import sources
from refusals import one_line

try:
    from tests.hub_fixtures import add_commit, saelens_checkpoint, with_prefix
except ImportError:  # tests/ not a package
    from hub_fixtures import add_commit, saelens_checkpoint, with_prefix


pytestmark = pytest.mark.usefixtures("offline_hub")


def test_pull_request_refs_parse_as_one_revision():
    assert sources.parse_source("hf://org/repo@refs/pr/1/layer_3/width_16k") == sources.HubRef(
        repo="org/repo", revision="refs/pr/1", path="layer_3/width_16k")
    assert sources.parse_source("hf://org/repo@refs/pr/12") == sources.HubRef("org/repo", "refs/pr/12", "")
    for uri in ("hf://org/repo@refs/heads/main/x", "hf://org/repo@refs/pr/x/y", "hf://org/repo@refs/pr/../x",
                "hf://org/repo@refs/pr/1/../x"):
        with pytest.raises(SourceError):
            sources.parse_source(uri)


def test_pull_request_refs_resolve_to_a_commit_like_branches(tmp_path):
    hub = tmp_path / "hub"
    files = with_prefix("seed0", saelens_checkpoint(8, 32, architecture="topk", k=4, seed=0))
    add_commit(hub, "org/repo", files)
    pr_sha = add_commit(hub, "org/repo", files, branch="refs/pr/1", salt="pr")
    resolved = sources.resolve_source("hf://org/repo@refs/pr/1/seed0", hub_cache=hub, cache_dir=tmp_path / "cb")
    record = resolved.record()
    assert (record["requested_revision"], record["resolved_revision"], record["path"]) == ("refs/pr/1", pr_sha,
                                                                                             "seed0")
    with pytest.raises(SourceError) as info:
        sources.resolve_source("hf://org/repo@refs/pr/2/seed0", hub_cache=hub)
    assert "refs/pr/2" in one_line(info.value)
