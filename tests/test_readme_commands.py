"""Every ``canonbench`` command in the README runs green on a fresh copy, offline.

The README's ```bash blocks are parsed and each ``canonbench`` command is run, in order, through the
CLI's entry point (``benchmark.cli.main``, in this process: a fresh interpreter per command costs
~8 s here, and ``test_cli_subprocess_prints_exactly_one_stderr_line`` covers the installed entry
point), with the working folder a temporary one holding a copy of ``submissions/``, with
``HF_HUB_OFFLINE=1`` and an empty Hub cache. What a reader brings or does between commands is
done here too, and only that: the SAEs the README points ``new-submission`` at are written in
sparsify's real multi-seed layout (``my-saes/pythia-topk/layers.3/seed<K>``), and the ``TODO`` fields
``new-submission`` leaves are filled in, as the README says to.

One thing is served instead of computed: the runs on ``submissions/reference`` train every reference
SAE first (about ten CPU-minutes even on an idle 2-core machine; ``make demo`` does it). The results
store starts with those units, written under the exact unit keys the runner plans for each command
(run spec from the command's own parsed options, inputs fingerprint from the manifests), so those
``run`` commands find them stored and skip them, as a rerun does. Everything else (validate,
new-submission, the researcher's cross-seed run, summarize, results, leaderboard build) computes for real.

Commands that need the network (``hf://``/``saelens://`` sources, ``--download-models``) or a GPU
(``--device cuda`` without one) would be skipped with that reason; the README has none today, and the
test says which it skipped. ``make`` lines are not ``canonbench`` commands (``make test`` runs this).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

import checkpoint_fixtures as ckf

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODEL_SHA = "607a30d783dfa663caf39e06633721c8d4cfcd7e"


def readme_commands(text: str) -> list[list[str]]:
    """The ``canonbench`` commands of the README's bash blocks, in order, as argument lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv and Path(argv[0]).name == "canonbench":
                commands.append(argv[1:])
    return commands


def skip_reason(argv: list[str]) -> str | None:
    """Why a command cannot run here (offline, maybe without a GPU), or None."""
    if any(a.startswith(("hf://", "saelens://")) for a in argv) or "--download-models" in argv:
        return "needs the network (Hugging Face Hub)"
    devices = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--device"]
    if any(d.startswith("cuda") for d in devices):
        import torch

        if not torch.cuda.is_available():
            return "needs a GPU (--device cuda)"
    return None


def fill_todos(path: Path) -> None:
    """What the README asks after new-submission: replace each TODO value."""
    values = {"title": '"Pythia-70m TopK SAEs, three seeds"', "authors": '["A. Researcher"]', "license": '"MIT"',
              "revision": f'"{MODEL_SHA}"'}
    lines = [f"{m.group(1)} = {values[m.group(1)]}" if (m := re.match(r"^(\w+) = .*TODO", line)) else line
             for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def seed_reference_units(work: Path, argv: list[str]) -> int:
    """Store a unit for every (manifest, task) ``run argv`` would compute on ``submissions/reference``,
    under the key the runner plans (see the module docstring); returns how many."""
    from benchmark import cli
    from benchmark.results import MetricValue, ResultStore, UnitProvenance, make_rows
    from benchmark.runner import build_specs
    from benchmark.submission.identity import inputs_hash
    from benchmark.submission.manifest import load_manifests
    from tasks import all_tasks

    args = cli.build_parser().parse_args(["run", *argv[1:]])
    registry = all_tasks()
    names = [t for t in args.tasks.split(",")] if args.tasks else list(registry)
    specs = build_specs(registry, names, seed=args.seed, limit=args.limit, dtype=args.dtype, device=args.device,
                        batch_size=args.batch_size, task_options=cli._task_options(args))
    store = ResultStore(work / "results")
    written = 0
    for manifest in load_manifests([work / p for p in args.paths]):
        for name in names:
            cls, spec = registry[name], specs[name]
            if cls.not_applicable(manifest):
                continue
            in_hash, record = inputs_hash(manifest, cache_dir=work / ".canonbench" / "cache")
            sub = manifest.submission
            recipe = getattr(sub, "recipe", None)
            provenance = UnitProvenance(
                run_id=f"20260101T000000Z-{written:08x}", submission=manifest.name, submission_kind=sub.kind,
                local=bool(sub.is_local), task=name, task_version=cls.metadata.version, benchmark_version="0.1.0",
                git_sha="0" * 40, device="cpu", dtype=spec.dtype, spec=spec.canonical(), spec_hash=spec.hash,
                inputs=record, inputs_hash=in_hash, architecture=recipe.architecture if recipe else None,
                width=recipe.width if recipe else None, seeds=list(sub.seeds),
            )
            metrics = [MetricValue(cls.metadata.main_metric.name, 0.5, std=0.01, n=3)]
            if cls.metadata.chance_metric:
                metrics.append(MetricValue(cls.metadata.chance_metric, 0.1, n=1))
            assert store.write_unit(make_rows(metrics, provenance, cls.metadata.directions,
                                              timestamp="2026-01-01T00:00:00+00:00", runtime_s=1.0))
            written += 1
    return written


def test_readme_lists_the_researchers_path():
    commands = [" ".join(c[:1]) for c in readme_commands(README.read_text())]
    assert len(commands) >= 10
    for verb in ("validate", "tasks", "run", "summarize", "results", "leaderboard", "new-submission"):
        assert verb in commands, verb


def test_every_readme_command_runs_green_offline(tmp_path, monkeypatch, capsys):
    from benchmark import cli

    work = tmp_path / "clone"
    work.mkdir()
    shutil.copytree(ROOT / "submissions", work / "submissions")
    ckf.write_sparsify_seeds(work / "my-saes" / "pythia-topk", "layers.3", seeds=(0, 1, 2), d_in=16, num_latents=64, k=8)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    outputs, skipped = {}, []
    for argv in readme_commands(README.read_text()):
        reason = skip_reason(argv)
        if reason is not None:
            skipped.append((" ".join(argv), reason))
            continue
        if argv[0] == "run" and any(p.startswith("submissions/reference") for p in argv[1:]):
            assert seed_reference_units(work, argv) > 0
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert code == 0, f"canonbench {' '.join(argv)} exited {code}:\n{out}\n{err}"
        outputs[" ".join(argv)] = out
        if argv[0] == "new-submission":
            name = argv[argv.index("--name") + 1]
            fill_todos(work / "submissions" / f"{name}.toml")

    print("skipped:", skipped or "none")
    assert skipped == [], skipped  # the README promises every command runs offline
    reference_runs = [out for cmd, out in outputs.items() if cmd.startswith("run submissions/reference")]
    assert reference_runs and all("cached" in out and "failed" not in out for out in reference_runs)
    researcher_run = next(out for cmd, out in outputs.items() if cmd.startswith("run submissions/myorg"))
    assert "done            myorg/pythia-topk × cross-seed" in researcher_run
    assert (work / "all.parquet").is_file()
    page = (work / "site" / "submissions" / "myorg~pythia-topk.html").read_text()
    assert "Cite this score" in page and "@misc{canonbench:myorg-pythia-topk:cross-seed" in page
    assert "blocks.3.hook_resid_post" in page and 'architecture = "topk"' in (work / "submissions" / "myorg" / "pythia-topk.toml").read_text()


def test_citation_file_names_this_version():
    import yaml

    from benchmark.version import BENCHMARK_VERSION

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["version"] == BENCHMARK_VERSION
    assert cff["title"].startswith("CanonBench") and cff["authors"]
    assert f"Version {BENCHMARK_VERSION}" in README.read_text()


@pytest.mark.parametrize("argv, reason", [
    (["new-submission", "hf://org/repo@main/x", "--name", "a/b"], "network"),
    (["run", "submissions", "--device", "cuda"], None),  # depends on the machine; checked below
    (["run", "submissions"], None),
])
def test_skip_reasons(argv, reason):
    got = skip_reason(argv)
    if argv[-1] == "cuda":
        import torch

        assert (got is None) == torch.cuda.is_available()
    else:
        assert (got is None) if reason is None else (reason in got)
