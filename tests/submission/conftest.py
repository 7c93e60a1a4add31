"""Fixtures shared by the submission tests."""

import pytest
from huggingface_hub import constants as hf_constants


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Offline, with the Hub cache in a fresh folder (``tmp_path / "hub"``), so no test sees another's."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"
