"""Errors of the launch layer, each with the exit code the command line returns for it."""
from __future__ import annotations


class LaunchError(RuntimeError):
    """Something to fix before jobs can be launched (missing sbatch, a bad option); exit code 2."""

    exit_code = 2


class StageFailed(RuntimeError):
    """A stage ran and failed; the message names the stage, its error and its logs. Exit code 1."""

    exit_code = 1

    def __init__(self, stage: str, error: str, logs: list[str], hint: str = ""):
        self.stage = stage
        self.error = error
        self.logs = logs
        lines = [f"stage {stage} failed: {error}"] + [f"  log: {path}" for path in logs]
        if hint:
            lines.append(f"  {hint}")
        super().__init__("\n".join(lines))
