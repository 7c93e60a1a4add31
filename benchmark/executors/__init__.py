"""Executors: who runs the planned (submission × task × run spec) units.

The planning (applicability, run spec, inputs fingerprint, skip/cached/stale decision) lives in
:mod:`benchmark.executors.plan`, computing one unit in :mod:`benchmark.executors.unit`, and both
executors share them: :mod:`benchmark.executors.local` runs the units one after another in this
process; :mod:`benchmark.executors.ray` submits them as Ray tasks to a cluster. Either way the
results go through the same first-writer-wins :class:`~benchmark.results.ResultStore`.
"""

EXECUTORS = ("local", "ray")

__all__ = ["EXECUTORS"]
