"""python -m jobs {submit,dry-run,status,resume,plan,report,track,compare,ui}: launch a profile's chain,
watch it, finish it, look at it.

Exit codes: 0 success, 2 something to fix (a bad profile, bad data, a missing file, no sbatch,
not a run directory, a stage that stopped on one of those), printed as one line ``error: ...``
(--debug or PIPELINE_DEBUG=1 adds the traceback), 1 a stage that crashed (a bug: its traceback
is shown), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys

from jobs import local, resume, status, submit
from jobs.errors import StageFailed
from pipeline.errors import debug_enabled, is_expected, one_line, report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{submit,dry-run,status,resume,plan,report,track,compare,ui}")

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("-O", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a profile key, e.g. -O train.epochs=3 (repeatable)")

    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true",
                       help="print the traceback of an expected error too (also: PIPELINE_DEBUG=1)")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[debug])  # --debug after any command

    p = command("submit", help="queue the profile's chain on SLURM (afterok dependencies); several "
                                        "profiles or seeds make a sweep, one job array per stage")
    p.add_argument("--profile", required=True,
                   help="profile name (profiles/<name>.yaml) or YAML path; several separated by commas sweep them all")
    p.add_argument("--seeds", type=int, default=1,
                   help="runs per profile with train.seed, train.seed+1, ... (a sweep when more than one)")
    p.add_argument("--runs-root", help="where run directories go (default: runs/)")
    overrides(p)

    p = command("dry-run", help="the same chain through submitit's local executor, stage by stage, "
                                         "on the profile's dry_run slice (-O dry_run.limit_rows=null for all rows)")
    p.add_argument("--profile", required=True, help="profile name (profiles/<name>.yaml) or YAML path")
    p.add_argument("--runs-root", help="where run directories go (default: runs/)")
    overrides(p)

    p = command("status", help="table of a run's stages: state, job, elapsed, peak memory, log")
    p.add_argument("--run", required=True, help="run directory, runs/<profile>/<run_id>, or a sweep's runs/_sweeps/<id>")

    p = command("resume", help="launch only the stages of a run (or of a sweep's runs) that are not done")
    p.add_argument("--run", required=True, help="run directory, runs/<profile>/<run_id>, or a sweep's runs/_sweeps/<id>")
    overrides(p)

    p = command("plan", help="memory budget and batch plan of each training stage for the profile's "
                                      "target device (resources.<stage>.gpu_mem_gb), without submitting")
    p.add_argument("--profile", required=True, help="profile name (profiles/<name>.yaml) or YAML path")
    overrides(p)

    run_help = "run directory, runs/<profile>/<run_id>, or a sweep's runs/_sweeps/<id>"
    p = command("report", help="draw report.html of a run (or of every run of a sweep, and the sweep's)")
    p.add_argument("--run", required=True, help=run_help)

    p = command("track", help="import a run (or a sweep) into its MLflow store; importing again changes nothing")
    p.add_argument("--run", required=True, help=run_help)
    overrides(p)

    p = command("compare", help="one markdown table of the headline metrics of several runs, side by side")
    p.add_argument("--runs", required=True, nargs="+", help="run directories or sweep folders")

    p = command("ui", help="mlflow ui on a local tracking store, on localhost (Ctrl-C stops it)")
    p.add_argument("--store", help="the SQLite file (default: runs/mlflow.db)")
    p.add_argument("--port", type=int, help="port (default: 5000 if free, else any free one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "submit":
            submit.submit(args.profile, args.overrides, seeds=args.seeds, runs_root=args.runs_root)
        elif args.command == "dry-run":
            local.dry_run(args.profile, args.overrides, runs_root=args.runs_root)
        elif args.command == "status":
            print(status.status_report(args.run))
        elif args.command == "resume":
            resume.resume(args.run, args.overrides)
        elif args.command == "plan":
            from pipeline.config import load_profile
            from pipeline.stages import resolve, workload

            profile = load_profile(args.profile, args.overrides)
            print(resolve(workload(profile.task).planner)(profile))
        elif args.command in ("report", "track", "compare", "ui"):
            return _look(args)
    except StageFailed as exc:
        # The stage's traceback is in its log; a crash (a bug) shows it here too.
        if exc.detail and (debug_enabled(args.debug) or not exc.expected):
            print(exc.detail.rstrip(), file=sys.stderr)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; finish later with: make resume RUN=<run dir printed above>", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_expected(exc):
            raise  # a bug: its traceback
        return report(exc, debug_enabled(args.debug))
    return 0


def _look(args: argparse.Namespace) -> int:
    from jobs import track  # matplotlib and mlflow: only for these commands

    if args.command == "report":
        for path in track.report(args.run):
            print(f"report: {path}")
    elif args.command == "track":
        print(f"tracked: {track.track(args.run, args.overrides).summary()}")
    elif args.command == "compare":
        print(track.compare(args.runs), end="")
    else:
        track.ui(args.store, args.port)   # replaces this process; returns only by raising
    return 0


if __name__ == "__main__":
    sys.exit(main())
