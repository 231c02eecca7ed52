"""Import finished (or stopped) runs into MLflow: a chain parent per run, a child per stage that
started, and a sweep parent above the chains of a sweep; all in one locked, idempotent pass.

The store and experiment come from the first run's ``tracking`` section (``tracking.uri``, default
``sqlite:///<runs root>/mlflow.db``; ``tracking.experiment``, default the task), so the runs of one
sweep land together.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.report.compare import summarise
from pipeline.report.records import RunRecords
from pipeline.report.workload import workload_report
from pipeline.tracking.specs import chain_spec, stage_spec, sweep_spec
from pipeline.tracking.store import PARENT_TAG, client_for, experiment_id, locked, store_for, upsert


@dataclass(frozen=True)
class Tracked:
    uri: str
    experiment: str
    made: int
    """MLflow runs created (new, or remade because their records changed)."""
    unchanged: int
    parents: dict[str, str]
    """run key (``<profile>/<run_id>``) -> the MLflow id of its chain run."""

    def summary(self) -> str:
        return (f"{self.made + self.unchanged} MLflow runs in {self.uri} (experiment {self.experiment}): "
                f"{self.made} written, {self.unchanged} unchanged")


def track(runs: list[RunRecords], sweep: Path | None = None,
          members: list[RunRecords] | None = None) -> Tracked:
    """Import ``runs`` into the first run's store; given the folder of the sweep they belong to, also
    the sweep's parent run, summed up over ``members`` (all its runs; default ``runs``)."""
    if not runs:
        raise ValueError("nothing to track: no run given")
    first = runs[0]
    store = store_for(first.profile.tracking.uri, first.path.parents[1])
    name = first.profile.tracking.experiment or first.profile.task
    counts = [0, 0]
    parents: dict[str, str] = {}
    with locked(store):
        client = client_for(store)
        experiment = experiment_id(client, store, name)
        top = None
        if sweep is not None:
            top, fresh = upsert(client, experiment, sweep_spec(sweep, members or runs, summarise(members or runs)))
            counts[not fresh] += 1
            if fresh:
                adopt(client, experiment, sweep.name, top)
        for records in runs:
            parents[records.key] = _track_chain(client, experiment, records, top, sweep, counts)
    return Tracked(store.uri, name, counts[0], counts[1], parents)


def _track_chain(client, experiment: str, records: RunRecords, top: str | None, sweep: Path | None,
                 counts: list[int]) -> str:
    """The chain's parent run and a child per stage that ran; returns the parent's id."""
    extra = workload_report(records.profile.task)
    finals = extra.final_metrics(records) if extra else {}
    headline = extra.headline(records) if extra else {}
    spec = chain_spec(records, headline, sweep.name if sweep is not None else None)
    parent, fresh = upsert(client, experiment, spec, top)
    counts[not fresh] += 1
    for stage in records.stages:
        if stage.ran:
            _, fresh = upsert(client, experiment, stage_spec(records, stage, finals.get(stage.stage)), parent)
            counts[not fresh] += 1
    return parent


def adopt(client, experiment: str, sweep: str, parent: str) -> None:
    """Point every chain run of ``sweep`` at its (re)made parent run, tracked in this call or before."""
    found = client.search_runs([experiment], filter_string=f"tags.`gnn.sweep` = '{sweep}' and "
                                                          "tags.`gnn.kind` = 'chain'", max_results=50_000)
    for run in found:
        if run.data.tags.get(PARENT_TAG) != parent:
            client.set_tag(run.info.run_id, PARENT_TAG, parent)
