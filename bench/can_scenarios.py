"""python -m bench.can_scenarios RUN [RUN ...] [--out FILE]: the CAN runs' scenario table, side by side.

Each RUN is a finished CAN run directory (``make dry-run`` / ``make submit``). For every model of
every run it prints one row per (model, run) with, for val and each test scenario, ``AUROC / MCC /
F1`` at the model's operating threshold (argmax for a classifier, the threshold chosen on val
otherwise) and a ⚠ where the F1 is within 0.03 of the trivial F1. The seed and the id mode
(vocabulary or id-agnostic inputs) are columns, so on/off and seeds read side by side. Nothing here
chooses anything: every threshold and fusion weight was chosen on validation by the chain (see
``fusion/choices.json``); this only reports.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from pipeline import io

ROW_KINDS = ("rows", "detector_rows", "fusion_rows")


def run_settings(run: Path) -> dict[str, Any]:
    """The settings a scenario table compares runs on, read from the run's resolved profile."""
    profile = yaml.safe_load((run / "profile.yaml").read_text())
    return {"seed": profile["train"]["seed"], "ids": "agnostic" if profile["data"].get("id_agnostic") else "vocabulary"}


def scenario_rows(run: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(splits in order, one record per model with its per-split rows) of one run's evaluate stage."""
    path = run / "evaluate" / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist: {run} is not a CAN run whose evaluate stage finished")
    metrics = io.read_json(path)
    splits = ["val", *metrics["scenarios"]]
    models: dict[str, dict[str, Any]] = {}
    for kind in ROW_KINDS:
        for row in metrics.get(kind, []):
            models.setdefault(row["model"], {})[row["split"]] = row
    return splits, [{"model": name, "splits": per_split} for name, per_split in models.items()]


def cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    values = [_number(row.get(key)) for key in ("auroc", "mcc", "f1")]
    return " / ".join(values) + (" ⚠" if row.get("near_trivial") else "")


def table(runs: list[Path]) -> str:
    """Markdown: one row per (model, run), by model (in order of first appearance), then in the runs' order."""
    records, splits, model_order = [], [], {}
    for run_index, run in enumerate(runs):
        run_splits, models = scenario_rows(run)
        splits = splits or run_splits
        if run_splits != splits:
            raise SystemExit(f"{run}: scenarios {run_splits} differ from the first run's {splits}")
        settings = run_settings(run)
        for m in models:
            model_order.setdefault(m["model"], len(model_order))
            records.append({**settings, **m, "run": run_index})
    records.sort(key=lambda r: (model_order[r["model"]], r["run"]))
    head = ["model", "ids", "seed", *(_short(s) for s in splits)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        lines.append("| " + " | ".join([r["model"], r["ids"], str(r["seed"]),
                                        *(cell(r["splits"].get(s)) for s in splits)]) + " |")
    legend = ("Cells: AUROC / MCC / F1 at the operating threshold (argmax for classifiers, chosen on val for the "
              "others); ⚠: F1 within 0.03 of the trivial F1 (every window called an attack). Scenarios: "
              + ", ".join(s for s in splits if s != "val") + ".")
    return "\n".join(lines + ["", legend]) + "\n"


def _short(split: str) -> str:
    """test_02_unknown_vehicle_known_attack -> test_02 (the legend lists the full names)."""
    return "_".join(split.split("_")[:2]) if split.startswith("test_") else split


def _number(value: float | None) -> str:
    return "undef." if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished CAN run directories")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    text = table(args.runs)
    if args.out:
        io.write_text(args.out, text)
    print(text, end="")


if __name__ == "__main__":
    main()
