"""The Ray executor: planned units as Ray tasks on a cluster (``canonbench run --executor ray``).

Ray (a maintained distributed engine: scheduling by declared resources, retries of work lost with
a worker or a node, object transfer, a dashboard) replaces what a home-made process pool would have
to reinvent. A run goes like this:

1. The driver (where ``canonbench`` runs) plans every unit exactly as the local executor does
   (:class:`~benchmark.executors.plan.Planner`): cached, not-applicable and unplannable units never
   reach the cluster.
2. Preparation that several units share is *provisioned* once, by Ray tasks the units depend on:
   one per (model pin, hook, activation settings, dtype) computes the corpus activations, for every
   unit that needs or uses them; one per recipe submission trains its SAEs (a model recipe after its
   float32 activations, a synthetic recipe on its organisms), and the training cache's per-key lock
   makes two submissions with one recipe train it once. Provisioning writes into ``--cache-dir``:
   on a file system every node mounts, the entries are computed once per cluster; on node-local
   disks a unit computes what its node lacks (once per node). Correctness never depends on it:
   every cache is keyed and publishes atomically.
3. A unit is one Ray task asking for its task's :class:`~tasks.base.UnitResources`; it loads its
   inputs from the caches, runs the task and *returns* its rows and artifacts.
4. The driver stores each returned unit through :meth:`~benchmark.results.ResultStore.write_unit`
   (atomic, first writer wins), so the results store need only be reachable from the driver and a
   worker killed mid-unit leaves nothing behind. Ray reruns a unit whose worker died, up to
   ``max_retries`` times; a unit that still fails, or whose task raises, is reported failed with its
   reason, like the local executor does.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

from benchmark.errors import CanonBenchError
from benchmark.executors.outcome import OOM_HINT, RunInterrupted, RunSummary, UnitOutcome, failure_detail
from benchmark.executors.plan import PlannedUnit, Planner, RunSettings
from benchmark.executors.unit import ComputedUnit, compute_unit, store_unit, stored_by
from benchmark.provision import SubmissionInputs, has_real_model
from benchmark.results import ResultStore
from benchmark.spec import device_class, short_hash
from benchmark.version import BENCHMARK_VERSION, git_sha
from tasks.base import UnitResources

log = logging.getLogger(__name__)

#: What a corpus forward pass asks for: every unit of its model waits for it, so it gets two cores.
ACTIVATIONS_RESOURCES = UnitResources(cpus=2.0, memory_gb=4.0, gpu=True)
#: What training a recipe's seeds asks for (several recipes train side by side).
TRAINING_RESOURCES = UnitResources(cpus=1.0, memory_gb=4.0, gpu=True)
#: The GPU share of a unit that only places small tensors on the device (``gpu=False``) under ``--device cuda``.
TOKEN_GPU_SHARE = 0.05
POLL_S = 0.5  # how often the progress bar is refreshed while no unit finishes


@dataclass(frozen=True)
class Provisioned:
    """What a provisioning task reports: ``what`` it prepared, the reason it could not (``error``),
    and the ``(training key, seed)`` pairs it trained."""

    what: str  # "activations" | "saes" | "organisms"
    error: str | None = None
    trained: frozenset = frozenset()


def ray_options(resources: UnitResources, device: str) -> dict[str, Any]:
    """Ray scheduling options for a task with ``resources`` on ``device``."""
    gpus = 0.0
    if device_class(device) == "cuda":
        gpus = resources.gpu_share if resources.gpu else TOKEN_GPU_SHARE
    return {"num_cpus": resources.cpus, "num_gpus": gpus, "memory": int(resources.memory_gb * 2**30)}


# --- what runs on the workers -------------------------------------------------------------------
def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CanonBenchError) else failure_detail(exc)


def _quiet_libraries() -> None:
    """No progress bars from the Hub and transformers on a worker: Ray forwards them line by line."""
    import sys

    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # transformers, when imported later, starts with its bars off too
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _inputs(manifest, settings: RunSettings, dtype: str, trained: frozenset = frozenset()) -> SubmissionInputs:
    # progress bars stay on the driver: a worker's would be forwarded line by line
    _quiet_libraries()
    return SubmissionInputs(manifest, cache_dir=settings.cache_dir, device=settings.device, dtype=dtype, quiet=True,
                            provider_factory=settings.activations_factory, trained_this_run=trained)


def provision_activations(manifest, settings: RunSettings, dtype: str) -> Provisioned:
    """Compute (or find) a submission's corpus activations in the shared cache."""
    try:
        _inputs(manifest, settings, dtype).activations()
    except Exception as exc:  # reported to the units that depend on it
        return Provisioned("activations", error=_error_text(exc))
    return Provisioned("activations")


def provision_saes(manifest, settings: RunSettings, what: str, *upstream: Provisioned) -> Provisioned:
    """Train (or find) a recipe submission's SAEs, on its model's activations or its organisms."""
    failed = next((p for p in upstream if p.error), None)
    if failed is not None:
        return Provisioned(what, error=failed.error)
    inputs = _inputs(manifest, settings, "float32")
    try:
        if what == "organisms":
            records = [r for o in inputs.organisms().values() for r in o.records]
        else:
            records = inputs.saes()[1]
    except Exception as exc:
        return Provisioned(what, error=_error_text(exc))
    return Provisioned(what, trained=frozenset((r["training_key"], r["seed"]) for r in records if r.get("trained_now")))


def compute_on_worker(unit: PlannedUnit, settings: RunSettings, run_id: str, code: tuple[str, str | None],
                      *provisioned: Provisioned) -> ComputedUnit | UnitOutcome:
    """One unit on a worker: its rows and artifacts, or a failed outcome saying why. ``code``: the
    driver's (benchmark version, git commit), which the worker must run too."""
    started = time.perf_counter()

    def failed(detail: str) -> UnitOutcome:
        return UnitOutcome(unit.manifest.name, unit.meta.name, "failed", detail, runtime_s=time.perf_counter() - started)

    mine = (BENCHMARK_VERSION, git_sha())
    if mine[0] != code[0] or (mine[1] and code[1] and mine[1] != code[1]):
        return failed(f"this worker runs CanonBench {mine[0]} at {mine[1]}, the driver {code[0]} at {code[1]}; "
                      "install the driver's commit on every node")
    skip_activations = settings.skip_activations
    for prepared in provisioned:
        if prepared.error is None:
            continue
        if prepared.what == "activations" and not unit.meta.needs_activations:  # optional: run on weights alone
            log.warning("%s: no activations (%s); running without them", unit.label, prepared.error)
            skip_activations = True
        else:
            return failed(prepared.error)
    trained = frozenset().union(*(p.trained for p in provisioned))
    sub_inputs = _inputs(unit.manifest, settings, unit.spec.dtype, trained)
    try:
        return compute_unit(unit, sub_inputs, dataclasses.replace(settings, quiet=True, skip_activations=skip_activations),
                            run_id=run_id)
    except Exception as exc:  # reported by the driver; the worker stays up for the next unit
        log.debug("unit %s failed:\n%s", unit.label, traceback.format_exc())
        return failed(_error_text(exc))


# --- the driver ----------------------------------------------------------------------------------
def import_ray():
    """The ``ray`` module, or a one-line :class:`CanonBenchError` saying how to install it (Ray is
    the optional ``ray`` extra)."""
    try:
        import ray
    except ImportError:
        raise CanonBenchError("the Ray executor needs Ray: pip install 'canonbench[ray]' (or pip install ray)",
                              field="--executor") from None
    return ray


def _connect(ray, address: str | None, quiet: bool) -> bool:
    """Join (or start) a cluster unless this process already has one; True when it was started or
    joined here (and must be left at the end)."""
    import os

    if ray.is_initialized():  # the caller's own session (a test fixture, a notebook)
        return False
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING if quiet else logging.INFO}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False  # a throw-away local cluster
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CanonBenchError(f"cannot reach the Ray cluster at {where}: {first}", field="--address") from None
    return True


def _node_capacity(ray) -> list[dict[str, float]]:
    try:
        return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # e.g. a client that cannot list nodes: let Ray schedule
        return []


def _infeasible(options: dict[str, Any], nodes: list[dict[str, float]]) -> str | None:
    """Why no live node can ever hold a task with ``options`` (None when one can, or when unknown)."""
    if not nodes:
        return None
    wants = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], "memory": options["memory"]}
    if any(all(node.get(name, 0.0) >= amount for name, amount in wants.items() if amount) for node in nodes):
        return None
    gib = options["memory"] / 2**30
    return (f"no node of the cluster has {options['num_cpus']:g} CPU, {options['num_gpus']:g} GPU and {gib:.1f} GiB "
            "of Ray memory together (see the task's resources; add such a node or use --device cpu)")


def _ray_failure(ray, exc: BaseException, max_retries: int) -> str:
    """A one-line reason for a unit whose Ray task (or a provisioning task it waited on) failed."""
    errors = ray.exceptions
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if isinstance(exc, getattr(errors, "OutOfMemoryError", ())):
        return f"out of memory (Ray stopped the worker: {first}); {OOM_HINT}, or raise the task's memory_gb"
    if isinstance(exc, (errors.WorkerCrashedError, getattr(errors, "NodeDiedError", errors.WorkerCrashedError))):
        return (f"its worker died {max_retries + 1} time(s) (killed, crashed or its node was lost; "
                f"{type(exc).__name__}: {first})")
    if isinstance(exc, errors.TaskCancelledError):
        return "cancelled"
    if isinstance(exc, errors.RayTaskError) and getattr(exc, "cause", None) is not None:
        return failure_detail(exc.cause)
    return f"{type(exc).__name__}: {first}"


class _Provisioner:
    """The provisioning tasks of a run, one per shared input; :meth:`for_unit` lists a unit's."""

    def __init__(self, remotes: dict[str, Any], settings: RunSettings, max_retries: int):
        self.remotes = remotes
        self.settings = settings
        self.options = {kind: {**ray_options(resources, settings.device), "max_retries": max_retries}
                        for kind, resources in (("activations", ACTIVATIONS_RESOURCES), ("training", TRAINING_RESOURCES))}
        self.refs: dict[tuple, Any] = {}

    def needs(self, unit: PlannedUnit) -> list[str]:
        """What ``unit`` waits for: ``activations`` (its model's corpus activations) and/or
        ``saes`` / ``organisms`` (its recipe trained); the unit prepares the rest itself."""
        meta, sub = unit.meta, unit.manifest.submission
        has_model = has_real_model(sub)
        out = []
        # activations a task only uses optionally are provisioned (a model download) only with --download-models;
        # otherwise the unit reads a declared activations file or a model already on the node, or runs without
        optional = meta.uses_activations and not self.settings.skip_activations and self.settings.download_models
        if has_model and (meta.needs_activations or optional):
            out.append("activations")
        if sub.kind == "recipe":
            if meta.needs_organisms:
                out.append("organisms")
            elif meta.needs_saes and sub.recipe.trains_on == "model" and has_model:
                out.append("saes")
        return out

    def infeasible(self, unit: PlannedUnit, nodes: list[dict[str, float]]) -> str | None:
        """Why no node can hold a provisioning task ``unit`` waits for (None when one can)."""
        needs = set(self.needs(unit))
        kinds = ["activations"] if needs & {"activations", "saes"} else []  # a model recipe trains on activations
        kinds += ["training"] if needs & {"saes", "organisms"} else []
        problems = [_infeasible(self.options[kind], nodes) for kind in kinds]
        return next((f"preparing its inputs: {p}" for p in problems if p), None)

    def for_unit(self, unit: PlannedUnit) -> list[Any]:
        """Refs of the provisioning tasks ``unit`` waits for, submitted on first request."""
        deps = []
        for what in self.needs(unit):
            if what == "activations":
                deps.append(self._activations(unit, unit.spec.dtype))
            elif what == "organisms":
                deps.append(self._saes(unit, "organisms", []))
            else:  # a model recipe trains on float32 activations, whatever the evaluation dtype
                deps.append(self._saes(unit, "saes", [self._activations(unit, "float32")]))
        return deps

    def _activations(self, unit: PlannedUnit, dtype: str):
        from benchmark.data.activations import settings_for_manifest  # torch: imported where units need it only

        # everything that decides the activations' cache key, known without locating the model
        group = ("activations", short_hash([unit.inputs_record.get("model"),
                                            dataclasses.asdict(settings_for_manifest(unit.manifest, dtype=dtype))]))
        if group not in self.refs:
            self.refs[group] = self.remotes["activations"].options(
                **self.options["activations"], name=f"activations {unit.manifest.name} {dtype}").remote(unit.manifest, self.settings, dtype)
        return self.refs[group]

    def _saes(self, unit: PlannedUnit, what: str, upstream: list[Any]):
        group = (what, unit.manifest.name)
        if group not in self.refs:
            self.refs[group] = self.remotes["saes"].options(
                **self.options["training"], name=f"{what} {unit.manifest.name}").remote(unit.manifest, self.settings, what, *upstream)
        return self.refs[group]


def _for_workers(unit: PlannedUnit) -> PlannedUnit:
    """The unit with its manifest's path absolute (a worker's working folder may differ)."""
    manifest = unit.manifest.model_copy(update={"path": unit.manifest.path.resolve()})
    return dataclasses.replace(unit, manifest=manifest)


def run_ray(units: list[tuple[Any, type, int]], planner: Planner, store: ResultStore, settings: RunSettings,
            summary: RunSummary, *, run_id: str, bar, address: str | None = None, max_retries: int = 2) -> None:
    """Plan ``units`` (manifest, task class, task seed) here, compute the planned units on a Ray cluster, store them here; appends an
    outcome per unit to ``summary`` in plan order. Raises :class:`RunInterrupted` on Ctrl-C (the
    cluster's unfinished work is cancelled)."""
    if device_class(settings.device) != settings.device.strip().lower():
        raise CanonBenchError(f"got {settings.device!r}: on a cluster pass the device class (e.g. cuda); Ray gives "
                              "each unit its own GPU", field="--device")
    outcomes: dict[int, UnitOutcome] = {}
    planned: dict[int, PlannedUnit] = {}
    for index, item in enumerate(planner.plan_all(units)):
        if isinstance(item, PlannedUnit):
            planned[index] = _for_workers(item)
        else:
            outcomes[index] = item
            bar.update(1)
    if not planned:
        summary.outcomes.extend(outcomes[i] for i in sorted(outcomes))
        return
    ray = import_ray()
    worker_settings = dataclasses.replace(settings, cache_dir=settings.cache_dir.resolve(),
                                          results_dir=settings.results_dir.resolve())
    left_here = _connect(ray, address, settings.quiet)
    pending: dict[Any, int] = {}
    storing: list[int] = []
    provisioner = None
    try:
        remotes = {"activations": ray.remote(provision_activations), "saes": ray.remote(provision_saes),
                   "unit": ray.remote(compute_on_worker)}
        provisioner = _Provisioner(remotes, worker_settings, max_retries)
        nodes = _node_capacity(ray)
        code = (BENCHMARK_VERSION, git_sha())
        for index, unit in planned.items():
            options = ray_options(unit.meta.resources, settings.device)
            problem = _infeasible(options, nodes) or provisioner.infeasible(unit, nodes)
            if problem:
                log.error("%s failed: %s", unit.label, problem)
                outcomes[index] = _failed(unit, problem)
                bar.update(1)
                continue
            ref = remotes["unit"].options(**options, max_retries=max_retries, name=f"unit {unit.label}").remote(
                unit, worker_settings, run_id, code, *provisioner.for_unit(unit))
            pending[ref] = index
        _collect(ray, pending, planned, outcomes, storing, store, settings, run_id=run_id, bar=bar,
                 max_retries=max_retries)
    except KeyboardInterrupt as stop:
        _cancel(ray, list(pending) + (list(provisioner.refs.values()) if provisioner else []))
        for index in storing:  # Ctrl-C while the driver stored it: look
            unit = planned[index]
            if stored_by(store, unit.manifest.name, unit.meta, unit.key, run_id):
                outcomes[index] = UnitOutcome(unit.manifest.name, unit.meta.name, "done", "stored just before Ctrl-C")
        for index, unit in planned.items():
            if index not in outcomes:
                outcomes[index] = UnitOutcome(unit.manifest.name, unit.meta.name, "interrupted",
                                              "stopped by Ctrl-C; nothing of this run was stored for this unit")
        summary.outcomes.extend(outcomes[i] for i in sorted(outcomes))
        raise RunInterrupted(summary, terminated=type(stop).__name__ == "_Terminated") from None
    finally:
        if left_here:
            ray.shutdown()
    summary.outcomes.extend(outcomes[i] for i in sorted(outcomes))


def _failed(unit: PlannedUnit, detail: str) -> UnitOutcome:
    return UnitOutcome(unit.manifest.name, unit.meta.name, "failed", detail)


def _collect(ray, pending: dict[Any, int], planned: dict[int, PlannedUnit], outcomes: dict[int, UnitOutcome],
             storing: list[int], store: ResultStore, settings: RunSettings, *, run_id: str, bar, max_retries: int) -> None:
    """Store each unit as it finishes (the driver is the only writer), updating the progress bar."""
    failed = sum(o.status == "failed" for o in outcomes.values())
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        for ref in ready:
            index = pending.pop(ref)
            unit = planned[index]
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:
                result = _failed(unit, _ray_failure(ray, exc, max_retries))
            if isinstance(result, ComputedUnit):
                storing.append(index)
                try:
                    result = store_unit(result, unit, store, settings, run_id=run_id)
                except Exception as exc:  # e.g. a full disk: this unit fails, the others go on
                    result = _failed(unit, _error_text(exc))
                storing.remove(index)
            if result.status == "failed":
                log.error("%s failed: %s", unit.label, result.detail)
                failed += 1
            outcomes[index] = result
            bar.update(1)
        bar.set_postfix_str(f"in flight {len(pending)}, failed {failed}", refresh=False)


def _cancel(ray, refs: list[Any]) -> None:
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already finished, or the cluster is gone: nothing left to stop
            pass


__all__ = ["ACTIVATIONS_RESOURCES", "TRAINING_RESOURCES", "Provisioned", "compute_on_worker", "import_ray",
           "provision_activations", "provision_saes",
           "ray_options", "run_ray"]
