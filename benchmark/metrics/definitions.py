"""Metric definitions: the type every task declares its metrics with, and the definitions that
more than one task reports.

A metric name means one computation across the whole benchmark, so that a user citing a downloaded
table cannot mix two meanings up. A metric reported by several tasks is defined here once and every
task uses that object (a test fails when two tasks declare one name with different definitions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower", "none"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric a task reports. ``range`` is (low, high), None for unbounded.

    A metric name means one thing across the whole benchmark: two tasks that report the same name
    must declare the same description, direction, range and unit (a test enforces it); shared
    definitions live in :mod:`benchmark.metrics.definitions`."""

    name: str
    description: str
    direction: Direction
    range: tuple[float | None, float | None] = (None, None)
    unit: str = ""
    main: bool = False

    def as_main(self) -> "MetricSpec":
        """The same definition marked as its task's main metric."""
        return MetricSpec(self.name, self.description, self.direction, self.range, self.unit, main=True)

    def definition(self) -> tuple:
        """What must agree between tasks that report this name."""
        return (self.description, self.direction, tuple(self.range), self.unit)


def metric_spec(name: str, description: str, direction: Direction, lo: float | None = None,
                hi: float | None = None, *, main: bool = False, unit: str = "") -> MetricSpec:
    """A :class:`MetricSpec` written on one line, as task tables of many metrics want."""
    return MetricSpec(name=name, description=description, direction=direction, range=(lo, hi), main=main, unit=unit)


# --- definitions shared by several tasks ------------------------------------------------------------
DECODER_PW_MCC = metric_spec(
    "decoder_pw_mcc", "mean over seed pairs of the mean matched decoder cosine (signed, one-to-one; Song et al.)",
    "higher", -1, 1)
CHANCE_MCC = metric_spec(
    "chance_mcc", "MCC of two independent random unit dictionaries of the same shape as the seeds' decoders",
    "none", -1, 1)
SHARED_FRACTION = metric_spec(
    "shared_fraction", "fraction of latents matched to the same partner by the decoder and the encoder assignment, "
    "both with cosine > 0.7 (mean over seed pairs)", "higher", 0, 1)
L0 = metric_spec(
    "l0", "mean number of active latents per evaluated input (token or sample), mean over seeds", "none", 0, None,
    unit="latents")
NEVER_FIRED_FRACTION = metric_spec(
    "never_fired_fraction", "fraction of latents never active on the evaluated inputs (mean over seeds)", "lower", 0, 1)
DEAD_FRACTION = metric_spec(
    "dead_fraction", "fraction of latents with an all-zero decoder row (mean over seeds)", "lower", 0, 1)
EXPLAINED_VARIANCE = metric_spec(
    "explained_variance", "1 - residual / total variance of the reconstruction on the evaluated inputs (mean over seeds)",
    "higher", None, 1)

SHARED: tuple[MetricSpec, ...] = (DECODER_PW_MCC, CHANCE_MCC, SHARED_FRACTION, L0, NEVER_FIRED_FRACTION, DEAD_FRACTION,
                                  EXPLAINED_VARIANCE)

__all__ = ["CHANCE_MCC", "DEAD_FRACTION", "DECODER_PW_MCC", "Direction", "EXPLAINED_VARIANCE", "L0", "MetricSpec",
           "NEVER_FIRED_FRACTION", "SHARED", "SHARED_FRACTION", "metric_spec"]
