"""The task contract: metadata declared once, a run that turns inputs into metric values.

A task receives what it needs through a :class:`TaskContext` (loaded SAEs, activations, device) and
returns a :class:`TaskOutput`. It never downloads, never writes files and never renders; the runner
stores its output and the leaderboard reads :class:`TaskMetadata` instead of repeating it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import pandas as pd

from benchmark.results import MetricValue

if TYPE_CHECKING:
    from benchmark.submission.manifest import LoadedManifest
    from benchmark.sae.model import SAE

Direction = Literal["higher", "lower", "none"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric a task reports. ``range`` is (low, high), None for unbounded."""

    name: str
    description: str
    direction: Direction
    range: tuple[float | None, float | None] = (None, None)
    unit: str = ""
    main: bool = False


def metric_spec(name: str, description: str, direction: Direction, lo: float | None = None,
                hi: float | None = None, *, main: bool = False, unit: str = "") -> MetricSpec:
    """A :class:`MetricSpec` written on one line, as task tables of many metrics want."""
    return MetricSpec(name=name, description=description, direction=direction, range=(lo, hi), main=main, unit=unit)


@dataclass(frozen=True)
class TaskMetadata:
    """Everything the runner, the docs and the leaderboard need to know about a task."""

    name: str
    version: str
    title: str
    description: str
    metrics: tuple[MetricSpec, ...]
    accepts: tuple[Literal["checkpoints", "recipe"], ...]
    min_seeds: int = 1
    needs_activations: bool = False
    uses_activations: bool = False  # optional: the runner passes a provider when it can build one, else None
    citation: str = ""  # BibTeX of the work the task follows
    references: tuple[str, ...] = ()
    superseded: tuple[str, ...] = ()  # earlier versions and why they changed

    def __post_init__(self) -> None:
        mains = [m for m in self.metrics if m.main]
        if len(mains) != 1:
            raise ValueError(f"task {self.name!r} must mark exactly one main metric, found {len(mains)}")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r} declares a metric twice")

    @property
    def main_metric(self) -> MetricSpec:
        return next(m for m in self.metrics if m.main)

    def metric(self, name: str) -> MetricSpec:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"task {self.name!r} declares no metric {name!r}")

    @property
    def directions(self) -> dict[str, str]:
        return {m.name: m.direction for m in self.metrics}


@dataclass
class TaskContext:
    """What a task may use. ``load_saes`` returns ``{seed: SAE}`` (loaded lazily, once);
    ``activations`` is an activation provider or None when the task needs none."""

    manifest: "LoadedManifest"
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    quiet: bool = False
    cache_dir: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    load_saes: Callable[[], dict[int, "SAE"]] | None = None
    activations: Any = None

    @property
    def submission(self):
        return self.manifest.submission

    def saes(self) -> dict[int, "SAE"]:
        if self.load_saes is None:
            raise RuntimeError("this submission provides no SAEs to load")
        return self.load_saes()


@dataclass
class TaskOutput:
    """Metric values plus drill-down tables (stored as parquet artifacts) and the data hash."""

    metrics: list[MetricValue]
    artifacts: dict[str, pd.DataFrame] = field(default_factory=dict)
    data_hash: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # e.g. model revision, trained checkpoints


class Task:
    """Base class. Subclasses set ``metadata`` and implement :meth:`run`."""

    metadata: ClassVar[TaskMetadata]
    #: Set by tasks that need a model's SAEs: why a recipe trained on synthetic data does not apply.
    synthetic_recipe_reason: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.log = logging.getLogger(f"tasks.{self.metadata.name}")

    def not_applicable(self, manifest: "LoadedManifest") -> str | None:
        """Why this task cannot evaluate ``manifest``, or None when it can."""
        sub = manifest.submission
        if sub.kind not in self.metadata.accepts:
            return f"takes {' or '.join(self.metadata.accepts)} submissions, not {sub.kind}"
        if len(sub.seeds) < self.metadata.min_seeds:
            return f"needs at least {self.metadata.min_seeds} seeds, submission has {len(sub.seeds)}"
        if self.synthetic_recipe_reason and sub.kind == "recipe" and sub.recipe.trains_on != "model":
            return self.synthetic_recipe_reason
        return None

    def run(self, ctx: TaskContext) -> TaskOutput:  # pragma: no cover - abstract
        raise NotImplementedError
