"""python -m pipeline.cli <stage> --run-dir D [--profile P] [-O key=value ...]

Runs one stage in the foreground. It is exactly what each submitted job executes, so a failed
job can be reproduced on a login node.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.config import ProfileError, load_profile
from pipeline.runner import StageError, run_stage
from pipeline.runs import RunDir
from pipeline.stages import STAGES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--run-dir", required=True, help="run directory (created if --profile is given)")
    parser.add_argument("--profile", help="profile name or YAML path; freezes it into the run dir")
    parser.add_argument("-O", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile key, e.g. -O train.epochs=3 (repeatable)")
    parser.add_argument("--force", action="store_true", help="run even if the stage is done")
    args = parser.parse_args(argv)
    try:
        overrides: tuple[str, ...] = tuple(args.overrides)
        if args.profile:
            RunDir(args.run_dir).freeze(load_profile(args.profile, overrides))
            overrides = ()
        run_stage(args.run_dir, args.stage, overrides, force=args.force)
    except (ProfileError, StageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
