"""Issue #14, classes 5 and 6: manifests that hang or spoof, and identifiers with a trailing newline.

5. A manifest that is a symlink to a FIFO or ``/dev/stdin`` hung validate / run --dry-run / leaderboard
   build; a symlink to another file leaked that file's first token in the error. Every caller now reads
   manifests through ``read_manifest_bytes``: regular files only, no links, non-blocking, size-capped,
   inside the submissions tree.
6. ``$`` matched before a final newline, so ``"org/name\\n"`` passed as a name (and repos, revisions,
   model names). Patterns are full-match; control characters are refused in every string field.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmark.errors import ManifestError, SourceError
from benchmark.submission import sources
from benchmark.submission.manifest import COMMIT_SHA, HUB_REPO, load_manifest, load_manifests, parse_manifest
from benchmark.submission.validate import validate_paths
from hang_guard import finishes
from manifest_texts import SHA, manifest_text
from refusals import one_line


pytestmark = pytest.mark.usefixtures("offline_hub")


# ----------------------------------------------------------------- 5. manifests that hang or spoof
@pytest.fixture
def submissions(tmp_path) -> Path:
    folder = tmp_path / "submissions" / "org"
    folder.mkdir(parents=True)
    return folder


def every_reader(path: Path, *, fifos: tuple[Path, ...] = ()) -> list[str]:
    """What validate, run (load_manifests, as ``run --dry-run`` and ``leaderboard build`` use) and
    load_manifest say about ``path``, each bounded in time."""
    messages = []
    problems, _ = finishes(lambda: validate_paths([path]), fifos=fifos)
    messages += [one_line(p) for p in problems]
    actions = [lambda: load_manifests([path])] + ([] if path.is_dir() else [lambda: load_manifest(path)])
    for action in actions:
        with pytest.raises(ManifestError) as info:
            finishes(action, fifos=fifos)
        messages.append(one_line(info.value))
    return messages


def test_a_manifest_linked_to_a_fifo_is_refused_without_hanging(submissions, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (submissions / "m.toml").symlink_to(fifo)
    for message in every_reader(submissions / "m.toml", fifos=(fifo,)):
        assert "symbolic link" in message
    for message in every_reader(submissions.parent, fifos=(fifo,)):  # found by scanning a folder
        assert "symbolic link" in message


def test_a_fifo_named_like_a_manifest_is_refused_without_hanging(submissions):
    os.mkfifo(submissions / "m.toml")
    for message in every_reader(submissions / "m.toml", fifos=(submissions / "m.toml",)):
        assert "FIFO" in message


def test_a_manifest_linked_to_stdin_or_a_device_is_refused(submissions):
    (submissions / "stdin.toml").symlink_to("/dev/stdin")
    (submissions / "zero.toml").symlink_to("/dev/zero")
    for name in ("stdin.toml", "zero.toml"):
        for message in every_reader(submissions / name):
            assert "symbolic link" in message


def test_a_manifest_linked_to_another_file_leaks_nothing_of_it(submissions, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2SECRET\napi_token = 'hunter3SECRET'\n")
    (submissions / "m.toml").symlink_to(secret)
    for message in every_reader(submissions / "m.toml") + every_reader(submissions.parent):
        assert "SECRET" not in message and "api_token" not in message and "secret" not in message, message
        assert "symbolic link" in message


def test_a_manifest_reached_through_a_linked_folder_outside_the_tree_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "m.toml").write_text(manifest_text("org/m"))
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "org").symlink_to(outside)
    for message in every_reader(tmp_path / "submissions" / "org" / "m.toml"):
        assert "outside submissions/" in message


# --------------------------------------------------------------------- 6. trailing newlines, controls
@pytest.mark.parametrize("field,text", [
    ("name", manifest_text("org/m\\n")),
    ("model.name", manifest_text(model="gpt2\\n")),
    ("model.hook", manifest_text(hook="blocks.3.hook_resid_post\\n")),
    ("model.revision", manifest_text(model_pin=f'revision = "{SHA}\\n"')),
    ("model.package", manifest_text(model_pin='package = "pkg\\n"')),
    ("checkpoints[0].repo", manifest_text().replace('local = "ck"', f'repo = "org/repo\\n"\nrevision = "{SHA}"')),
    ("checkpoints[0].revision", manifest_text().replace('local = "ck"', f'repo = "org/repo"\nrevision = "{SHA}\\n"')),
    ("links.code", manifest_text(extra='[links]\ncode = "https://example.org/x\\n"')),
])
def test_identifiers_with_a_trailing_newline_are_refused(tmp_path, field, text):
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, tmp_path / "m.toml")
    assert info.value.field == field, str(info.value)
    one_line(info.value)


@pytest.mark.parametrize("line,field", [
    ('title = "a\\u0007b"', "title"),
    ('license = "MIT\\n"', "license"),
    ('contact = "x\\u001b[31m"', "contact"),
    ('tags = ["ok", "b\\u202ead"]', "tags"),
    ('authors = ["A\\rB"]', "authors"),
])
def test_control_characters_are_refused_in_every_string_field(tmp_path, line, field):
    key = line.split(" ")[0]
    text = manifest_text().replace(f"{key} = ", "#") if key in ("title", "authors", "license") else manifest_text()
    text = line + "\n" + text
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, tmp_path / "m.toml")
    assert info.value.field == field and "control character" in str(info.value), str(info.value)


def test_notes_may_hold_newlines_and_tabs(tmp_path):
    text = 'notes = """two\n\tlines"""\n' + manifest_text()
    assert parse_manifest(text, tmp_path / "m.toml").submission.notes == "two\n\tlines"


def test_shared_patterns_are_full_match_for_every_caller():
    """The leaderboard uses these compiled patterns with .match: they must not accept a newline either."""
    assert COMMIT_SHA.match(SHA) and not COMMIT_SHA.match(SHA + "\n")
    assert HUB_REPO.match("org/repo") and not HUB_REPO.match("org/repo\n")
    assert not sources.COMMIT_SHA.match(SHA + "\n") and not sources.HUB_REPO.match("org/repo\n")
    for uri in ("hf://org/repo\n", "hf://org/repo@main\n/x", "hf://org/re\npo/x"):
        with pytest.raises(SourceError):
            sources.parse_source(uri)
