"""The ``canonbench`` command: verbs only; the work lives in the modules they call."""

from __future__ import annotations

import argparse
import logging
import sys
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


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results store folder")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="downloads, activations, trained SAEs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0, help="global seed; per-task generators derive from it")
    parser.add_argument("--overwrite", action="store_true", help="recompute finished units (old rows are kept as superseded)")
    parser.add_argument("--dry-run", action="store_true", help="show what would run")
    parser.add_argument("--batch-size", type=int, default=None, help="override tasks' batch sizes (lower it on OOM)")
    parser.add_argument("--limit", type=int, default=None, help="cap samples per task (quick looks; results are marked)")


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
    b.add_argument("--submissions", type=Path, default=Path("submissions"))
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


def _task_list(args: argparse.Namespace) -> list[str] | None:
    return [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None


def _run_kwargs(args: argparse.Namespace) -> dict:
    options = {}
    if args.batch_size:
        options["batch_size"] = args.batch_size
    if args.limit:
        options["limit"] = args.limit
    return dict(
        results_dir=args.results, cache_dir=args.cache_dir, device=args.device, dtype=args.dtype, seed=args.seed,
        overwrite=args.overwrite, quiet=args.quiet, dry_run=args.dry_run, options=options,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.submission.manifest import load_manifests
    from benchmark.runner import run_benchmark

    manifests = load_manifests(args.paths)
    summary = run_benchmark(manifests, _task_list(args), **_run_kwargs(args))
    print(summary.render())
    return 1 if summary.failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from benchmark.submission.manifest import load_manifests
    from benchmark.runner import run_benchmark

    manifests = load_manifests([args.submissions])
    summary = run_benchmark(manifests, _task_list(args), **_run_kwargs(args))
    print(summary.render())
    try:
        from leaderboard.build import build_site
    except ImportError:
        print("leaderboard renderer not available yet; results are in", args.results)
        return 1 if summary.failed else 0
    index = build_site(results_dir=args.results, submissions_dir=Path("submissions"), out_dir=args.out)
    print(f"leaderboard: {Path(index).resolve()}")
    return 1 if summary.failed else 0


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
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from benchmark.results import ResultStore

    frame = ResultStore(args.results).read()
    if args.export:
        if args.export.suffix == ".csv":
            frame.to_csv(args.export, index=False)
        else:
            frame.to_parquet(args.export, index=False)
        print(f"wrote {len(frame)} rows to {args.export}")
        return 0
    cols = ["submission", "task", "metric", "subset", "value", "std", "n"]
    print(frame[cols].to_string(index=False) if len(frame) else "no results yet")
    return 0


def cmd_leaderboard_build(args: argparse.Namespace) -> int:
    from leaderboard.build import build_site

    index = build_site(results_dir=args.results, submissions_dir=args.submissions, out_dir=args.out)
    print(f"leaderboard: {Path(index).resolve()}")
    return 0


def cmd_synthetic_export(args: argparse.Namespace) -> int:
    from benchmark.data.organisms import export_preset

    card = export_preset(args.preset, args.out, quiet=args.quiet)
    print(f"wrote {args.preset} to {args.out} ({card})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return args.func(args)
    except CanonBenchError as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt as exc:
        summary = getattr(exc, "summary", None)  # runner.RunInterrupted: what finished before Ctrl-C
        if summary is not None:
            print(summary.render())
        print("interrupted: finished results are kept; rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
