"""What each MLflow run of an imported chain holds, built from the run's records alone.

* One parent run per chain (``<profile>/<run_id>``): params = the frozen profile flattened
  (``train.lr``, ``model.hidden``, ...; ``resources.*`` are tags, since they never change a result);
  tags: task, state, folder, git commit, cache key; metrics: the workload's headline numbers;
  artifacts: ``report.html`` and ``profile.yaml``.
* One child run per stage that started: the same params; tags: job id, host, state (and the error),
  git commit, cache key, fingerprint and its own resources; metrics: one series per epoch of every
  fit (``train_loss``, ``val/<metric>``, ``peak_mem_mb``, ``planned_mb``, ``planned_total_mb``,
  ``device_total_mb``, ``oom_backoffs``, ``lr``, ``epoch_seconds``; a stage with several fits
  prefixes them with the fit, ``kd/train_loss``), then its final numbers (the workload's per model
  and split, else the numbers of its done record); artifacts: its figures, ``memory_plan.json``,
  ``metrics.jsonl``, ``metrics.md`` and reports, in the stage's own folder layout.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.report.compare import Summary
from pipeline.report.records import Fit, RunRecords, StageRecord
from pipeline.report.workload import Metrics
from pipeline.tracking.store import RunSpec, clip_tag

ARTIFACT_NAMES = ("memory_plan.json", "metrics.jsonl", "metrics.md", "metrics.json", "report.md", "report.json",
                  "done.json", "threshold.json")
SKIP_DONE = ("fingerprint", "result_key")
STATUS = {"done": "FINISHED", "failed": "FAILED", "out_of_memory": "FAILED", "cancelled": "KILLED",
          "interrupted": "KILLED", "running": "RUNNING"}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists and scalars are leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def profile_params(records: RunRecords) -> dict[str, str]:
    dumped = records.profile.model_dump(mode="json")
    dumped.pop("resources", None)
    return {k: _text(v) for k, v in flatten(dumped).items()}


def chain_spec(records: RunRecords, headline: Metrics, sweep: str | None = None) -> RunSpec:
    starts = [s.started for s in records.stages if s.started]
    ends = [s.ended for s in records.stages if s.ended]
    resources = records.profile.model_dump(mode="json").get("resources", {})
    launched = [rec.get("git_commit") for rec in (records.jobs.get("stages") or {}).values() if rec.get("git_commit")]
    tags = {"gnn.kind": "chain", "gnn.run": records.key, "gnn.run_dir": str(records.path),
            "gnn.profile": records.profile.name, "gnn.task": records.profile.task, "gnn.state": records.state,
            "gnn.stages": " ".join(f"{s.stage}:{s.state}" for s in records.stages), "gnn.sweep": sweep,
            **_common_tags(records, launched[0] if launched else None),
            **{f"resources.{k}": _text(v) for k, v in flatten(resources).items() if v is not None}}
    end = _ms(max(ends)) if ends else None
    metrics = [(metric_key(k), v, 0, end or 0) for k, v in headline.items() if _number(v)]
    artifacts = [(records.path / name, "") for name in ("report.html", "profile.yaml")
                 if (records.path / name).exists()]
    return RunSpec(key=f"run:{records.key}", name=records.key, params=profile_params(records), tags=_clip(tags),
                   metrics=metrics, artifacts=artifacts, status=chain_status(records.state),
                   start_ms=_ms(min(starts)) if starts else None, end_ms=end)


def stage_spec(records: RunRecords, stage: StageRecord, finals: Metrics | None) -> RunSpec:
    """``finals``: the workload's final metrics of this stage, or None to take its done record's numbers."""
    start = _ms(stage.started) if stage.started else None
    resources = records.profile.resources_for(stage.stage).model_dump(mode="json")
    launched = (records.jobs.get("stages") or {}).get(stage.stage) or {}
    tags = {"gnn.kind": "stage", "gnn.run": records.key, "gnn.stage": stage.stage, "gnn.state": stage.state,
            "gnn.job_id": stage.job_id or "", "gnn.host": stage.host or "",
            "gnn.fingerprint": (stage.done or {}).get("fingerprint", ""),
            **_common_tags(records, launched.get("git_commit")),
            **({"gnn.error": stage.detail} if stage.detail else {}),
            **{f"resources.{k}": _text(v) for k, v in flatten(resources).items() if v not in (None, {})}}
    metrics = [m for fit in stage.fits for m in fit_series(fit, start or 0, len(stage.fits) > 1)]
    end = _ms(stage.ended) if stage.ended else None
    numbers = finals if finals is not None else done_numbers(stage.done or {})
    numbers = {**numbers, **{k: (stage.done or {}).get(k) for k in ("elapsed_s", "peak_rss_mb")}}
    metrics += [(metric_key(k), float(v), 0, end or start or 0) for k, v in numbers.items() if _number(v)]
    return RunSpec(key=f"stage:{records.key}:{stage.stage}", name=stage.stage, params=profile_params(records),
                   tags=_clip(tags), metrics=metrics, artifacts=stage_artifacts(records.path / stage.stage),
                   status=STATUS.get(stage.state, "KILLED"), start_ms=start, end_ms=end)


def sweep_spec(folder: Path, runs: list[RunRecords], summaries: list[Summary]) -> RunSpec:
    """The parent of a sweep's chains: mean and std over seeds of every headline number, per profile
    (``<profile>/<metric>/mean``), and the sweep's report."""
    metrics = []
    for s in summaries:
        metrics += [(metric_key(f"{s.group}/{s.metric}/{what}"), v, 0, 0)
                    for what, v in (("mean", s.mean), ("std", s.std)) if v is not None]
    artifacts = [(p, "") for p in sorted(folder.glob("*"))
                 if p.suffix == ".png" or p.name in ("report.html", "sweep.json")]
    states = [r.state for r in runs]
    tags = {"gnn.kind": "sweep", "gnn.sweep_dir": str(folder), "gnn.runs": " ".join(r.key for r in runs),
            "gnn.state": "done" if all(s == "done" for s in states) else "incomplete"}
    return RunSpec(key=f"sweep:{folder.name}", name=f"sweep {folder.name}", tags=_clip(tags), metrics=metrics,
                   artifacts=artifacts, status="FINISHED" if tags["gnn.state"] == "done" else "KILLED")


def fit_series(fit: Fit, start_ms: int, prefixed: bool) -> list[tuple[str, float, int, int]]:
    """One point per epoch of every number a fit's epoch lines carry; the timestamp is the epoch's
    end (the stage's start plus the epochs' durations), so the same file gives the same points."""
    prefix = f"{fit.name.split('/', 1)[1]}/" if prefixed and "/" in fit.name else ""
    out, elapsed, backoffs = [], 0.0, sorted(int(e.get("epoch", 0)) for e in fit.backoffs)
    for line in fit.epochs:
        epoch = int(line["epoch"])
        elapsed += float(line.get("seconds") or 0.0)
        values = {("epoch_seconds" if k == "seconds" else k): v for k, v in line.items()
                  if k not in ("epoch", "val") and _number(v)}
        values.update({f"val/{k}": v for k, v in (line.get("val") or {}).items() if _number(v)})
        values["oom_backoffs"] = sum(1 for e in backoffs if e <= epoch)
        if fit.plan is not None:
            values["planned_total_mb"] = fit.plan.planned_mb
        ts = start_ms + int(elapsed * 1000)
        out += [(metric_key(prefix + k), float(v), epoch, ts) for k, v in sorted(values.items())]
    return out


def metric_key(name: str) -> str:
    """A name as MLflow takes it: letters, digits, ``_ - . /`` and spaces (anything else becomes ``_``),
    at most 250 characters."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name.replace("@", "_at_"))[:250]


def done_numbers(done: dict[str, Any]) -> Metrics:
    """The numbers a stage's done record reports (``best_val.f1`` -> ``best_val/f1``), flags left out."""
    flat = flatten({k: v for k, v in done.items() if k not in SKIP_DONE})
    return {k.replace(".", "/"): v for k, v in flat.items() if _number(v)}


def stage_artifacts(folder: Path) -> list[tuple[Path, str]]:
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix == ".png" or p.name in ARTIFACT_NAMES))
    return [(p, _folder(p.parent.relative_to(folder).as_posix())) for p in files]


def chain_status(state: str) -> str:
    return STATUS.get(state, "KILLED")


def _common_tags(records: RunRecords, git_commit: str | None) -> dict[str, str]:
    preprocess = records.stage("preprocess")
    cache = (preprocess.done if preprocess else None) or {}
    return {"gnn.git_commit": git_commit or "", "gnn.cache_key": str(cache.get("result_key", ""))}


def _clip(tags: dict[str, Any]) -> dict[str, str]:
    return {k: clip_tag(v) for k, v in tags.items() if v not in (None, "")}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ms(seconds: float) -> int:
    return int(round(float(seconds) * 1000))



def _folder(relative: str) -> str:
    return "" if relative == "." else relative
