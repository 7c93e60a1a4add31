"""Every test runs offline: the Hub is never contacted (set before huggingface_hub is imported)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Shared fixture modules (tests/fixtures/*.py) are imported by name from every test folder.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))


import pytest  # noqa: E402 - after the environment above is set


@pytest.fixture(autouse=True)
def _fresh_hub_reachability():
    """Each test starts without the process's memory of an unreachable Hub (benchmark.submission.sources)."""
    from benchmark.submission import sources

    sources.reset_hub_reachability()
    yield
    sources.reset_hub_reachability()
