"""The last step of every chain, and the commands around it: ``report`` (a run's report.html),
``track`` (its import into MLflow), ``compare`` (headline numbers side by side) and ``ui``.

The last step draws the run's report (and, for a run of a sweep, the sweep's) and, with
``tracking.enabled``, imports the run into the store (``pipeline.tracking``). A local chain
(``make demo``, ``make dry-run``, a local resume) takes it here once its stages are done; on SLURM
the stage job that completes the chain takes it after its stage (``jobs.stage_job``), so no extra
job is queued. A chain that stopped part way gets no automatic step: ``make report`` and
``make track`` show and import it as it is. A last step that fails never undoes the chain: it
prints one line with the command to retry.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Sequence

from jobs import slurm
from jobs.errors import LaunchError
from jobs.records import latest_records, launched_with
from jobs.selection import done_states
from jobs.status import stage_rows
from jobs.sweep import SWEEP_FILE, SWEEPS_DIR, sweep_runs
from pipeline.errors import is_expected, one_line
from pipeline.report.compare import compare_markdown
from pipeline.report.records import RunRecords, read_run
from pipeline.report.run_report import is_current, write_report
from pipeline.report.sweep_report import write_sweep_report
from pipeline.runs import RUNS_DIR, RunDir
from pipeline.tracking.importer import Tracked, track as import_runs
from pipeline.tracking.store import DEFAULT_DB


def resolve(path: str | os.PathLike) -> tuple[list[RunDir], Path | None]:
    """The runs a RUN argument names: one run, or every run of a sweep folder (and that folder)."""
    runs = sweep_runs(path)
    if runs is not None:
        return runs, Path(path).resolve()
    run = RunDir(path)
    if not run.profile_path.exists():
        raise LaunchError(f"{run.path} is not a run directory (no profile.yaml); give runs/<profile>/<run_id> "
                          f"or a sweep's runs/{SWEEPS_DIR}/<id>")
    return [run], None


def sweep_of(run: RunDir) -> Path | None:
    """The sweep folder (beside the run folders) that lists ``run``, if any."""
    mine = run.path.resolve()
    for file in sorted((run.path.parents[1] / SWEEPS_DIR).glob(f"*/{SWEEP_FILE}")):
        try:
            members = sweep_runs(file.parent) or []
        except LaunchError:
            continue
        if any(member.path.resolve() == mine for member in members):
            return file.parent.resolve()
    return None


def known_states(run: RunDir) -> dict[str, tuple[str, str]]:
    """stage -> (state, detail) as ``make status`` shows them (through sacct for SLURM runs)."""
    profile = run.profile()
    records = latest_records(run)
    sacct = slurm.query_sacct(r["job_id"] for r in records.values()) if launched_with(run) == "slurm" else None
    rows = stage_rows(run, list(profile.stages), done_states(run, profile), records, sacct)
    return {row.stage: (row.state, row.detail) for row in rows}


def read_records(runs: Sequence[RunDir], overrides: Sequence[str] = ()) -> list[RunRecords]:
    return [read_run(run.path, known_states(run), overrides) for run in runs]


def report(path: str | os.PathLike) -> list[Path]:
    """Draw the report of a run, or of every run of a sweep and the sweep's own; returns their paths."""
    runs, sweep = resolve(path)
    records = read_records(runs)
    out = [write_report(r) for r in records]
    if sweep is not None:
        out.append(write_sweep_report(sweep, records))
    return out


def track(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Tracked:
    """Import a run into its tracking store, drawing its report first unless it is newer than the
    run's records (its figures are what the import uploads); a run of a sweep brings the whole
    sweep along (its parent sums up all of them)."""
    bad = [o for o in overrides if not o.startswith("tracking.")]
    if bad:
        raise LaunchError(f"-O {bad[0]}: track takes only tracking.* overrides (e.g. -O tracking.uri=http://host:5000);"
                          " the rest of the profile is what the run ran with")
    runs, sweep = resolve(path)
    if sweep is None and (found := sweep_of(runs[0])) is not None:
        runs, sweep = sweep_runs(found) or runs, found
    records = read_records(runs, overrides)
    for r in records:
        if not is_current(r.path):
            write_report(r)
    if sweep is not None:
        write_sweep_report(sweep, records)
    return import_runs(records, sweep)


def compare(paths: Sequence[str]) -> str:
    """One markdown table: the headline numbers of every run named (a sweep folder: all its runs)."""
    runs = [run for path in paths for run in resolve(path)[0]]
    if not runs:
        raise LaunchError("compare needs at least one run: RUNS=\"runs/<profile>/<run_id> ...\" or a sweep folder")
    return compare_markdown(read_records(runs))


def finish_run(run: RunDir) -> None:
    """The chain's last step for ``run``: its report (and its sweep's), then, with
    ``tracking.enabled``, the import. A failure is one warning line with the command to retry: the
    finished chain stays finished."""
    sweep = sweep_of(run)
    try:
        records = read_records([run])[0]
        print(f"report: {write_report(records)}", flush=True)
        members = _sweep_records(sweep, records) if sweep is not None else None
        if sweep is not None:
            print(f"sweep report: {write_sweep_report(sweep, members)}", flush=True)
    except Exception as exc:
        print(f"warning: the report of {run.path} failed: {_reason(exc)} (retry: make report RUN={run.path})")
        return
    if not records.profile.tracking.enabled:
        return
    try:
        tracked = import_runs([records], sweep, members)
    except Exception as exc:
        print(f"warning: tracking {run.path} failed: {_reason(exc)} (retry: make track RUN={sweep or run.path})")
        return
    browse = "; browse with: make ui" if tracked.uri.startswith("sqlite:") else ""
    print(f"tracked: {tracked.summary()}{browse}", flush=True)


def finish_if_complete(run_dir: str) -> None:
    """In a SLURM stage job, after its stage: the last step, if every stage of the chain is now
    done. Several stages may complete together (branches of the chain): the import is idempotent
    and locked, so taking the step twice is harmless."""
    run = RunDir(run_dir)
    if all(state == "done" for state in done_states(run, run.profile()).values()):
        finish_run(run)


def _sweep_records(sweep: Path, own: RunRecords) -> list[RunRecords]:
    """Every run of ``sweep`` with ``own`` as just read; the others from their files alone (asking
    the scheduler about a hundred runs at the end of each is not worth it: ``make track`` does)."""
    return [own if run.path.resolve() == own.path.resolve() else read_run(run.path) for run in sweep_runs(sweep) or []]


def ui(store: str | None = None, port: int | None = None) -> None:
    """Become ``mlflow ui`` on a local store (default runs/mlflow.db), on localhost, until Ctrl-C."""
    db = Path(store).resolve() if store else RUNS_DIR / DEFAULT_DB
    if not db.is_file():
        raise LaunchError(f"{db}: no tracking store there yet; make demo or make track RUN=runs/<profile>/<run_id> "
                          "fills it (a site's server has its own UI: open its address)")
    port = port or free_port()
    uri = f"sqlite:///{db}"
    print(f"MLflow UI on http://127.0.0.1:{port} (store {uri}); Ctrl-C stops it", flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(port)]
    # exec, not a child: Ctrl-C or a kill reaches mlflow (and its workers) directly, leaving no server behind
    os.execve(sys.executable, command, {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


def free_port(preferred: int = 5000) -> int:
    """``preferred`` if nothing listens there, else a free port the system picks."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise LaunchError("no free local port for the MLflow UI")


def _reason(exc: Exception) -> str:
    return one_line(exc) if is_expected(exc) else f"{type(exc).__name__}: {exc}"
