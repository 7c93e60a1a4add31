"""The chance level beside a main score, and whether the score can be told apart from it.

Both come from stored rows only. A task names the stored metric that is its main metric's chance
level (``TaskMetadata.chance_metric``, e.g. cross-seed's ``chance_mcc``: the MCC of independent random
dictionaries of the same shapes); the leaderboard reads the row of that metric with the same subset
from the same unit and never computes a chance level. The rule (:data:`RULE`) compares the stored
uncertainty of the score with the stored chance value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from leaderboard.plots import format_number

#: How "indistinguishable from chance" is decided, stated on the page as written here.
RULE = (
    "A score is flagged \u201c\u2248 chance\u201d when the stored chance level lies inside its stored 95% "
    "confidence interval, or, when the task stores no interval, within two stored standard deviations of "
    "the score. Only stored numbers are compared: the chance level is the value the task itself stored "
    "(the metric it names as its chance level, same subset, same run); a score with neither interval nor "
    "standard deviation is never flagged. Spreads measure different things per task (see each task page), "
    "so the flag says \u201cthis score does not rise above chance by its own stored uncertainty\u201d, nothing more."
)


@dataclass(frozen=True)
class ChanceLevel:
    """The stored chance level of one stored score."""

    metric: str
    value: float
    std: float | None
    indistinguishable: bool | None  # None: the score stores no spread to judge by
    basis: str  # which stored spread decided, for the tooltip

    @property
    def text(self) -> str:
        return f"chance {format_number(self.value)}"

    @property
    def title(self) -> str:
        spread = f" \u00b1 {format_number(self.std)}" if self.std is not None else ""
        verdict = {True: "indistinguishable from chance", False: "distinguishable from chance", None: "no stored spread to compare"}
        return f"stored {self.metric} = {format_number(self.value)}{spread}; {verdict[self.indistinguishable]} ({self.basis})"


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def indistinguishable(row: Any, chance: float) -> tuple[bool | None, str]:
    """:data:`RULE` applied to a stored row and a stored chance value: ``(flag, basis)``."""
    value = _number(row.value)
    low, high, std = _number(row.ci_low), _number(row.ci_high), _number(row.std)
    if value is None:
        return None, "no value"
    if low is not None and high is not None:
        return bool(low <= chance <= high), f"stored CI [{format_number(low)}, {format_number(high)}]"
    if std is not None:
        return bool(abs(value - chance) <= 2.0 * std), f"stored std {format_number(std)}, 2 std = {format_number(2 * std)}"
    return None, "no stored CI or std"


def chance_for(rows: list[Any], meta: Any, row: Any) -> ChanceLevel | None:
    """The chance level of the stored ``row`` of ``meta``'s main metric, from ``rows`` (the same
    shown unit's rows), or None when the task names none or it is not stored for that subset."""
    name = getattr(meta, "chance_metric", None)
    if not name or row is None:
        return None
    match = [r for r in rows if r.metric == name and r.subset == row.subset and r.task_version == row.task_version
             and getattr(r, "unit_key", None) == getattr(row, "unit_key", None)]
    if not match or _number(match[0].value) is None:
        return None
    chance = float(match[0].value)
    flag, basis = indistinguishable(row, chance)
    return ChanceLevel(name, chance, _number(match[0].std), flag, basis)


__all__ = ["ChanceLevel", "RULE", "chance_for", "indistinguishable"]
