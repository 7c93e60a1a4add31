"""Choosing an executor without a cluster: Ray is an optional extra, and its absence is one line."""

from __future__ import annotations

import sys

import fault_tasks
from benchmark import cli
from fault_tasks import write_submissions


def test_the_ray_executor_without_ray_installed_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    fault_tasks.register(monkeypatch)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    subs = write_submissions(tmp_path / "subs", ["a"])
    results = tmp_path / "r"
    assert cli.main(["run", str(subs), "--results", str(results), "--tasks", "fault-ok", "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "--executor" in err and "pip install 'canonbench[ray]'" in err
    assert not (results / "units").exists()  # nothing ran half-way
    # the local executor never needs it
    assert cli.main(["run", str(subs), "--results", str(results), "--tasks", "fault-ok", "--quiet"]) == 0


def test_the_ray_driver_provisions_optional_activations_only_with_download_models(tmp_path):
    """On a cluster as locally, a task that only *uses* activations (cross-seed) never makes the driver
    schedule a model download unless --download-models is given; one that *needs* them does."""
    import dataclasses
    from types import SimpleNamespace

    from benchmark.executors.plan import RunSettings
    from benchmark.executors.ray import _Provisioner
    from benchmark.submission.manifest import parse_manifest
    from manifest_texts import manifest_text
    from tasks import all_tasks

    path = tmp_path / "org" / "m.toml"
    path.parent.mkdir()
    path.write_text(manifest_text())
    manifest = parse_manifest(path.read_text(), path=path)
    registry = all_tasks()

    def needs(meta, **settings) -> list[str]:
        provisioner = _Provisioner({}, RunSettings(results_dir=tmp_path / "r", **settings), max_retries=0)
        return provisioner.needs(SimpleNamespace(meta=meta, manifest=manifest))

    uses = registry["cross-seed"].metadata
    assert uses.uses_activations and not uses.needs_activations
    needing = dataclasses.replace(uses, needs_activations=True, uses_activations=False)

    assert "activations" not in needs(uses)
    assert "activations" in needs(uses, download_models=True)
    assert "activations" not in needs(uses, download_models=True, skip_activations=True)
    assert "activations" in needs(needing) and "activations" in needs(needing, skip_activations=True)
