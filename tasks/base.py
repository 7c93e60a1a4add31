"""The task contract: metadata declared once; a run that turns prepared inputs into metric values.

A task declares, in one :class:`TaskMetadata`: its name and version, its metrics (direction, range,
unit), the inputs the runner must prepare for it (SAEs, model activations, synthetic organisms), the
artifacts it returns (tables with fixed columns), the plots the leaderboard draws from its rows and
artifacts, and its cross-submission summaries (statistics over the results table, computed by
``canonbench summarize`` and stored as results). Its settings are one frozen dataclass
(``config_class``) whose defaults are declared once; the runner builds it from the run spec.

A task receives everything through :class:`TaskInputs` (loaded or trained SAEs, an activation
provider, organisms, its config and spec, and a runner-owned :class:`~benchmark.cache.TaskCache`
for expensive intermediates) and returns a :class:`TaskOutput`. It never downloads, never writes a
file, never reads an environment variable and never renders: the runner prepares and stores, and the
leaderboard reads this metadata instead of repeating it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import pandas as pd

from benchmark.metrics.definitions import Direction, MetricSpec, metric_spec  # noqa: F401 - the task authors' names
from benchmark.results import MetricValue

if TYPE_CHECKING:
    from benchmark.cache import TaskCache
    from benchmark.sae.model import SAE
    from benchmark.spec import RunSpec
    from benchmark.submission.manifest import LoadedManifest


@dataclass(frozen=True)
class ArtifactSpec:
    """A drill-down table a task returns with each unit (stored as parquet beside its rows)."""

    name: str
    description: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class PlotSpec:
    """A plot the leaderboard draws on the task's page, from stored rows or artifacts only.

    Kinds (the leaderboard implements each once, for every task):

    * ``metric_vs_l0``: ``metric`` (subset "all") against the submission's stored L0, one series per
      architecture;
    * ``metric_pair``: ``y_metric`` against ``x_metric`` for every (submission, slice) whose subset
      starts with ``subset_prefix``, one series per slice, ``diagonal`` draws y = x;
    * ``metric_scatter``: ``y_metric`` against ``x_metric`` (both subset "all"), one point per submission,
      one series per architecture; ``front = (x better, y better)`` (each "lower" or "higher") also draws
      the Pareto front, the submissions no other submission beats on both axes;
    * ``artifact_histogram``: the artifact's ``x_low``/``x_high``/``y`` bin counts as step lines
      (heights as shares of each submission's total), one line per submission;
    * ``artifact_curve``: the artifact's ``y`` at bin centres of ``x_low``/``x_high`` (or at ``x``),
      one line per submission; rows with ``n`` == 0 are skipped when ``n`` is given;
    * ``metric_vs_slice``: ``metric`` against the number in its subset ``<subset_prefix><number>``
      (e.g. ``width=1024``; ``log2_x`` plots its base-2 logarithm), one line per submission, labelled
      with its architecture.
    """

    kind: Literal["metric_vs_l0", "metric_pair", "metric_scatter", "artifact_histogram", "artifact_curve",
                  "metric_vs_slice"]
    id: str
    title: str
    metric: str | None = None
    x_metric: str | None = None
    y_metric: str | None = None
    subset_prefix: str | None = None
    diagonal: bool = False
    log2_x: bool = False
    front: tuple[Literal["lower", "higher"], Literal["lower", "higher"]] | None = None
    artifact: str | None = None
    x: str | None = None
    x_low: str | None = None
    x_high: str | None = None
    y: str | None = None
    n: str | None = None
    x_label: str = ""
    y_label: str = ""
    x_range: tuple[float | None, float | None] = (None, None)
    y_range: tuple[float | None, float | None] = (None, None)
    note: str = ""


@dataclass(frozen=True)
class SummaryInput:
    """A stored artifact a summary reads besides its task's rows: the artifact ``artifact`` of the
    shown unit (:func:`benchmark.results.choose_shown_units`) of ``task`` (the summary's own task or
    another registered one, at its current version) of every submission that has one. A summary
    joins two tasks' results this way without either task reading the other's."""

    task: str
    artifact: str


@dataclass(frozen=True)
class SummarySpec:
    """A statistic across submissions, computed from the stored rows by ``canonbench summarize``
    and stored (versioned) in the results store; the leaderboard shows the stored table.

    ``compute(rows)`` takes rows of this task's current version (the results schema) and returns a
    table with ``columns``; it is a pure function of the rows. Which rows: ``rows="shown"`` (default)
    the shown unit of each submission (:func:`benchmark.results.choose_shown_units`);
    ``rows="task_seeds"`` every stored unit that differs from a shown unit only in its task seed
    (:func:`benchmark.results.task_seed_family`: the reruns that measure evaluation noise).
    ``inputs`` names stored artifacts the summary also reads (:class:`SummaryInput`); a summary that
    declares any is called ``compute(rows, artifacts)``, where ``artifacts`` is a read-only mapping
    ``(task, artifact) → table``: that artifact of every submission's shown unit of that task, stacked,
    with ``submission`` and ``unit_key`` columns first (no rows, but the declared columns, when none is
    stored). It stays a pure function of what it is given, and the stored table's ``units`` lists the
    units of every task it read.
    ``role`` tells the leaderboard where the table belongs (``""``: a plain summary section;
    ``"reliability"``, ``"reliability_noise"``, ``"reliability_pairs"``, ``"reliability_ranks"``: the
    task page's reliability section and the rank groups of its tables, see :mod:`tasks.reliability`)."""

    name: str
    version: str
    title: str
    description: str
    columns: tuple[str, ...]
    compute: Callable[..., pd.DataFrame]
    rows: Literal["shown", "task_seeds"] = "shown"
    role: str = ""
    inputs: tuple[SummaryInput, ...] = ()

    def __post_init__(self) -> None:
        if self.rows not in ("shown", "task_seeds"):
            raise ValueError(f"summary {self.name!r}: rows must be 'shown' or 'task_seeds', not {self.rows!r}")
        if not all(isinstance(i, SummaryInput) for i in self.inputs):
            raise ValueError(f"summary {self.name!r}: inputs must be SummaryInput(task, artifact) entries")
        if len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"summary {self.name!r} declares an input twice")


@dataclass(frozen=True)
class UnitResources:
    """What one unit of a task needs from a machine: a cluster executor schedules units by it (the
    local executor runs them one at a time and ignores it).

    ``cpus``: CPU cores the unit keeps busy. ``memory_gb``: host memory at its peak, in GiB, for the
    largest submissions expected (a scheduling promise, not a limit). ``gpu``: its heavy computation
    runs on the accelerator; with ``--device cuda`` such a unit takes ``gpu_share`` of one GPU, and a
    unit without it only a token share (it still places tensors on the device, so it must run on a
    GPU node)."""

    cpus: float = 1.0
    memory_gb: float = 1.0
    gpu: bool = False
    gpu_share: float = 1.0

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.memory_gb <= 0:
            raise ValueError(f"cpus and memory_gb must be positive, got {self.cpus} and {self.memory_gb}")
        if not 0 < self.gpu_share <= 1:
            raise ValueError(f"gpu_share is a share of one GPU in (0, 1], got {self.gpu_share}")


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
    needs_saes: bool = False  # the runner loads (or trains) the submission's SAEs before the unit is timed
    needs_model: bool = False  # an activation provider for the model and hook (no corpus pass; e.g. prompts only)
    needs_activations: bool = False  # the runner prepares the model's corpus activations; the unit fails without
    uses_activations: bool = False  # optional: used when available (and not skipped with --no-activations)
    needs_organisms: bool = False  # synthetic presets: the runner builds organisms and trains recipes on them
    needs_ladder: bool = False  # every width of the submission's width ladder (TaskInputs.ladder / OrganismInputs.ladder)
    artifacts: tuple[ArtifactSpec, ...] = ()
    plots: tuple[PlotSpec, ...] = ()
    summaries: tuple[SummarySpec, ...] = ()
    citation: str = ""  # BibTeX of the work the task follows
    references: tuple[str, ...] = ()
    superseded: tuple[str, ...] = ()  # earlier versions and why they changed
    notes: tuple[str, ...] = ()  # caveats shown on the task page (e.g. differences from a reference implementation)
    secrets: tuple[str, ...] = ()  # environment variables (API keys) the runner may pass in TaskInputs.secrets
    resources: UnitResources = UnitResources()  # what one unit needs from a cluster node (see UnitResources)
    #: The stored metric that is the main metric's chance level (same subsets as the main metric),
    #: e.g. cross-seed's ``chance_mcc``; the leaderboard shows it beside the score and never computes one.
    chance_metric: str | None = None

    def __post_init__(self) -> None:
        mains = [m for m in self.metrics if m.main]
        if len(mains) != 1:
            raise ValueError(f"task {self.name!r} must mark exactly one main metric, found {len(mains)}")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r} declares a metric twice")
        if self.chance_metric is not None and (self.chance_metric not in names or self.chance_metric == mains[0].name):
            raise ValueError(f"task {self.name!r} chance_metric {self.chance_metric!r} must be another declared metric")
        artifacts = {a.name for a in self.artifacts}
        for plot in self.plots:
            if plot.artifact and plot.artifact not in artifacts:
                raise ValueError(f"task {self.name!r} plot {plot.id!r} reads undeclared artifact {plot.artifact!r}")
            for metric in (plot.metric, plot.x_metric, plot.y_metric):
                if metric and metric not in names:
                    raise ValueError(f"task {self.name!r} plot {plot.id!r} reads undeclared metric {metric!r}")
            if plot.front is not None and (len(plot.front) != 2 or not set(plot.front) <= {"lower", "higher"}):
                raise ValueError(f"task {self.name!r} plot {plot.id!r}: front must be two of 'lower'/'higher', "
                                 f"got {plot.front!r}")
        for summary in self.summaries:
            for item in summary.inputs:
                if item.task == self.name and item.artifact not in artifacts:
                    raise ValueError(f"task {self.name!r} summary {summary.name!r} reads undeclared artifact "
                                     f"{item.artifact!r}")

    @property
    def main_metric(self) -> MetricSpec:
        return next(m for m in self.metrics if m.main)

    def metric(self, name: str) -> MetricSpec:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"task {self.name!r} declares no metric {name!r}")

    def artifact(self, name: str) -> ArtifactSpec:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise KeyError(f"task {self.name!r} declares no artifact {name!r}")

    @property
    def directions(self) -> dict[str, str]:
        return {m.name: m.direction for m in self.metrics}


@dataclass(frozen=True)
class NoConfig:
    """The config of a task without settings."""


@dataclass
class OrganismInputs:
    """One synthetic preset of a submission: the organism and the SAEs trained or loaded on it.
    ``ladder`` (``{width: {seed: SAE}}``, the primary width included) is filled for tasks that
    declare ``needs_ladder``."""

    organism: Any  # benchmark.data.organisms.Organism
    saes: dict[int, "SAE"]
    records: list[dict[str, Any]] = field(default_factory=list)  # provenance of each SAE
    ladder: dict[int, dict[int, "SAE"]] | None = None
    ladder_records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TaskInputs:
    """What a task may use, prepared by the runner before the unit is timed.

    ``saes``: ``{seed: SAE}`` when the task declares ``needs_saes`` (else None). ``activations``: an
    activation provider for the submission's model and hook; its corpus activations are ready when
    the task declares ``needs_activations`` or ``uses_activations`` (None when the task uses none or
    they are skipped), and it only locates the model for ``needs_model``. ``organisms``: ``{preset: OrganismInputs}`` for tasks
    that declare ``needs_organisms``. ``ladder``: ``{width: {seed: SAE}}`` of every width of the
    submission's width ladder (the primary width included; one width without a ladder) for tasks
    that declare ``needs_ladder`` and evaluate a model's SAEs (on organisms it is in
    ``OrganismInputs.ladder``). ``cache``: a runner-owned store for the task's expensive
    intermediates (never a place to write results). ``secrets``: credentials (e.g. an LLM API key)
    that never enter the spec or the stored rows."""

    manifest: "LoadedManifest"
    spec: "RunSpec"
    config: Any
    device: str = "cpu"
    quiet: bool = False
    saes: dict[int, "SAE"] | None = None
    activations: Any = None
    organisms: dict[str, OrganismInputs] | None = None
    ladder: dict[int, dict[int, "SAE"]] | None = None
    cache: "TaskCache | None" = None
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def submission(self):
        return self.manifest.submission

    @property
    def seed(self) -> int:
        """The task seed: every random choice inside the task derives from it."""
        return self.spec.seed

    @property
    def limit(self) -> int | None:
        """The sample cap of a ``--limit`` preview (None for a full run)."""
        return self.spec.limit

    @property
    def batch_size(self) -> int | None:
        return self.spec.batch_size

    def require_saes(self) -> dict[int, "SAE"]:
        if self.saes is None:
            raise RuntimeError("this task was given no SAEs (declare needs_saes in its metadata)")
        return self.saes


@dataclass
class TaskOutput:
    """Metric values plus drill-down tables (stored as parquet artifacts) and the data hash."""

    metrics: list[MetricValue]
    artifacts: dict[str, pd.DataFrame] = field(default_factory=dict)
    data_hash: str | None = None
    # model fields (model, model_revision, hook, ...) override the manifest's; "checkpoints" replaces the
    # SAE records; any other key (e.g. matching_kernels) is stored in every row's extra["provenance"]
    provenance: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class. Subclasses set ``metadata`` (and ``config_class`` when they have settings) and
    implement :meth:`run`."""

    metadata: ClassVar[TaskMetadata]
    config_class: ClassVar[type] = NoConfig
    #: Set by tasks that need a model's SAEs: why a recipe trained on synthetic data does not apply.
    synthetic_recipe_reason: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.log = logging.getLogger(f"tasks.{self.metadata.name}")

    @classmethod
    def not_applicable(cls, manifest: "LoadedManifest") -> str | None:
        """Why this task cannot evaluate ``manifest``, or None when it can (a pure function of the
        manifest: the runner and the leaderboard both ask it)."""
        sub = manifest.submission
        if sub.kind not in cls.metadata.accepts:
            return f"takes {' or '.join(cls.metadata.accepts)} submissions, not {sub.kind}"
        if len(sub.seeds) < cls.metadata.min_seeds:
            return f"needs at least {cls.metadata.min_seeds} seeds, submission has {len(sub.seeds)}"
        if cls.synthetic_recipe_reason and sub.kind == "recipe" and sub.recipe.trains_on != "model":
            return cls.synthetic_recipe_reason
        return None

    def run(self, inputs: TaskInputs) -> TaskOutput:  # pragma: no cover - abstract
        raise NotImplementedError
