"""Errors of the launch layer, each with the exit code the command line returns for it."""
from __future__ import annotations

from pipeline.errors import EXIT_USER_ERROR, UserError

EXIT_STAGE_CRASHED = 1


class LaunchError(UserError, RuntimeError):
    """Something to fix before jobs can be launched (missing sbatch, a bad option); exit code 2."""

    exit_code = EXIT_USER_ERROR


class StageFailed(RuntimeError):
    """A stage ran and failed; the one-line message names the stage, its error and its logs.

    Exit code 2 when the stage stopped on an expected error (bad data, a missing file: the user
    fixes it), 1 when it crashed on anything else (a bug: ``detail`` holds the job's traceback).
    """

    def __init__(self, stage: str, error: str, logs: list[str], hint: str = "", expected: bool = True,
                 detail: str = ""):
        self.stage = stage
        self.error = error
        self.logs = logs
        self.hint = hint
        self.expected = expected
        self.detail = detail
        """The job's traceback as submitit reported it ("" when the job left none)."""
        self.exit_code = EXIT_USER_ERROR if expected else EXIT_STAGE_CRASHED
        parts = [f"stage {stage} failed: {error}", *(f"log: {path}" for path in logs), *([hint] if hint else [])]
        super().__init__("; ".join(parts))

    def with_hint(self, hint: str) -> StageFailed:
        return StageFailed(self.stage, self.error, self.logs, hint, self.expected, self.detail)
