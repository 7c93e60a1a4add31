"""Hostile and broken manifests: every input either loads as a valid manifest or is refused with one
clear :class:`ManifestError` line naming the file and the field; the CLI then exits with code 2.

Property-based (hypothesis, derandomised so every run tries the same inputs) plus one example per
kind of hostility so that a failure says which protection broke.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark import cli
from benchmark.errors import ManifestError
from benchmark.submission.manifest import COMMIT_SHA, LoadedManifest, load_manifest, load_manifests, parse_manifest

try:  # every-problem listing used by ``canonbench validate`` (written alongside benchmark.submission.validate)
    from benchmark.submission.manifest import schema_problems
except ImportError:  # pragma: no cover
    schema_problems = None

REPO_ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
FUZZ = settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

VALID_CHECKPOINTS: dict[str, Any] = {
    "name": "acme/topk-16",
    "title": "TopK SAEs, two seeds",
    "authors": ["A. Author"],
    "license": "MIT",
    "kind": "checkpoints",
    "links": {"paper": "https://example.org/paper"},
    "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "hook": "blocks.3.hook_resid_post", "revision": SHA},
    "sae": {"architecture": "topk", "width": 64, "k": 8, "d_in": 384},
    "checkpoints": [
        {"seed": 0, "repo": "acme/saes", "revision": SHA, "path": "seed0"},
        {"seed": 1, "repo": "acme/saes", "revision": SHA, "path": "seed1"},
        {"seed": 2, "local": "ckpt/seed2"},
    ],
}
VALID_RECIPE: dict[str, Any] = {
    "name": "acme/relu-recipe",
    "title": "ReLU recipe",
    "authors": ["B. Author", "C. Author"],
    "license": "Apache-2.0",
    "kind": "recipe",
    "tags": ["baseline"],
    "recipe": {
        "architecture": "standard",
        "width": 32,
        "seeds": [0, 1, 2],
        "trains_on": "synthetic",
        "presets": ["zipf-hierarchy"],
        "hyperparameters": {"lr": 0.001, "steps": 100, "l1_coefficient": 0.5},
    },
}


# --- a tiny TOML writer (inline tables only), so generated Python data becomes manifest text ---------

def toml_string(text: str) -> str:
    escaped = json.dumps(text, ensure_ascii=False)  # escapes quotes, backslashes and C0 controls
    return escaped.replace("\x7f", "\\u007f")  # TOML also refuses a literal DEL


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(data: dict[str, Any]) -> str:
    return "".join(f"{toml_string(str(k))} = {toml_value(v)}\n" for k, v in data.items())


# --- strategies ---------------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "main", "HEAD", "refs/pr/1", "v1.0", SHA.upper(), SHA[:39], SHA + "0", "g" * 40,
    "..", "../x", "a/../../b", "/etc/passwd", "//server/share", "C:\\Windows", "C:x", "a\\b", "~/x",
    "\x00", "a\nb", "\x1b[31mred", "\u202egnp.exe", "<script>alert(1)</script>", "javascript:alert(1)",
    "hf://acme/saes@main/x", "acme", "acme/", "/saes", "a/b/c", "-x/y", "ünï/cødé", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "",
    " ", "zipf-hierarchy", "topk", "checkpoints", "recipe", "model", "synthetic", "nope/nope-does-not-exist",
]
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(HOSTILE_STRINGS),
    st.integers(min_value=10_000, max_value=200_000).flatmap(
        lambda n: st.sampled_from(["x" * n, "é" * n, "🦀" * (n // 4), "a/" * (n // 2)])
    ),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=5),
    st.dictionaries(st.text(max_size=12), scalars, max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["seed", "repo", "revision", "local", "path"]), scalars, max_size=5), max_size=3),
)
keys = st.one_of(st.text(min_size=1, max_size=20), st.sampled_from(["0", "kind", "seed", "__class__", "x" * 5000, "a\nb"]))


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _containers(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if isinstance(node, dict) else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _containers(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _containers(v, prefix + (i,))
    return out


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated_manifests(draw) -> dict[str, Any]:
    """A valid manifest with up to four hostile edits: set a value, delete a key, add an unknown key."""
    data = copy.deepcopy(draw(st.sampled_from([VALID_CHECKPOINTS, VALID_RECIPE])))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op == "add":
            where = draw(st.sampled_from(_containers(data)))
            _get(data, where)[draw(keys)] = draw(values)
            continue
        path = draw(st.sampled_from(_paths(data)))
        parent = _get(data, path[:-1])
        if op == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return data


@st.composite
def valid_manifests(draw) -> dict[str, Any]:
    """Manifests that must load: random but schema-conforming values."""
    part = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}\Z")
    seeds = draw(st.lists(st.integers(min_value=0, max_value=2**63 - 1), min_size=1, max_size=6, unique=True))
    # printable text: control characters are refused in every string field (notes may hold newlines/tabs)
    no_controls = st.characters(blacklist_categories=("Cc", "Cs"),
                                blacklist_characters="\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    printable = st.text(alphabet=no_controls, min_size=1, max_size=300)
    common = {
        "name": f"{draw(part)}/{draw(part)}",
        "title": draw(printable),
        "authors": draw(st.lists(st.text(alphabet=no_controls, min_size=1, max_size=50), min_size=1, max_size=5)),
        "license": draw(st.text(alphabet=no_controls, min_size=1, max_size=100)),
        "notes": draw(st.text(alphabet=st.one_of(no_controls, st.sampled_from("\n\t")), max_size=2000)),
    }
    arch = draw(st.sampled_from(["standard", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"]))
    width = draw(st.integers(min_value=1, max_value=1 << 24))
    if draw(st.booleans()):
        segment = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}\Z").filter(lambda s: s not in (".", ".."))
        rel = st.lists(segment, min_size=1, max_size=3).map("/".join)
        shas = st.from_regex(r"\A[0-9a-f]{40}\Z")
        ckpts = []
        for s in seeds:
            if draw(st.booleans()):
                ckpts.append({"seed": s, "local": draw(rel)})
            else:
                ckpts.append({"seed": s, "repo": f"{draw(part)}/{draw(part)}", "revision": draw(shas), "path": draw(rel)})
        return {**common, "kind": "checkpoints", "model": {"name": "m", "hook": "blocks.0.hook_resid_post", "package": "pkg"},
                "sae": {"architecture": arch, "width": width}, "checkpoints": ckpts}
    hyper = {"lr": draw(st.floats(min_value=1e-9, max_value=1.0)), "steps": draw(st.integers(1, 10_000_000))}
    return {**common, "kind": "recipe", "recipe": {"architecture": arch, "width": width, "seeds": seeds,
                                                   "trains_on": "synthetic", "presets": ["p"], "hyperparameters": hyper}}


# --- the property ---------------------------------------------------------------------------------------

def check_outcome(path: Path) -> LoadedManifest | ManifestError:
    """Load ``path``; any outcome other than a valid manifest or one good ManifestError fails."""
    try:
        loaded = load_manifest(path)
    except ManifestError as exc:
        message = str(exc)
        assert str(path) in message, message[:300]
        assert "\n" not in message and "\r" not in message, repr(message[:300])
        assert len(message) <= 1500, f"error is {len(message)} characters long"
        assert all(ch.isprintable() for ch in message), repr(message[:300])
        if exc.field is None:  # only whole-file problems (syntax, size, encoding) have no field
            assert any(w in exc.detail for w in ("TOML", "UTF-8", "bytes", "nested", "file", "folder", "read")), message
        else:
            assert exc.field and exc.field in message
        return exc
    assert_valid(loaded)
    return loaded


def assert_valid(loaded: LoadedManifest) -> None:
    """Invariants every accepted manifest satisfies, checked independently of pydantic."""
    sub = loaded.submission
    assert sub.kind in ("checkpoints", "recipe")
    assert len(set(sub.seeds)) == len(sub.seeds) and all(0 <= s < 2**63 for s in sub.seeds)
    if sub.kind == "checkpoints":
        for c in sub.checkpoints:
            for p in (c.path, c.local or ""):
                assert not p.startswith("/") and ".." not in p.split("/") and "\\" not in p
            if c.local is None:
                assert COMMIT_SHA.match(c.revision) and c.repo.count("/") == 1
        assert sub.model.revision is None or COMMIT_SHA.match(sub.model.revision)
    else:
        hyper = sub.recipe.hyperparameters
        for name, value in hyper.model_dump().items():
            if isinstance(value, float):
                assert math.isfinite(value), name
            assert not isinstance(value, bool) or type(hyper).model_fields[name].annotation is bool, name
    assert isinstance(sub.title, str) and len(sub.title) <= 300


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=mutated_manifests())
def test_mutated_manifests_load_or_fail_cleanly(fuzz_dir, data):
    path = fuzz_dir / "mutated.toml"
    text = to_toml(data)
    path.write_text(text, encoding="utf-8")
    outcome = check_outcome(path)
    if schema_problems is not None:  # the validate verb's listing agrees and is as clean
        problems = schema_problems(text, path)
        assert bool(problems) == isinstance(outcome, ManifestError)
        for problem in problems:
            assert isinstance(problem, ManifestError) and str(path) in str(problem)
            assert all(ch.isprintable() for ch in str(problem)) and len(str(problem)) <= 1500


@FUZZ
@given(text=st.text(max_size=400))
def test_arbitrary_text_loads_or_fails_cleanly(fuzz_dir, text):
    path = fuzz_dir / "text.toml"
    path.write_text(text, encoding="utf-8")
    check_outcome(path)


@FUZZ
@given(raw=st.binary(max_size=400), cut=st.integers(min_value=0, max_value=2000))
def test_arbitrary_bytes_and_truncations_fail_cleanly(fuzz_dir, raw, cut):
    path = fuzz_dir / "bytes.toml"
    path.write_bytes(raw)
    check_outcome(path)
    whole = to_toml(VALID_CHECKPOINTS).encode()
    path.write_bytes(whole[:cut] + raw[:8])  # a torn or corrupted copy of a good manifest
    check_outcome(path)


@settings(FUZZ, max_examples=80)
@given(data=valid_manifests())
def test_generated_valid_manifests_load_unchanged(fuzz_dir, data):
    path = fuzz_dir / "valid.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    loaded = check_outcome(path)
    assert isinstance(loaded, LoadedManifest), str(loaded)
    assert loaded.name == data["name"] and loaded.submission.title == data["title"]
    assert loaded.submission.seeds == ([c["seed"] for c in data["checkpoints"]] if data["kind"] == "checkpoints"
                                       else data["recipe"]["seeds"])


# --- one example per hostility, with the field it must name ----------------------------------------------

def _edit(base: dict, path: tuple, value: Any) -> dict:
    data = copy.deepcopy(base)
    parent = _get(data, path[:-1])
    if value is _DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


_DELETE = object()
C, R = VALID_CHECKPOINTS, VALID_RECIPE
CASES = {
    "wrong type: string width": (C, ("sae", "width"), "64", "sae.width"),
    "wrong type: bool seed": (C, ("checkpoints", 0, "seed"), True, "checkpoints[0].seed"),
    "wrong type: bool width": (R, ("recipe", "width"), True, "recipe.width"),
    "wrong type: float width": (R, ("recipe", "width"), 32.5, "recipe.width"),
    "wrong type: table for title": (C, ("title",), {"a": 1}, "title"),
    "infinite l1 coefficient": (R, ("recipe", "hyperparameters", "l1_coefficient"), math.inf, "recipe.hyperparameters.l1_coefficient"),
    "nan learning rate": (R, ("recipe", "hyperparameters", "lr"), math.nan, "recipe.hyperparameters.lr"),
    "huge string": (C, ("title",), "x" * 1_000_00, "title"),
    "huge unknown key": (C, ("x" * 100_000,), 1, '"xxxx'),
    "huge integer": (R, ("recipe", "seeds"), [0, 2**64], "recipe.seeds"),
    "duplicate checkpoint seeds": (C, ("checkpoints", 1, "seed"), 0, "checkpoints"),
    "duplicate recipe seeds": (R, ("recipe", "seeds"), [3, 3], "recipe.seeds"),
    "negative seed": (R, ("recipe", "seeds"), [-1], "recipe.seeds"),
    "branch name as revision": (C, ("checkpoints", 0, "revision"), "main", "checkpoints[0].revision"),
    "tag as model revision": (C, ("model", "revision"), "v1.0", "model.revision"),
    "short sha": (C, ("checkpoints", 1, "revision"), SHA[:12], "checkpoints[1].revision"),
    "dot-dot path": (C, ("checkpoints", 0, "path"), "../../etc", "checkpoints[0].path"),
    "absolute local": (C, ("checkpoints", 2, "local"), "/etc", "checkpoints[2].local"),
    "windows absolute local": (C, ("checkpoints", 2, "local"), "C:\\x", "checkpoints[2].local"),
    "dot-dot model local": (C, ("model",), {"name": "m", "hook": "h", "local": "a/../../b"}, "model.local"),
    "path-like model name": (C, ("model", "name"), "/home/user/.ssh", "model.name"),
    "not a package name": (C, ("model",), {"name": "m", "hook": "h", "package": "../evil"}, "model.package"),
    "javascript link": (C, ("links", "paper"), "javascript:alert(1)", "links.paper"),
    "unknown top-level key": (C, ("trust_remote_code",), True, "trust_remote_code"),
    "unknown nested key": (C, ("checkpoints", 0, "subfolder"), "x", "checkpoints[0].subfolder"),
    "digit-named unknown key": (C, ("sae", "0"), 1, "sae.0"),
    "control characters in a key": (C, ("sae", "a\n\x1b[2Jb"), 1, 'sae."a\\n\\x1b[2Jb"'),
    "not a repo id": (C, ("checkpoints", 0, "repo"), "https://huggingface.co/acme/saes", "checkpoints[0].repo"),
    "missing revision": (C, ("checkpoints", 0, "revision"), _DELETE, "checkpoints[0]"),
    "missing kind": (C, ("kind",), _DELETE, "kind"),
    "unknown kind": (C, ("kind",), ["x" * 50_000], "kind"),
    "too many presets": (R, ("recipe", "presets"), ["p"] * 1000, "recipe.presets"),
    "bad matryoshka widths": (R, ("recipe", "hyperparameters", "matryoshka_widths"), [0, -4], "recipe.hyperparameters.matryoshka_widths"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_hostile_input_names_its_field(tmp_path, case):
    base, path, value, field = CASES[case]
    manifest = tmp_path / "sub.toml"
    manifest.write_text(to_toml(_edit(base, path, value)), encoding="utf-8")
    outcome = check_outcome(manifest)
    assert isinstance(outcome, ManifestError), f"{case}: accepted"
    assert outcome.field is not None and outcome.field.startswith(field), (case, outcome.field)


def test_valid_examples_load(tmp_path):
    for data in (VALID_CHECKPOINTS, VALID_RECIPE):
        path = tmp_path / f"{data['kind']}.toml"
        path.write_text(to_toml(data), encoding="utf-8")
        assert isinstance(check_outcome(path), LoadedManifest)


WHOLE_FILE_CASES = {
    "deeply nested arrays": lambda p: p.write_text("a = " + "[" * 50_000 + "]" * 50_000),
    "deeply nested tables": lambda p: p.write_text("a = " + "{b = " * 5_000 + "1" + "}" * 5_000),
    "integer with 5000 digits": lambda p: p.write_text(to_toml(VALID_RECIPE) + "x = " + "9" * 5000 + "\n"),
    "huge file": lambda p: p.write_text(to_toml(VALID_RECIPE) + "# " + "x" * 3_000_000 + "\n"),
    "not UTF-8": lambda p: p.write_bytes(b"name = \"\xff\xfe\"\n"),
    "NUL bytes": lambda p: p.write_bytes(b"\x00" * 100),
    "a folder": lambda p: p.mkdir(),
    "missing": lambda p: None,
}


@pytest.mark.parametrize("case", list(WHOLE_FILE_CASES))
def test_broken_files_fail_with_one_line(tmp_path, case):
    path = tmp_path / "broken.toml"
    WHOLE_FILE_CASES[case](path)
    outcome = check_outcome(path)
    assert isinstance(outcome, ManifestError), case


def test_bom_is_tolerated(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + to_toml(VALID_RECIPE).encode())
    assert isinstance(check_outcome(path), LoadedManifest)


def test_duplicate_submission_names_across_files(tmp_path):
    for name in ("a.toml", "b.toml"):
        (tmp_path / name).write_text(to_toml(VALID_RECIPE), encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifests([tmp_path])
    assert info.value.field == "name" and str(tmp_path / "b.toml") in str(info.value)


def test_parse_manifest_text_is_checked_the_same_way():
    with pytest.raises(ManifestError) as info:
        parse_manifest(to_toml(_edit(VALID_CHECKPOINTS, ("checkpoints", 0, "revision"), "main")), "inline.toml")
    assert info.value.field == "checkpoints[0].revision" and "inline.toml" in str(info.value)


# --- through the command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["branch name as revision", "unknown top-level key", "control characters in a key"])
def test_cli_run_refuses_bad_manifest_with_exit_2_and_one_line(tmp_path, capsys, case):
    base, path, value, field = CASES[case]
    manifest = tmp_path / "sub.toml"
    manifest.write_text(to_toml(_edit(base, path, value)), encoding="utf-8")
    code = cli.main(["run", str(manifest), "--results", str(tmp_path / "results"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(manifest) in lines[0] and field in lines[0], err
    assert not (tmp_path / "results").exists()  # nothing ran, nothing was written


def test_cli_subprocess_prints_exactly_one_stderr_line(tmp_path):
    manifest = tmp_path / "sub.toml"
    manifest.write_text(to_toml(_edit(VALID_CHECKPOINTS, ("sae", "x\ny"), 1)), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "run", str(manifest), "--results", str(tmp_path / "r")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(manifest) in lines[0] and 'sae."x\\ny"' in lines[0], proc.stderr


def _validate_available() -> bool:
    try:
        from benchmark.submission.validate import validate_paths  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _validate_available(), reason="benchmark.submission.validate not written yet")
def test_cli_validate_refuses_bad_manifest(tmp_path, capsys):
    manifest = tmp_path / "sub.toml"
    manifest.write_text(to_toml(_edit(VALID_CHECKPOINTS, ("checkpoints", 1, "revision"), "main")), encoding="utf-8")
    code = cli.main(["validate", str(manifest), "--cache-dir", str(tmp_path / "cache")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and str(manifest) in lines[0] and "checkpoints[1].revision" in lines[0], lines


@pytest.mark.skipif(not _validate_available(), reason="benchmark.submission.validate not written yet")
def test_cli_validate_check_files_names_a_repo_that_does_not_exist(tmp_path, capsys):
    """A well-formed repo id that does not exist is only found by --check-files (offline here: the
    empty cache cannot supply it), and the error names the manifest and the checkpoint entry."""
    data = _edit(VALID_CHECKPOINTS, ("checkpoints",), [
        {"seed": 0, "repo": "nobody-xyz/does-not-exist-123", "revision": SHA, "path": "seed0"},
    ])
    manifest = tmp_path / "sub.toml"
    manifest.write_text(to_toml(data), encoding="utf-8")
    assert cli.main(["validate", str(manifest), "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    code = cli.main(["validate", str(manifest), "--check-files", "--cache-dir", str(tmp_path / "cache")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, lines
    # Offline, "does not exist" and "not downloaded yet" look the same, so the error may name the
    # whole checkpoint entry rather than its repo key.
    assert str(manifest) in lines[0] and "checkpoints[0]" in lines[0], lines
