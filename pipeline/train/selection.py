"""Which validation metric picks the best epoch and drives early stopping."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Selection:
    """Which validation metric picks the best epoch and drives early stopping."""

    metric: str = "f1"
    """Key of the dict returned by validate_fn."""
    mode: Literal["max", "min"] = "max"
    tie_metric: str | None = None
    """Breaks exact ties of ``metric`` (F1 saturates at 1.0 on easy validation sets; loss keeps moving)."""
    tie_mode: Literal["max", "min"] = "min"
    profile_key: str = "data.val_fraction"
    """The profile key that shapes validation, named when validation cannot judge the model
    (``pipeline.selection_check``)."""

    def better(self, new: dict[str, float], best: dict[str, float] | None) -> bool:
        """Strictly better than ``best`` (None: nothing yet); a tie counts as no improvement."""
        value = new[self.metric]
        if not math.isfinite(value):
            return False
        if not best:
            return True
        if value != best[self.metric]:
            return _beats(value, best[self.metric], self.mode)
        if self.tie_metric is None or not math.isfinite(new.get(self.tie_metric, math.nan)):
            return False
        return _beats(new[self.tie_metric], best.get(self.tie_metric, math.nan), self.tie_mode)

    def required(self) -> list[str]:
        return [self.metric] + ([self.tie_metric] if self.tie_metric else [])


def _beats(value: float, other: float, mode: str) -> bool:
    if not math.isfinite(other):
        return True
    return value > other if mode == "max" else value < other
