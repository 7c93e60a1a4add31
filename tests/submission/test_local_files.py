"""Issue #14, class 7: local checkpoint files or folders linked to places outside the submission.

They were read, and their outside path, size and hash published. ``require_inside_submission`` (in
``benchmark/submission/manifest.py``) is now the one containment rule: every local folder and every
checkpoint file in it must resolve, symlinks followed, inside the manifest's folder. Errors never show
where a link points.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import checkpoint_fixtures as fx
from benchmark.errors import CanonBenchError, ManifestError
from benchmark.submission import sources
from benchmark.submission.manifest import load_manifest
from benchmark.submission.validate import validate_paths
from manifest_texts import manifest_text
from refusals import one_line


pytestmark = pytest.mark.usefixtures("offline_hub")


def write_submission(tmp_path: Path, *, local: str = "ck") -> Path:
    folder = tmp_path / "submissions" / "org"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.toml"
    path.write_text(manifest_text(local=local))
    return path


def refused_everywhere(path: Path, tmp_path: Path) -> list[str]:
    """validate (with and without --check-files) and resolve_checkpoint refuse, and never show the
    outside path."""
    manifest = load_manifest(path)
    messages = [one_line(p) for p in validate_paths([path], check_files=True)[0]]
    messages += [one_line(p) for p in validate_paths([path])[0]]
    with pytest.raises(CanonBenchError) as info:
        sources.resolve_checkpoint(manifest, manifest.submission.checkpoints[0], cache_dir=tmp_path / "cb")
    messages.append(one_line(info.value))
    assert all("outside the submission" in m and "checkpoints[0].local" in m for m in messages), messages
    assert not any("elsewhere" in m for m in messages), messages
    return messages


def test_a_local_checkpoint_folder_linked_outside_is_refused(tmp_path):
    fx.write_saelens(tmp_path / "elsewhere" / "ck", "standard")
    path = write_submission(tmp_path)
    (path.parent / "ck").symlink_to(tmp_path / "elsewhere" / "ck")
    refused_everywhere(path, tmp_path)


def test_a_checkpoint_file_linked_outside_is_refused(tmp_path):
    fx.write_saelens(tmp_path / "elsewhere" / "ck", "standard")
    path = write_submission(tmp_path)
    fx.write_saelens(path.parent / "ck", "standard")
    weights = path.parent / "ck" / "sae_weights.safetensors"
    weights.unlink()
    weights.symlink_to(tmp_path / "elsewhere" / "ck" / "sae_weights.safetensors")
    messages = [one_line(p) for p in validate_paths([path], check_files=True)[0]]
    assert len(messages) == 1 and "outside the submission" in messages[0], messages
    manifest = load_manifest(path)
    with pytest.raises(ManifestError):
        sources.resolve_checkpoint(manifest, manifest.submission.checkpoints[0])


def test_links_that_stay_inside_the_submission_are_fine(tmp_path):
    path = write_submission(tmp_path)
    fx.write_saelens(path.parent / "real", "standard")
    (path.parent / "ck").symlink_to("real")
    manifest = load_manifest(path)
    resolved = sources.resolve_checkpoint(manifest, manifest.submission.checkpoints[0])
    assert resolved.path == (path.parent / "real").resolve()
    assert validate_paths([path], check_files=True)[0] == []


def test_a_local_model_folder_linked_outside_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    path = write_submission(tmp_path)
    fx.write_saelens(path.parent / "ck", "standard")
    path.write_text(manifest_text(model_pin='local = "model"'))
    (path.parent / "model").symlink_to(tmp_path / "elsewhere")
    problems = [one_line(p) for p in validate_paths([path], check_files=True)[0]]
    assert len(problems) == 1 and "model.local" in problems[0] and "outside the submission" in problems[0]
    with pytest.raises(ManifestError):
        load_manifest(path).resolve_local("model", field="model.local")
