"""Which code produced a result: the git commit of the project's checkout (``-dirty`` when tracked
files have changes), recorded with every launched job and every tracked run."""
from __future__ import annotations

import functools
import subprocess

from pipeline.config import PROJECT_ROOT


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the project's checkout, or None outside a git checkout (an installed copy, an sdist)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head
