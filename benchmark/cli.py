"""The ``canonbench`` command: verbs only; the work lives in the modules they call."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from benchmark.errors import CanonBenchError
from benchmark.version import BENCHMARK_VERSION

log = logging.getLogger("canonbench")

DEFAULT_RESULTS = Path("results")
DEFAULT_CACHE = Path(".canonbench") / "cache"
DEFAULT_SITE = Path("site")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings and errors only")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _run_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results store folder")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="downloads, activations, trained SAEs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    if seed:
        parser.add_argument("--seed", type=int, default=0,
                            help="task seed: every random choice inside a task derives from it (another seed is another unit)")
    parser.add_argument("--overwrite", action="store_true", help="recompute finished units (old rows are kept as superseded)")
    parser.add_argument("--dry-run", action="store_true", help="show what would run")
    parser.add_argument("--batch-size", type=int, default=None, help="override tasks' batch sizes (lower it on OOM)")
    parser.add_argument("--limit", type=int, default=None,
                        help="cap samples per task: a quick preview, stored as its own capped unit, never as the score")
    parser.add_argument("--task-option", action="append", default=[], metavar="TASK.FIELD=VALUE",
                        help="set a field of a task's config (see `canonbench tasks`); part of the run spec")
    parser.add_argument("--no-activations", action="store_true",
                        help="do not prepare model activations for tasks that only use them optionally")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: units one after another in this process; ray: units as Ray tasks on a cluster")
    parser.add_argument("--address", default=None, metavar="auto|ray://HOST:PORT",
                        help="the Ray cluster to use (--executor ray; default: RAY_ADDRESS, else a new local cluster)")
    parser.add_argument("--max-retries", type=int, default=None,
                        help="--executor ray: reruns of a unit whose worker died (default 2)")
    parser.add_argument("--download-models", action="store_true",
                        help="also download a base model to compute activations a task only uses optionally "
                             "(by default those come from a manifest's [activations] file or a model already here)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canonbench", description="Feature-consistency benchmark for sparse autoencoders.")
    parser.add_argument("--version", action="version", version=f"canonbench {BENCHMARK_VERSION}")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("run", help="run tasks on submissions and store the results")
    p.add_argument("paths", nargs="*", type=Path, default=[Path("submissions")], help="manifests or folders")
    _run_options(p)
    _common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the main job: every task on the offline reference submissions, then the site")
    p.add_argument("--submissions", type=Path, default=Path("submissions") / "reference",
                   help="what to run: the offline reference submissions by default")
    p.add_argument("--out", type=Path, default=DEFAULT_SITE, help="where to build the site")
    _run_options(p)
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("reliability", help="rerun tasks with several task seeds, then store the reliability lens "
                       "(evaluation noise, discriminability, rank stability, validity)")
    p.add_argument("paths", nargs="*", type=Path, default=[Path("submissions")], help="manifests or folders (the panel)")
    p.add_argument("--task-seeds", default="0-4", help="task seeds to run, e.g. 0-4 or 0,1,2 (at least 5 for a verdict)")
    _run_options(p, seed=False)
    _common(p)
    p.set_defaults(func=cmd_reliability)

    p = sub.add_parser("validate", help="check submission manifests")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--check-files", action="store_true", help="also check files exist and shapes agree (headers only)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    _common(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("new-submission", help="write a manifest for published checkpoints")
    p.add_argument("sources", nargs="+", help="hf://org/repo@REV/path or local folders, one per seed")
    p.add_argument("--name", required=True, help="submission name, org/name")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,...)")
    p.add_argument("--out", type=Path, default=None, help="manifest path (default submissions/<org>/<name>.toml)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    _common(p)
    p.set_defaults(func=cmd_new_submission)

    p = sub.add_parser("summarize", help="compute the tasks' cross-submission summaries and store them as results")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    _common(p)
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("tasks", help="list registered tasks and their metrics")
    _common(p)
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("results", help="show or export the results table")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--export", type=Path, default=None, help="write the whole table (.parquet or .csv)")
    _common(p)
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("leaderboard", help="build the static site")
    lb = p.add_subparsers(dest="action", required=True)
    b = lb.add_parser("build", help="render the site from the results store")
    b.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    b.add_argument("--submissions", type=Path, action="append", default=None,
                   help="a folder (or manifest) of submissions; repeat for several (default: submissions)")
    b.add_argument("--out", type=Path, default=DEFAULT_SITE)
    _common(b)
    b.set_defaults(func=cmd_leaderboard_build)

    p = sub.add_parser("synthetic", help="synthetic model organisms")
    syn = p.add_subparsers(dest="action", required=True)
    e = syn.add_parser("export", help="write a preset's training data and true dictionary")
    e.add_argument("preset")
    e.add_argument("--out", type=Path, required=True)
    _common(e)
    e.set_defaults(func=cmd_synthetic_export)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.quiet:  # the libraries' own progress bars and advice go too (read when they are imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        # huggingface_hub logs each of its own retries as a warning through its own handler
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def _task_list(args: argparse.Namespace) -> list[str] | None:
    return [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None


#: Environment variables that set task options (spelled out here: tasks never read the environment).
ENV_TASK_OPTIONS = {
    "CANONBENCH_EXPLAINER": ("explanation-similarity", "explainer"),
    "CANONBENCH_LLM_URL": ("explanation-similarity", "llm_url"),
    "CANONBENCH_LLM_MODEL": ("explanation-similarity", "llm_model"),
    "CANONBENCH_EMBEDDING_MODEL": ("explanation-similarity", "embedding_model"),
}


def _task_options(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    from benchmark.spec import parse_task_options

    options: dict[str, dict[str, str]] = {}
    for env, (task, name) in ENV_TASK_OPTIONS.items():
        if os.environ.get(env):
            options.setdefault(task, {})[name] = os.environ[env]
    for task, values in parse_task_options(args.task_option).items():  # flags win over the environment
        options.setdefault(task, {}).update(values)
    return options


def _run_kwargs(args: argparse.Namespace) -> dict:
    if args.max_retries is not None and args.executor != "ray":
        raise CanonBenchError("reruns of units whose worker died are a cluster setting; add --executor ray",
                              field="--max-retries")
    return dict(
        results_dir=args.results, cache_dir=args.cache_dir, device=args.device, dtype=args.dtype, seed=getattr(args, "seed", 0),
        limit=args.limit, batch_size=args.batch_size, task_options=_task_options(args), overwrite=args.overwrite,
        quiet=args.quiet, dry_run=args.dry_run, skip_activations=args.no_activations, executor=args.executor,
        address=args.address, **({"max_retries": args.max_retries} if args.max_retries is not None else {}),
        download_models=args.download_models,
    )


def _good_manifests(paths: list[Path]) -> tuple[list, list[str]]:
    """The valid manifests under ``paths``, and one line per bad one (printed now as ``error:``):
    a run goes on with the good ones, as ``validate`` lists every bad one."""
    from benchmark.submission.manifest import collect_manifests

    manifests, problems = collect_manifests(paths)
    lines = [" ".join(str(p).split()) for p in problems]
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    return manifests, lines


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.runner import run_benchmark

    manifests, rejected = _good_manifests(args.paths)
    if rejected and not manifests:
        return 2  # nothing valid to run: the errors above are the whole answer
    summary = run_benchmark(manifests, _task_list(args), **_run_kwargs(args))
    summary.rejected = rejected
    print(summary.render())
    return 1 if summary.failed or rejected else 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from benchmark.summaries import render_outcomes, summarize

    outcomes = summarize(args.results, tasks=_task_list(args))
    print(render_outcomes(outcomes))
    return 1 if any(o.error for o in outcomes) else 0


def cmd_reliability(args: argparse.Namespace) -> int:
    from benchmark.runner import parse_task_seeds, run_benchmark
    from benchmark.submission.manifest import load_manifests
    from benchmark.summaries import render_outcomes, summarize

    seeds = parse_task_seeds(args.task_seeds)
    manifests = load_manifests(args.paths)
    kwargs = _run_kwargs(args)
    kwargs.pop("seed")
    summary = run_benchmark(manifests, _task_list(args), task_seeds=seeds, **kwargs)
    print(summary.render())
    failed = bool(summary.failed)
    if not args.dry_run:
        outcomes = summarize(args.results, tasks=_task_list(args))
        print(render_outcomes(outcomes))
        failed = failed or any(o.error for o in outcomes)
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from benchmark.runner import run_benchmark
    from benchmark.summaries import render_outcomes, summarize

    manifests, rejected = _good_manifests([args.submissions])
    if rejected and not manifests:
        return 2
    summary = run_benchmark(manifests, _task_list(args), **_run_kwargs(args))
    summary.rejected = rejected
    print(summary.render())
    if not args.dry_run:
        outcomes = summarize(args.results)
        print(render_outcomes(outcomes))
    from leaderboard.build import build_site

    index = build_site(results_dir=args.results, submissions_dir=Path("submissions"), out_dir=args.out)
    print(f"leaderboard: {Path(index).resolve()}")
    return 1 if summary.failed or rejected else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from benchmark.submission.validate import validate_paths

    problems, checked = validate_paths(args.paths, check_files=args.check_files, cache_dir=args.cache_dir)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"ok: {checked} manifest(s) valid")
    return 0


def cmd_new_submission(args: argparse.Namespace) -> int:
    from benchmark.submission.new_submission import write_new_submission

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    path = write_new_submission(args.sources, name=args.name, seeds=seeds, out=args.out, cache_dir=args.cache_dir)
    print(f"wrote {path}; complete the fields marked TODO, then run: canonbench validate {path} --check-files")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from tasks import all_tasks

    for name, cls in all_tasks().items():
        meta = cls.metadata
        print(f"{name} v{meta.version}: {meta.title}")
        for m in meta.metrics:
            star = "*" if m.main else " "
            lo, hi = m.range
            better = "no direction" if m.direction == "none" else f"{m.direction} is better"
            print(f"  {star} {m.name} ({better}, range [{lo}, {hi}]) {m.description}")
        fields = dataclasses.fields(cls.config_class)
        if fields:
            options = ", ".join(f"{f.name}={_default_text(f)}" for f in fields)
            print(f"    options (--task-option {name}.FIELD=VALUE): {options}")
    return 0


def _default_text(fld) -> str:
    if fld.default is not dataclasses.MISSING:
        return repr(fld.default)
    if fld.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(fld.default_factory())  # type: ignore[misc]
    return "(required)"


EXPORT_FORMATS = (".csv", ".parquet")


def cmd_results(args: argparse.Namespace) -> int:
    from benchmark.results import ResultStore

    if args.export and args.export.suffix.lower() not in EXPORT_FORMATS:
        raise CanonBenchError(f"unknown export format {args.export.suffix or '(none)'!r}; use {' or '.join(EXPORT_FORMATS)}",
                              file=args.export, field="--export")
    if not args.results.is_dir():
        raise CanonBenchError("no results store here (run `canonbench run` first, or check the path)", file=args.results,
                              field="--results")
    frame = ResultStore(args.results).read()
    if args.export:
        try:
            if args.export.suffix.lower() == ".csv":
                from leaderboard.write import write_csv

                write_csv(frame, args.export)
            else:
                frame.to_parquet(args.export, index=False)
        except OSError as exc:
            raise CanonBenchError(f"cannot write the export: {exc.strerror or exc}", file=args.export, field="--export") from None
        print(f"wrote {len(frame)} rows to {args.export}")
        return 0
    cols = ["submission", "task", "task_version", "metric", "subset", "value", "std", "n", "task_seed", "capped"]
    print(frame[cols].to_string(index=False) if len(frame) else "no results yet")
    return 0


def cmd_leaderboard_build(args: argparse.Namespace) -> int:
    from leaderboard.build import build_site

    if not args.results.is_dir():
        raise CanonBenchError("no results store here (run `canonbench run` first, or check the path)", file=args.results,
                              field="--results")
    try:
        index = build_site(results_dir=args.results, submissions_dir=args.submissions or [Path("submissions")],
                           out_dir=args.out)
    except OSError as exc:
        raise CanonBenchError(f"cannot write the site: {exc.strerror or exc}", file=exc.filename or args.out,
                              field="--out") from None
    print(f"leaderboard: {Path(index).resolve()}")
    return 0


def cmd_synthetic_export(args: argparse.Namespace) -> int:
    from benchmark.data.organisms import export_preset

    card = export_preset(args.preset, args.out, quiet=args.quiet)
    print(f"wrote {args.preset} to {args.out} ({card})")
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same orderly stop as Ctrl-C (finished units kept, summary printed)."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess in the tests
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    terminated = False
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except CanonBenchError as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)  # always one line
        return 2
    except BrokenPipeError:  # `canonbench results | head`: the reader left, nothing is wrong
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep Python's exit flush quiet
        except OSError:
            pass
        return 0
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated) or isinstance(exc.__context__, _Terminated) or getattr(exc, "terminated", False)
        summary = getattr(exc, "summary", None)  # runner.RunInterrupted: what finished before Ctrl-C
        if summary is not None:
            print(summary.render())
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"{what}: finished results are kept; rerun to continue", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
