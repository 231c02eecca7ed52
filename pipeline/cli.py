"""python -m pipeline.cli <stage> --run-dir D [--profile P] [-O key=value ...]

Runs one stage in the foreground. It is exactly what each submitted job executes, so a failed
job can be reproduced on a login node. An expected error (bad data, a bad profile, a missing
file) is one line on stderr and exit code 2; --debug or PIPELINE_DEBUG=1 adds its traceback.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.config import load_profile
from pipeline.errors import debug_enabled, is_expected, report
from pipeline.runner import run_stage
from pipeline.runs import RunDir
from pipeline.stages import STAGE_ORDER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGE_ORDER)
    parser.add_argument("--run-dir", required=True, help="run directory (created if --profile is given)")
    parser.add_argument("--profile", help="profile name or YAML path; freezes it into the run dir")
    parser.add_argument("-O", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile key, e.g. -O train.epochs=3 (repeatable)")
    parser.add_argument("--force", action="store_true", help="run even if the stage is done")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an expected error too (also: PIPELINE_DEBUG=1)")
    args = parser.parse_args(argv)
    try:
        overrides: tuple[str, ...] = tuple(args.overrides)
        if args.profile:
            RunDir(args.run_dir).freeze(load_profile(args.profile, overrides))
            overrides = ()
        run_stage(args.run_dir, args.stage, overrides, force=args.force)
    except Exception as exc:
        if not is_expected(exc):
            raise  # a bug: its traceback
        return report(exc, debug_enabled(args.debug))
    return 0


if __name__ == "__main__":
    sys.exit(main())
