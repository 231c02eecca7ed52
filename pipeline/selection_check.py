"""Can validation judge the model? The one training loop asks after every epoch, for every stage.

Best-epoch selection is blind when:

* validation holds one class only: the attack class's F1 is then 0 (or 1) whatever the model
  does, and AUROC is undefined;
* the selection metric is not finite (a NaN AUROC);
* the metric took the same value in every epoch of a finished fit and no tie metric breaks the
  tie: the first epoch is then kept by default.

Each is warned once per fit (not once per epoch) in the stage log and in the stage folder's
``warnings.json``, which ``make status`` lists, naming the profile key that gives validation what it
lacks (``Selection.profile_key``, e.g. ``data.val_fraction``).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.stage_warnings import record_warning

if TYPE_CHECKING:
    from pipeline.train import Selection

WARNING_KEY = "selection_undefined"


def check_validation(stage_dir: Path, selection: "Selection", metrics: dict[str, float], labels: torch.Tensor | None,
                     history: Path | None, log: logging.Logger) -> str | None:
    """Warn (once per fit) when this epoch's validation cannot rank models; returns the reason, if any.

    ``labels``: the validation graphs' labels when the loader knows them (None: not checked);
    ``history``: the fit's metrics.jsonl once the fit has finished (None: the constant check waits).
    """
    reason = one_class_reason(labels) or undefined_metric_reason(selection.metric, metrics)
    if reason is None and history is not None:
        reason = constant_metric_reason(selection, _validation_history(history))
    if reason is None:
        return None
    fix = (f"change {selection.profile_key} (or the train files) so that validation holds windows of both "
           f"classes; the cache manifest lists each train file's validation rows")
    message = (f"{Path(stage_dir).name}: validation cannot judge the model: {reason}, so epochs are picked on "
               f"'{selection.metric}'{_tie_note(selection)} without telling good models from bad; {fix}")
    if record_warning(stage_dir, WARNING_KEY, message, selection.profile_key):
        log.warning(message)
    return reason


def one_class_reason(labels: torch.Tensor | None) -> str | None:
    if labels is None:
        return None
    if labels.numel() == 0:
        return "the validation split is empty"
    attacks = int((labels != 0).sum())
    if attacks == 0:
        return f"validation holds no attack windows ({labels.numel()} graphs, all normal)"
    if attacks == labels.numel():
        return f"validation holds attack windows only ({attacks} graphs)"
    return None


def undefined_metric_reason(metric: str, metrics: dict[str, float]) -> str | None:
    value = metrics.get(metric, math.nan)
    return None if math.isfinite(value) else f"{metric} is {value} on validation"


def constant_metric_reason(selection: "Selection", history: list[dict[str, Any]]) -> str | None:
    """The metric never moved over a finished fit of 2+ epochs and nothing breaks the tie."""
    if selection.tie_metric is not None or len(history) < 2:
        return None
    values = {h.get(selection.metric) for h in history}
    if len(values) != 1:
        return None
    (value,) = values
    return f"{selection.metric} was {value} in every one of {len(history)} epochs and no tie metric is set"


def _tie_note(selection: "Selection") -> str:
    return f" (ties: '{selection.tie_metric}')" if selection.tie_metric else ""


def _validation_history(metrics_path: Path) -> list[dict[str, Any]]:
    """The ``val`` metrics of every epoch line of a fit's metrics.jsonl (event lines skipped)."""
    history = []
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("val"), dict):
            history.append(record["val"])
    return history
