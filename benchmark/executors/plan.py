"""Planning a run: which (submission × task × run spec) units to compute, shared by every executor.

For each unit the planner asks, in order: does the task apply to the submission (a pure function of
the manifest)? what are the submission's inputs (the fingerprint of :mod:`benchmark.submission.identity`,
computed once per submission)? is a valid unit with this spec and these inputs already stored (then
it is *cached*, unless ``overwrite``)? are there stored units of the same spec but other inputs (then
the new unit makes them *stale*)? A unit that gets past these is a :class:`PlannedUnit`; the rest
become a :class:`~benchmark.executors.outcome.UnitOutcome` at once. Planning runs where the results
store is (the driver, for a cluster run): it reads the store and the submissions' local files, and
never loads an SAE or a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from benchmark.errors import CanonBenchError
from benchmark.executors.outcome import UnitOutcome
from benchmark.results import ResultStore
from benchmark.spec import RunSpec
from benchmark.submission.identity import inputs_hash
from benchmark.submission.manifest import LoadedManifest

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(".canonbench") / "cache"


@dataclass
class RunSettings:
    """Run-wide settings that are not part of any spec (where files go, what to show)."""

    results_dir: Path
    cache_dir: Path = DEFAULT_CACHE_DIR
    device: str = "cpu"
    overwrite: bool = False
    quiet: bool = False
    dry_run: bool = False
    skip_activations: bool = False
    download_models: bool = False  # fetch a base model even for activations a task only uses optionally
    activations_factory: Any = None


@dataclass(frozen=True)
class PlannedUnit:
    """One unit to compute: the submission, the task class, its run spec and the inputs fingerprint.

    ``stale``: the store holds units of the same spec computed from other inputs (changed checkpoint
    files, recipe or model); they move to ``superseded/`` once this one is stored."""

    manifest: LoadedManifest
    task_cls: type
    spec: RunSpec
    inputs_hash: str
    inputs_record: dict[str, Any]
    stale: bool = False

    @property
    def meta(self):
        return self.task_cls.metadata

    @property
    def key(self) -> str:
        """The unit key in the results store: ``<spec hash>-<inputs hash>``."""
        return f"{self.spec.hash}-{self.inputs_hash}"

    @property
    def label(self) -> str:
        return f"{self.manifest.name} × {self.meta.name}"


class Planner:
    """Turns (manifest, task class, task seed) triples into planned units or immediate outcomes (see the module
    docstring); remembers each submission's fingerprint, so it is computed once per run."""

    def __init__(self, store: ResultStore, specs: dict[tuple[str, int], RunSpec], settings: RunSettings):
        """``specs``: the run spec of each (task name, task seed)."""
        self.store = store
        self.specs = specs
        self.settings = settings
        self._fingerprints: dict[str, tuple[str, dict[str, Any]] | CanonBenchError] = {}

    def plan(self, manifest: LoadedManifest, task_cls: type, task_seed: int) -> PlannedUnit | UnitOutcome:
        meta = task_cls.metadata
        spec = self.specs[(meta.name, task_seed)]
        try:
            reason = task_cls.not_applicable(manifest)
        except Exception as exc:  # a buggy check fails its unit, not the run
            log.error("%s × %s failed: applicability check raised %r", manifest.name, meta.name, exc)
            return UnitOutcome(manifest.name, meta.name, "failed", f"applicability check raised {type(exc).__name__}: {exc}")
        if reason:
            return UnitOutcome(manifest.name, meta.name, "not-applicable", reason)
        fingerprint = self._fingerprint(manifest)
        if isinstance(fingerprint, CanonBenchError):
            log.error("%s × %s failed: %s", manifest.name, meta.name, fingerprint)
            return UnitOutcome(manifest.name, meta.name, "failed", str(fingerprint))
        in_hash, in_record = fingerprint
        key = f"{spec.hash}-{in_hash}"
        if self.store.has_unit(manifest.name, meta.name, meta.version, key) and not self.settings.overwrite:
            return UnitOutcome(manifest.name, meta.name, "cached", spec.describe())
        stale = any(k.startswith(spec.hash + "-") and k != key
                    for k in self.store.units_of(manifest.name, meta.name, meta.version))
        if stale:
            log.warning("%s × %s: the submission's inputs changed since the stored result (checkpoint files, recipe "
                        "or model); recomputing", manifest.name, meta.name)
        if self.settings.dry_run:
            return UnitOutcome(manifest.name, meta.name, "would-run", spec.describe() + ("; inputs changed" if stale else ""))
        return PlannedUnit(manifest, task_cls, spec, in_hash, in_record, stale=stale)

    def _fingerprint(self, manifest: LoadedManifest) -> tuple[str, dict[str, Any]] | CanonBenchError:
        if manifest.name not in self._fingerprints:
            try:
                self._fingerprints[manifest.name] = inputs_hash(manifest, cache_dir=self.settings.cache_dir)
            except CanonBenchError as exc:
                self._fingerprints[manifest.name] = exc
        return self._fingerprints[manifest.name]

    def plan_all(self, units: Iterable[tuple[LoadedManifest, type, int]]) -> Iterator[PlannedUnit | UnitOutcome]:
        """:meth:`plan` of every (manifest, task class, task seed), in order."""
        for manifest, task_cls, task_seed in units:
            yield self.plan(manifest, task_cls, task_seed)


__all__ = ["DEFAULT_CACHE_DIR", "PlannedUnit", "Planner", "RunSettings"]
