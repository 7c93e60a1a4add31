"""A stored number always means one computation: the unit's identity is its run spec and its inputs.

Runner-level checks on real manifests, with test-only tasks (tests/fixtures/fault_tasks.py) so the
computation itself is instant, plus static checks that tasks stay pure and that the leaderboard never
imports task code.
"""

from __future__ import annotations

import ast
import shutil
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import fault_tasks
from benchmark import cli
from benchmark.errors import CanonBenchError
from benchmark.results import ResultStore, choose_shown_units
from benchmark.runner import run_benchmark
from benchmark.spec import RunSpec, build_config, make_spec, parse_task_options, short_hash
from benchmark.submission.manifest import load_manifest
from test_faults import summary_statuses, write_submissions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fault_tasks(monkeypatch):
    fault_tasks.register(monkeypatch)


def _run(subs: Path, results: Path, *extra: str) -> dict:
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = cli.main(["run", str(subs), "--results", str(results), "--tasks", "fault-ok", "--quiet", *extra])
    assert code == 0, buffer.getvalue()
    return summary_statuses(buffer.getvalue())


def test_a_capped_run_never_satisfies_a_full_one(tmp_path):
    subs = write_submissions(tmp_path / "subs", ["a"])
    results = tmp_path / "results"
    assert _run(subs, results, "--limit", "5")[("acme/a", "fault-ok")] == "done"
    assert _run(subs, results)[("acme/a", "fault-ok")] == "done"  # the full run recomputes
    assert _run(subs, results)[("acme/a", "fault-ok")] == "cached"
    assert _run(subs, results, "--limit", "5")[("acme/a", "fault-ok")] == "cached"
    frame = ResultStore(results).read()
    assert frame["unit_key"].nunique() == 2
    assert sorted(frame.drop_duplicates("unit_key")["capped"].tolist()) == [False, True]
    shown = choose_shown_units(frame)
    assert not shown["capped"].any(), "the leaderboard shows the full run"
    assert json.loads(shown["spec"].iloc[0])["limit"] is None


def test_two_task_seeds_are_two_units(tmp_path):
    subs = write_submissions(tmp_path / "subs", ["a"])
    results = tmp_path / "results"
    assert _run(subs, results, "--seed", "1")[("acme/a", "fault-ok")] == "done"
    assert _run(subs, results, "--seed", "2")[("acme/a", "fault-ok")] == "done"
    assert _run(subs, results, "--seed", "1")[("acme/a", "fault-ok")] == "cached"
    frame = ResultStore(results).read()
    assert sorted(frame.drop_duplicates("unit_key")["task_seed"].tolist()) == [1, 2]


def test_spec_hash_changes_with_everything_that_changes_a_number():
    from tasks.cross_seed import CrossSeedTask

    base = make_spec(CrossSeedTask)
    variants = [
        make_spec(CrossSeedTask, seed=1), make_spec(CrossSeedTask, limit=10), make_spec(CrossSeedTask, dtype="bfloat16"),
        make_spec(CrossSeedTask, device="cuda:1"), make_spec(CrossSeedTask, batch_size=64),
        make_spec(CrossSeedTask, overrides={"n_tokens": "100"}),
    ]
    hashes = {v.hash for v in variants}
    assert base.hash not in hashes and len(hashes) == len(variants)
    # the device index and a default spelled out do not change the identity
    assert make_spec(CrossSeedTask, device="cuda:0").hash == make_spec(CrossSeedTask, device="cuda:3").hash
    assert make_spec(CrossSeedTask, overrides={"n_tokens": "16384"}).hash == base.hash
    assert base.capped is False and make_spec(CrossSeedTask, limit=3).capped is True
    assert RunSpec(**{**base.__dict__}).hash == base.hash


def test_task_options_are_typed_and_checked():
    from tasks.absorption import AbsorptionTask

    assert parse_task_options(["absorption.words_per_letter=200", "cross-seed.n_tokens=5"]) == {
        "absorption": {"words_per_letter": "200"}, "cross-seed": {"n_tokens": "5"}}
    cfg = build_config(AbsorptionTask.config_class, {"words_per_letter": "200", "min_probe_f1": "0.5"}, task="absorption")
    assert cfg.words_per_letter == 200 and cfg.min_probe_f1 == 0.5
    for bad in (["nonsense"], ["absorption.words_per_letter"], ["=3"]):
        with pytest.raises(CanonBenchError, match="TASK.FIELD=VALUE"):
            parse_task_options(bad)
    with pytest.raises(CanonBenchError, match="no option 'nope'"):
        build_config(AbsorptionTask.config_class, {"nope": "1"}, task="absorption")
    with pytest.raises(CanonBenchError, match="max_k"):
        build_config(AbsorptionTask.config_class, {"max_k": "ten"}, task="absorption")


def _local_submission(folder: Path) -> Path:
    from benchmark.sae.checkpoints.native import save_native
    from benchmark.sae.model import SAE, SAEConfig

    for seed in (0, 1):
        W_dec = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
        save_native(SAE(SAEConfig("standard", 4, 8), W_enc=W_dec.T.contiguous(), W_dec=W_dec), folder / f"seed{seed}")
    path = folder / "sub.toml"
    path.write_text(
        'name = "acme/local"\nkind = "checkpoints"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
        '[model]\nname = "m"\nhook = "blocks.0.hook_resid_post"\nlocal = "model"\n'
        '[sae]\narchitecture = "standard"\nwidth = 8\nd_in = 4\nformat = "native"\n'
        '[[checkpoints]]\nseed = 0\nlocal = "seed0"\n[[checkpoints]]\nseed = 1\nlocal = "seed1"\n', encoding="utf-8")
    return path


def test_changed_checkpoint_files_are_recomputed_with_a_warning(tmp_path, caplog):
    path = _local_submission(tmp_path / "sub")
    results = tmp_path / "results"
    first = run_benchmark([load_manifest(path)], ["fault-ok"], results_dir=results, cache_dir=tmp_path / "c", quiet=True)
    assert [o.status for o in first.outcomes] == ["done"]
    assert [o.status for o in run_benchmark([load_manifest(path)], ["fault-ok"], results_dir=results,
                                            cache_dir=tmp_path / "c", quiet=True).outcomes] == ["cached"]
    old_key = ResultStore(results).read()["unit_key"].iloc[0]
    weights = next((tmp_path / "sub" / "seed1").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # one weight changed in place
    with caplog.at_level(logging.WARNING):
        again = run_benchmark([load_manifest(path)], ["fault-ok"], results_dir=results, cache_dir=tmp_path / "c", quiet=True)
    assert [o.status for o in again.outcomes] == ["done"], again.render()
    assert "inputs changed" in again.outcomes[0].detail
    assert any("inputs changed" in r.getMessage() for r in caplog.records)
    frame = ResultStore(results).read()
    assert frame["unit_key"].nunique() == 1 and frame["unit_key"].iloc[0] != old_key
    assert list((results / "superseded").rglob(f"{old_key}.parquet")), "the stale unit is kept, out of the way"
    record = json.loads(frame["inputs"].iloc[0])
    assert record["checkpoints"][1]["files"]["sae.safetensors" if "sae.safetensors" in record["checkpoints"][1]["files"]
                                             else weights.name] != ""


def test_dry_run_names_the_spec_and_changes_nothing(tmp_path, capsys):
    subs = write_submissions(tmp_path / "subs", ["a"])
    results = tmp_path / "results"
    assert cli.main(["run", str(subs), "--results", str(results), "--tasks", "fault-ok", "--dry-run", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "would-run" in out and "seed 7" in out and not (results / "units").exists()


# --- dtype takes effect end to end --------------------------------------------------------------------
def test_dtype_bfloat16_changes_the_activations(bert_dir, tmp_path):
    from benchmark.provision import SubmissionInputs

    shutil.copytree(bert_dir, tmp_path / "model")  # a link out of the submission is refused
    path = tmp_path / "m.toml"
    path.write_text('kind = "recipe"\nname = "test/r"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
                    '[model]\nname = "tiny-bert"\nlocal = "model"\nhook = "blocks.1.hook_resid_post"\n'
                    '[recipe]\narchitecture = "topk"\nwidth = 16\nseeds = [0]\ntrains_on = "model"\ntokens = 200\n'
                    'context_size = 16\n[recipe.hyperparameters]\nk = 4\n', encoding="utf-8")
    manifest = load_manifest(path)
    fp32 = SubmissionInputs(manifest, cache_dir=tmp_path / "c", dtype="float32", quiet=True).activations()
    bf16 = SubmissionInputs(manifest, cache_dir=tmp_path / "c", dtype="bfloat16", quiet=True).activations()
    assert bf16.settings.model_dtype == "bfloat16" and bf16.key != fp32.key
    a, b = fp32.activations().numpy(), bf16.activations().numpy()
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.max() > 0, "bfloat16 must change the activations"
    assert diff.mean() < 0.05 * np.abs(a).mean(), "...but only by rounding"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from model_fixtures import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


# --- tasks are pure; the leaderboard never imports task code --------------------------------------------
WRITE_CALLS = {"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmtree", "save_file", "to_parquet", "to_csv",
               "write_table", "makedirs", "mkstemp", "mkdtemp", "savez", "symlink_to", "hardlink_to"}
#: Names that write only when called on these modules (``str.replace`` and ``dataclasses.replace`` do not).
MODULE_WRITE_CALLS = {"replace": {"os"}, "rename": {"os"}, "remove": {"os"}, "save": {"torch", "np", "numpy"},
                      "copy": {"shutil"}, "copyfile": {"shutil"}, "move": {"shutil"}}


def _task_sources() -> list[Path]:
    return sorted(p for p in (ROOT / "tasks").rglob("*.py"))


def test_no_task_module_writes_a_file_or_reads_the_environment():
    problems = []
    for path in _task_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                problems.append(f"{path.name}:{node.lineno} reads the environment ({node.attr})")
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
                if name in WRITE_CALLS or owner in MODULE_WRITE_CALLS.get(name, ()):
                    problems.append(f"{path.name}:{node.lineno} calls {owner + '.' if owner else ''}{name}")
                if name == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                        and any(m in str(node.args[1].value) for m in "wax+"):
                    problems.append(f"{path.name}:{node.lineno} opens a file for writing")
    assert not problems, problems


def test_the_leaderboard_imports_no_task_module_by_name():
    problems = []
    for path in sorted((ROOT / "leaderboard").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                problems.append(f"{path.name}:{node.lineno} imports a module dynamically")
            for name in names:
                if name.startswith("tasks.") and name not in ("tasks.all_tasks",):
                    problems.append(f"{path.name}:{node.lineno} imports {name}")
    assert not problems, problems


def test_no_task_imports_another_task():
    tasks = {p.stem for p in (ROOT / "tasks").glob("*.py")} | {p.name for p in (ROOT / "tasks").iterdir() if p.is_dir()}
    tasks -= {"__init__", "base", "citations", "reliability", "__pycache__"}  # shared helpers, not tasks
    problems = []
    for path in _task_sources():
        own = path.relative_to(ROOT / "tasks").parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks."):
                other = node.module.split(".")[1]
                if other in tasks and other != own:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
    assert not problems, problems


def test_one_meaning_per_metric_name():
    from tasks import all_tasks

    seen: dict[str, tuple[str, tuple]] = {}
    problems = []
    for name, cls in all_tasks().items():
        for metric in cls.metadata.metrics:
            definition = metric.definition()
            if metric.name in seen and seen[metric.name][1] != definition:
                problems.append(f"{metric.name}: {seen[metric.name][0]} says {seen[metric.name][1]}, {name} says {definition}")
            seen.setdefault(metric.name, (name, definition))
    assert not problems, problems


def test_metric_definition_check_catches_a_clash():
    from benchmark.metrics.definitions import metric_spec

    a = metric_spec("dead_fraction", "all-zero decoder rows", "lower", 0, 1)
    b = metric_spec("dead_fraction", "never active on held-out samples", "lower", 0, 1)
    assert a.definition() != b.definition() and a.as_main().definition() == a.definition()


# --- summaries are stored results -------------------------------------------------------------------------
def test_proxy_validity_is_a_stored_versioned_summary(tmp_path):
    import pandas as pd

    from benchmark.results import MetricValue, UnitProvenance, make_rows
    from benchmark.summaries import summarize
    from tasks import all_tasks
    from tasks.synthetic import SyntheticTask, proxy_validity

    store = ResultStore(tmp_path)
    meta = SyntheticTask.metadata
    values = [(0.9, 0.85), (0.5, 0.55), (0.7, 0.6), (0.3, 0.35)]
    for i, (gt, pw) in enumerate(values):
        prov = UnitProvenance(run_id=f"r{i}", submission=f"ref/s{i}", submission_kind="recipe", local=True,
                              task="synthetic", task_version=meta.version, benchmark_version="0", git_sha=None,
                              device="cpu", dtype="float32", spec={"seed": 0}, spec_hash=f"{i:016x}",
                              architecture="topk")
        store.write_unit(make_rows([MetricValue("gt_mcc", gt, subset="preset=toy"),
                                    MetricValue("decoder_pw_mcc", pw, subset="preset=toy")], prov, meta.directions,
                                   timestamp="2026", runtime_s=0.0))
    outcomes = summarize(tmp_path, registry={"synthetic": all_tasks()["synthetic"]})
    assert [o.error for o in outcomes] == [None] * len(meta.summaries) and "proxy_validity" in {o.name for o in outcomes}
    stored = store.read_summary("synthetic", "proxy_validity", "1")
    assert stored is not None and set(stored["summary_version"]) == {"1"}
    expected = proxy_validity(store.read())
    pd.testing.assert_series_equal(stored["pearson"].reset_index(drop=True), expected["pearson"].reset_index(drop=True),
                                   check_names=False)
    assert len(json.loads(stored["units"].iloc[0])) == len(values)


def test_a_task_seeds_summary_sees_every_task_seed_of_the_shown_spec_and_nothing_else(tmp_path):
    """``rows="task_seeds"``: the reruns of the shown units (same submission, version, inputs and
    spec apart from the seed); units of another config, other inputs or an older version stay out."""
    import dataclasses

    import pandas as pd

    from benchmark.results import MetricValue, UnitProvenance, make_rows, task_seed_family
    from benchmark.summaries import summarize
    from tasks.base import MetricSpec, SummarySpec, Task, TaskMetadata

    seen: dict[str, pd.DataFrame] = {}

    def capture(kind):
        def compute(rows):
            seen[kind] = rows
            return pd.DataFrame({"n": [len(rows)]})
        return compute

    meta = TaskMetadata(name="fam", version="2", title="t", description="d", accepts=("recipe",),
                        metrics=(MetricSpec("m", "d", "higher", main=True),),
                        summaries=(SummarySpec("shown", "1", "t", "d", ("n",), capture("shown")),
                                   SummarySpec("seeds", "1", "t", "d", ("n",), capture("seeds"), rows="task_seeds")))
    task = type("Fam", (Task,), {"metadata": meta})
    store = ResultStore(tmp_path)

    def write(sub, seed, *, config=None, inputs=None, version="2", value=0.0):
        inputs = inputs or sub[-1] * 16  # each submission's own inputs (unit keys are unique across submissions)
        spec = {"seed": seed, "task": "fam", "task_version": version, "config": config or {}}
        prov = UnitProvenance(run_id=f"r{sub[-1]}{seed}{version}", submission=sub, submission_kind="recipe", local=True,
                              task="fam", task_version=version, benchmark_version="0", git_sha=None, device="cpu",
                              dtype="float32", spec=spec, spec_hash=short_hash(spec), inputs_hash=inputs)
        store.write_unit(make_rows([MetricValue("m", value)], prov, meta.directions, timestamp=f"2026-01-0{seed + 1}",
                                   runtime_s=0.0))
        return f"{short_hash(spec)}-{inputs}"

    family = {write("o/a", s) for s in range(3)} | {write("o/b", s) for s in (0, 4)}
    outsiders = {write("o/a", 1, config={"k": 2}), write("o/b", 1, inputs="c" * 16), write("o/a", 3, version="1")}
    assert [o.error for o in summarize(tmp_path, registry={"fam": task})] == [None, None]
    assert set(seen["seeds"]["unit_key"]) == family and not outsiders & set(seen["seeds"]["unit_key"])
    assert set(seen["shown"]["task_seed"]) == {0} and len(seen["shown"]) == 2
    assert seen["seeds"].loc[seen["seeds"]["shown_unit"], "task_seed"].tolist() == [0, 0]
    stored = store.read_summary("fam", "seeds", "1")
    assert set(json.loads(stored["units"].iloc[0])) == family
    current = store.read()
    current = current[current["task_version"] == "2"]
    assert set(task_seed_family(current)["unit_key"]) == family
    with pytest.raises(ValueError, match="rows must be"):
        dataclasses.replace(meta.summaries[0], rows="all")
