"""Every ``canonbench`` command in the README runs green on a fresh copy, offline.

The README's ```bash blocks are parsed and each ``canonbench`` command is run, in order, through the
CLI's entry point (``benchmark.cli.main``, in this process: a fresh interpreter per command costs
~8 s here, and ``test_cli_subprocess_prints_exactly_one_stderr_line`` covers the installed entry
point), with the working folder a temporary one holding a copy of ``submissions/``, with
``HF_HUB_OFFLINE=1`` and an empty Hub cache. What a reader brings or does between commands is
done here too, and only that: the SAEs the README points ``new-submission`` at are written in
sparsify's real multi-seed layout (``my-saes/pythia-topk/layers.3/seed<K>``), and the ``TODO`` fields
``new-submission`` leaves are filled in, as the README says to.

One thing is served instead of computed: the runs on ``submissions/reference`` and
``submissions/panel`` train every SAE they name first (``run submissions/reference``: about ten
CPU-minutes even on an idle 2-core machine, ``make demo`` does it; ``reliability submissions/panel``:
30 units of 2,000-step panels, over 15 minutes under load). The results store starts with those units,
written under the exact unit keys the runner plans for each command (run spec from the command's own
parsed options and task seeds, inputs fingerprint from the manifests), so those commands find them
stored and skip them, as a rerun does; the panel's rows are shaped like the synthetic task's (per
preset, per seed, per seed pair) with values that differ by architecture, seed and task seed, so the
reliability lens ``reliability`` then stores is computed on a non-degenerate table. Everything else
(validate, new-submission, the researcher's cross-seed run, summarize, the reliability summaries,
results, leaderboard build) computes for real.

Commands that need the network (``hf://``/``saelens://`` sources, ``--download-models``), a GPU
(``--device cuda`` without one) or a Ray cluster (``--executor ray``) are skipped with that reason
(their flags are still parsed); the README may hold only the one cluster command of its "On a
cluster" section, and the test says which it skipped. ``make`` lines are not ``canonbench`` commands (``make test`` runs this).
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
#: The one reason a README command may be skipped: the "On a cluster" section's command runs on a Ray
#: cluster the reader started (``ray start``); here it is parsed (every flag must exist) but not run.
CLUSTER = "needs a Ray cluster (--executor ray)"


def readme_commands(text: str) -> list[list[str]]:
    """The ``canonbench`` commands of the README's bash blocks, in order, as argument lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():  # a line ending in \ goes on
            argv = shlex.split(line, comments=True)
            if argv and Path(argv[0]).name == "canonbench":
                commands.append(argv[1:])
    return commands


def skip_reason(argv: list[str]) -> str | None:
    """Why a command cannot run here (offline, maybe without a GPU, no Ray cluster), or None."""
    if "--executor" in argv and argv[argv.index("--executor") + 1] == "ray":
        return CLUSTER
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


SERVED = ("submissions/reference", "submissions/panel")  # what the README's runs train first (see above)


def served_metrics(cls, manifest, task_seed: int, index: int) -> list:
    """Rows shaped like what ``cls`` stores for ``manifest``: the main metric and its chance level, and
    for the synthetic task its per-preset, per-seed and per-pair rows, with values that vary by
    submission (``index``), training seed and task seed."""
    from benchmark.results import MetricValue

    meta = cls.metadata
    if meta.name != "synthetic":
        metrics = [MetricValue(meta.main_metric.name, 0.5, std=0.01, n=3)]
        if meta.chance_metric:
            metrics.append(MetricValue(meta.chance_metric, 0.1, n=1))
        return metrics
    recipe = manifest.submission.recipe
    seeds, metrics = list(manifest.submission.seeds), []
    for preset in recipe.presets:
        subset = f"preset={preset}"
        per_seed = [0.5 + 0.08 * index + 0.01 * s for s in seeds]  # GT-MCC is fixed by the SAEs, not the task seed
        metrics.append(MetricValue("gt_mcc", sum(per_seed) / len(per_seed), std=0.01, n=len(seeds), subset=subset))
        metrics += [MetricValue("gt_mcc", v, n=1, subset=f"{subset},seed={s}") for s, v in zip(seeds, per_seed)]
        metrics.append(MetricValue("gt_mcc_chance", 0.1 + 0.001 * task_seed, n=8, std=0.002, subset=subset))
        metrics.append(MetricValue("chance_mcc", 0.12 + 0.001 * task_seed, n=8, std=0.002, subset=subset))
        pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
        pair_values = [0.4 + 0.07 * index + 0.005 * (a + b) for a, b in pairs]
        metrics.append(MetricValue("decoder_pw_mcc", sum(pair_values) / len(pair_values), std=0.01, n=len(pairs), subset=subset))
        metrics += [MetricValue("decoder_pw_mcc", v, n=1, subset=f"{subset},pair={a}-{b}") for (a, b), v in zip(pairs, pair_values)]
    return metrics


def seed_served_units(work: Path, argv: list[str]) -> int:
    """Store a unit for every (manifest, task, task seed) that ``run argv`` or ``reliability argv``
    would compute on a :data:`SERVED` folder, under the key the runner plans (see the module
    docstring); returns how many."""
    from benchmark import cli
    from benchmark.results import ResultStore, UnitProvenance, make_rows
    from benchmark.runner import build_specs, parse_task_seeds
    from benchmark.submission.identity import inputs_hash
    from benchmark.submission.manifest import load_manifests
    from tasks import all_tasks

    args = cli.build_parser().parse_args(argv)
    task_seeds = parse_task_seeds(args.task_seeds) if argv[0] == "reliability" else [args.seed]
    registry = all_tasks()
    names = [t for t in args.tasks.split(",")] if args.tasks else list(registry)
    store = ResultStore(work / "results")
    written = 0
    for task_seed in task_seeds:
        specs = build_specs(registry, names, seed=task_seed, limit=args.limit, dtype=args.dtype, device=args.device,
                            batch_size=args.batch_size, task_options=cli._task_options(args))
        for index, manifest in enumerate(load_manifests([work / p for p in args.paths])):
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
                assert store.write_unit(make_rows(served_metrics(cls, manifest, task_seed, index), provenance,
                                                  cls.metadata.directions, timestamp="2026-01-01T00:00:00+00:00",
                                                  runtime_s=1.0))
                written += 1
    return written


def test_readme_lists_the_researchers_path():
    commands = [" ".join(c[:1]) for c in readme_commands(README.read_text())]
    assert len(commands) >= 10
    for verb in ("validate", "tasks", "run", "summarize", "reliability", "results", "leaderboard", "new-submission"):
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
            cli.build_parser().parse_args(argv)  # still a valid command: argparse exits 2 on an unknown flag
            continue
        if argv[0] in ("run", "reliability") and any(p.startswith(SERVED) for p in argv[1:]):
            assert seed_served_units(work, argv) > 0
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert code == 0, f"canonbench {' '.join(argv)} exited {code}:\n{out}\n{err}"
        outputs[" ".join(argv)] = out
        if argv[0] == "new-submission":
            name = argv[argv.index("--name") + 1]
            fill_todos(work / "submissions" / f"{name}.toml")

    print("skipped:", skipped or "none")
    # the README promises every command runs offline; only the cluster section's command needs more
    assert [reason for _, reason in skipped] == [CLUSTER], skipped
    served_runs = [out for cmd, out in outputs.items() if cmd.startswith(("run submissions/reference", "reliability"))]
    assert len(served_runs) >= 3 and all("cached" in out and "failed" not in out for out in served_runs)
    from benchmark.results import ResultStore

    lens = ResultStore(work / "results").read_summary("synthetic", "reliability", "1")
    assert lens is not None and {"gt_mcc", "decoder_pw_mcc"} <= set(lens["metric"])
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
    (["run", "submissions", "--executor", "ray", "--address", "auto"], "Ray cluster"),
])
def test_skip_reasons(argv, reason):
    got = skip_reason(argv)
    if argv[-1] == "cuda":
        import torch

        assert (got is None) == torch.cuda.is_available()
    else:
        assert (got is None) if reason is None else (reason in got)
