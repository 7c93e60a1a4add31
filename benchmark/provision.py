"""Preparing a submission's inputs before any unit is timed: SAEs, activations, organisms.

The runner owns every side effect a unit needs before its task computes: resolving and loading
checkpoints, training recipes (through the one trained-SAE cache, :mod:`benchmark.training.cache`),
building synthetic organisms, and computing the model's corpus activations. A task then only
computes. What each preparation cost is recorded per unit as ``setup_s``, apart from the task's
``runtime_s``, so a unit that happened to trigger training does not look slow.

One :class:`SubmissionInputs` serves every task of one submission in a run: each input is prepared
once, on first request.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from benchmark.errors import CanonBenchError, TaskError

log = logging.getLogger(__name__)


class SubmissionInputs:
    """Lazily prepared inputs of one submission (see the module docstring).

    ``dtype``: the model dtype of evaluation activations (``--dtype``); recipes always train on
    float32 activations, which are part of the recipe's definition. ``trained_this_run``: the
    ``(training key, seed)`` pairs another process of this run trained (a cluster's provisioning
    step): their records say ``trained_now`` like those of SAEs trained here."""

    def __init__(self, manifest, *, cache_dir: Path | str, device: str = "cpu", dtype: str = "float32",
                 batch_size: int | None = None, quiet: bool = False, provider_factory=None,
                 trained_this_run: frozenset[tuple[str, int]] = frozenset()):
        self.manifest = manifest
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.quiet = quiet
        self._saes: tuple[dict[int, Any], list[dict[str, Any]]] | None = None
        self._ladder: tuple[dict[int, dict[int, Any]], list[dict[str, Any]]] | None = None
        self._providers: dict[str, Any] = {}
        self._ready_hooks: set[tuple[str, str]] = set()
        self._organisms: dict[str, Any] | None = None
        #: ``(manifest, cache_dir=, device=, quiet=, dtype=) -> provider``; tests and callers with
        #: their own activations replace :func:`benchmark.data.activations.provider_for_manifest`.
        self.provider_factory = provider_factory
        self.trained_this_run = frozenset(trained_this_run)

    # --- SAEs -------------------------------------------------------------------------------------
    def saes(self) -> tuple[dict[int, Any], list[dict[str, Any]]]:
        """``({seed: SAE}, provenance records)`` of a checkpoints submission or a model recipe."""
        if self._saes is None:
            sub = self.manifest.submission
            if sub.kind == "checkpoints":
                self._saes = self._load_checkpoints()
            elif sub.recipe.trains_on == "model":
                self._saes = self._train_model_recipe()
            else:
                raise TaskError("a recipe trained on synthetic presets has SAEs per preset only (see organisms)",
                                file=self.manifest.path, field="recipe.trains_on")
        return self._saes

    def _load_checkpoints(self, width: int | None = None) -> tuple[dict[int, Any], list[dict[str, Any]]]:
        """The checkpoints of one width of the ladder (default: the primary width)."""
        from benchmark.sae.checkpoints import load_sae
        from benchmark.submission.sources import resolve_checkpoint

        sub = self.manifest.submission
        width = sub.sae.width if width is None else width
        saes, records = {}, []
        for index, spec in enumerate(sub.checkpoints):
            if sub.checkpoint_width(spec) != width:
                continue
            resolved = resolve_checkpoint(self.manifest, spec, cache_dir=self.cache_dir)
            check_declared(resolved, self.manifest, entry=f"checkpoints[{index}]", width=width)
            fmt = None if sub.sae.format == "auto" else sub.sae.format
            sae = load_sae(resolved, format=fmt, device=self.device)  # carries the manifest's size bound into the load
            check_against_manifest(sae, self.manifest, width=width)
            saes[spec.seed] = sae
            records.append({**resolved.record(), "seed": spec.seed, "format": sae.config.format,
                            **({"width": width} if spec.width else {})})
        return saes, records

    # --- width ladders -------------------------------------------------------------------------
    def ladder(self) -> tuple[dict[int, dict[int, Any]], list[dict[str, Any]]]:
        """``({width: {seed: SAE}}, provenance records)`` of every width a checkpoints submission or a
        model recipe declares (one width without a ladder). The primary width's SAEs are those of
        :meth:`saes` (loaded or trained once)."""
        if self._ladder is None:
            sub = self.manifest.submission
            if sub.kind == "recipe" and sub.recipe.trains_on != "model":
                raise TaskError("a recipe trained on synthetic presets has SAEs per preset only (see organisms)",
                                file=self.manifest.path, field="recipe.trains_on")
            primary, primary_records = self.saes()
            ladder, records = {}, []
            for width in sub.ladder_widths:
                if width == _primary_width(sub):
                    saes, rung_records = primary, primary_records
                elif sub.kind == "checkpoints":
                    saes, rung_records = self._load_checkpoints(width)
                else:
                    saes, rung_records = self._train_model_recipe(width)
                ladder[width] = saes
                records += [{**r, "width": width} for r in rung_records]
            self._ladder = (ladder, records)
        return self._ladder

    def _train_model_recipe(self, width: int | None = None) -> tuple[dict[int, Any], list[dict[str, Any]]]:
        from benchmark.training.cache import activation_data, train_or_load

        sub = self.manifest.submission
        provider = self.provider(dtype="float32")
        self._ensure(provider)
        recipe = sub.recipe if width is None else sub.recipe.at_width(width)
        saes, records = train_or_load(recipe, activation_data(provider), cache_dir=self.cache_dir, device=self.device,
                                      quiet=self.quiet, file=self.manifest.path,
                                      sae_metadata={"model_name": sub.model.name, "hook_name": sub.model.hook})
        return saes, self._mark_trained(records)

    def _mark_trained(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "trained_now": True} if (r.get("training_key"), r.get("seed")) in self.trained_this_run else r
                for r in records]

    # --- activations ---------------------------------------------------------------------------------
    def provider(self, *, dtype: str | None = None):
        """The activation provider of the submission's model and hook (located; nothing computed)."""
        from benchmark.data.activations import provider_for_manifest

        dtype = dtype or self.dtype
        if dtype not in self._providers:
            factory = self.provider_factory or provider_for_manifest
            self._providers[dtype] = factory(self.manifest, cache_dir=self.cache_dir, device=self.device,
                                             quiet=self.quiet, dtype=dtype)
        return self._providers[dtype]

    def activations(self):
        """The corpus activations tasks read: the manifest's ``[activations]`` file when it declares one
        (:class:`benchmark.data.activation_files.FileActivations`, no model involved), else the
        evaluation provider with the hook's corpus activations computed (cached on disk)."""
        if self.declares_activations:
            if "file" not in self._providers:
                from benchmark.data.activation_files import file_activations_for_manifest

                self._providers["file"] = file_activations_for_manifest(self.manifest, cache_dir=self.cache_dir)
            return self._providers["file"]
        provider = self.provider()
        self._ensure(provider)
        return provider

    @property
    def declares_activations(self) -> bool:
        return getattr(self.manifest.submission, "activations", None) is not None

    def model_needs_download(self) -> str | None:
        """Why the model's activations would need a download first (None when the model is on this
        machine: a package, a local folder, or a Hub commit already in the cache)."""
        model = getattr(self.manifest.submission, "model", None)
        if model is None or model.revision is None or self.provider_factory is not None:
            return None  # no Hub model, or a caller's own provider supplies the activations
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model.name, "config.json", cache_dir=str(self.cache_dir / "hub"),
                                        revision=model.revision)
        if isinstance(cached, str):
            return None
        return f"the model {model.name}@{model.revision[:12]} is not on this machine"

    def _ensure(self, provider) -> None:
        hook = getattr(provider, "hook", None)
        key = (id(provider), hook)
        if key not in self._ready_hooks:
            ensure = getattr(provider, "ensure", None)
            if callable(ensure) and hook is not None:
                ensure([hook])
            self._ready_hooks.add(key)

    # --- synthetic organisms -----------------------------------------------------------------------------
    def organisms(self, *, ladder: bool = False) -> dict[str, Any]:
        """``{preset name: OrganismInputs}``: the organisms a submission is about, with the SAEs
        trained on each (recipes) or loaded from its checkpoints; with ``ladder`` also every width of
        the submission's width ladder (``OrganismInputs.ladder``)."""
        if self._organisms is None:
            from benchmark.data.organisms import Organism, get_preset, submission_presets
            from benchmark.training.cache import organism_data, train_or_load
            from tasks.base import OrganismInputs

            sub = self.manifest.submission
            names = submission_presets(self.manifest)
            field = "recipe.presets" if sub.kind == "recipe" else "model.name"
            if sub.kind == "checkpoints" and len({n.partition("@")[0] for n in names}) > 1:
                raise TaskError(f"checkpoints name several presets {names}; a checkpoint is trained on one",
                                file=self.manifest.path, field=field)
            out = {}
            for i, name in enumerate(names):
                preset = get_preset(name, file=self.manifest.path, field=f"{field}[{i}]" if sub.kind == "recipe" else field)
                organism = Organism(preset)
                if sub.kind == "recipe":
                    saes, records = train_or_load(sub.recipe, organism_data(organism), cache_dir=self.cache_dir,
                                                  device=self.device, quiet=self.quiet, file=self.manifest.path)
                    for sae in saes.values():
                        sae.config.metadata.update({"preset": preset.name, "preset_version": preset.version})
                    records = [{**r, "preset": preset.name} for r in self._mark_trained(records)]
                else:
                    saes, records = self.saes()
                    bad = [s for s, sae in saes.items() if sae.d_in != preset.d_in]
                    if bad:
                        raise TaskError(f"checkpoint d_in={saes[bad[0]].d_in} but preset {preset.name} has d_in={preset.d_in}",
                                        file=self.manifest.path, field="sae.d_in")
                out[preset.name] = OrganismInputs(organism, saes, records)
            self._organisms = out
        if ladder:
            for prepared in self._organisms.values():
                if prepared.ladder is None:
                    prepared.ladder, prepared.ladder_records = self._organism_ladder(prepared)
        return self._organisms

    def _organism_ladder(self, prepared) -> tuple[dict[int, dict[int, Any]], list[dict[str, Any]]]:
        from benchmark.training.cache import organism_data, train_or_load

        sub = self.manifest.submission
        preset = prepared.organism.preset
        if sub.kind == "checkpoints":
            ladder, records = self.ladder()
            for width, saes in ladder.items():
                bad = [s for s, sae in saes.items() if sae.d_in != preset.d_in]
                if bad:
                    raise TaskError(f"checkpoint of width {width} has d_in={saes[bad[0]].d_in} but preset {preset.name} "
                                    f"has d_in={preset.d_in}", file=self.manifest.path, field="sae.d_in")
            return ladder, records
        ladder, records = {}, []
        for width in sub.recipe.ladder_widths:
            if width == sub.recipe.width:
                saes, rung_records = prepared.saes, prepared.records
            else:
                saes, rung_records = train_or_load(sub.recipe.at_width(width), organism_data(prepared.organism),
                                                   cache_dir=self.cache_dir, device=self.device, quiet=self.quiet,
                                                   file=self.manifest.path)
                for sae in saes.values():
                    sae.config.metadata.update({"preset": preset.name, "preset_version": preset.version})
                rung_records = [{**r, "preset": preset.name} for r in self._mark_trained(rung_records)]
            ladder[width] = saes
            records += [{**r, "width": width} for r in rung_records]
        return ladder, records

    # --- one unit's inputs ---------------------------------------------------------------------------------
    def prepare(self, meta, *, skip_activations: bool = False,
                download_models: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
        """``(inputs, checkpoint records, seconds)`` for a task with metadata ``meta``: the keyword
        arguments of :class:`tasks.base.TaskInputs` it declares a need for.

        Activations are prepared only for a task that asks for them. A task that *needs* them gets
        them (the model is fetched if it must be). A task that only *uses* them gets them unless
        ``skip_activations`` (``--no-activations``), from the manifest's ``[activations]`` file, or
        from a model already on this machine; a model is downloaded for optional activations only
        with ``download_models`` (``--download-models``), otherwise the task runs on weights alone."""
        started = time.perf_counter()
        sub = self.manifest.submission
        inputs: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        ladder = getattr(meta, "needs_ladder", False)
        if meta.needs_organisms:
            inputs["organisms"] = self.organisms(ladder=ladder)
            records = [r for o in inputs["organisms"].values() for r in (o.ladder_records if ladder else o.records)]
        if ladder and not inputs.get("organisms"):  # a task on ladders of model SAEs (or checkpoints)
            inputs["ladder"], records = self.ladder()
        elif meta.needs_saes and not meta.needs_organisms:
            inputs["saes"], records = self.saes()
        has_model = has_real_model(sub)
        if meta.needs_activations or meta.needs_model:
            if not has_model:
                raise TaskError("this task needs a model's activations and the submission names no model",
                                file=self.manifest.path, field="model")
            inputs["activations"] = self.activations() if meta.needs_activations else self.provider()
        elif meta.uses_activations and not skip_activations and self.declares_activations:
            inputs["activations"] = self.activations()  # declared by the submitter: its problems are errors
        elif meta.uses_activations and has_model and not skip_activations:
            missing = None if download_models else self.model_needs_download()
            if missing is not None:
                log.info("%s × %s: running on weights alone: %s (--download-models fetches it for optional "
                         "activations; an [activations] table supplies your own)", self.manifest.name, meta.name, missing)
            else:
                try:
                    inputs["activations"] = self.activations()
                except Exception as exc:  # optional input: the task runs on weights alone
                    log.warning("%s × %s: no activations (%s); running without them", self.manifest.name, meta.name, exc)
        if "activations" in inputs and self.declares_activations and inputs.get("saes"):
            self._check_file_width(inputs["activations"], inputs["saes"])
        return inputs, records, time.perf_counter() - started

    def _check_file_width(self, provider, saes: dict[int, Any]) -> None:
        """A declared activations file must have the SAEs' input width."""
        width = int(provider.activations().shape[1])
        bad = {seed: sae.d_in for seed, sae in saes.items() if sae.d_in != width}
        if bad:
            seed, d_in = next(iter(bad.items()))
            raise CanonBenchError(f"the activations file has width {width} but seed {seed}'s SAE reads d_in={d_in}",
                                  file=self.manifest.path, field="activations.file")


def has_real_model(sub) -> bool:
    """Whether a submission names a model with activations (not a synthetic organism's ``synthetic:`` name)."""
    return getattr(sub, "model", None) is not None and not _synthetic_model(sub)


def _synthetic_model(sub) -> bool:
    from benchmark.data.organisms import MODEL_PREFIX

    model = getattr(sub, "model", None)
    return model is not None and model.name.startswith(MODEL_PREFIX)


def check_declared(resolved: Any, manifest, *, entry: str, width: int | None = None) -> None:
    """Refuse a checkpoint whose headers (read by ``resolve_checkpoint``) disagree with the manifest's
    ``[sae]`` table (and, for a ladder rung, its ``width``), with the rule ``validate --check-files``
    applies (:func:`benchmark.submission.agreement.disagreements`): a standard SAE declared ``jumprelu``
    is never scored and stored as one."""
    from benchmark.submission.agreement import disagreements

    info = getattr(resolved, "info", None)
    if info is None:
        return
    where = resolved.source if resolved.local else f"{resolved.repo}@{(resolved.resolved_revision or '')[:12]}/{resolved.path_in_repo}"
    problems = disagreements(info, manifest, entry=entry, where=where, width=width)
    if problems:
        raise problems[0]


def _primary_width(sub) -> int:
    return sub.sae.width if sub.kind == "checkpoints" else sub.recipe.width


def check_against_manifest(sae: Any, manifest, *, width: int | None = None) -> None:
    """Refuse a checkpoint whose shape disagrees with what its manifest declares (``width``: the
    width its ladder entry declares; default the primary width)."""
    spec = manifest.submission.sae
    declared = spec.width if width is None else width
    if sae.d_sae != declared:
        field = "sae.width" if declared == spec.width else "checkpoints.width"
        raise CanonBenchError(f"checkpoint has d_sae={sae.d_sae} but the manifest says {declared}", file=manifest.path, field=field)
    if spec.d_in is not None and sae.d_in != spec.d_in:
        raise CanonBenchError(f"checkpoint has d_in={sae.d_in} but the manifest says {spec.d_in}", file=manifest.path, field="sae.d_in")


__all__ = ["SubmissionInputs", "check_against_manifest", "check_declared", "has_real_model"]
