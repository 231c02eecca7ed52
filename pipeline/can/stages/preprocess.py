"""Preprocess stage: build the window-graph cache of the profile's CAN captures, or find it built.

See ``pipeline.can.data.build`` for the cache, its key and how validation is chosen.
"""
from __future__ import annotations

from typing import Any

from pipeline.can.data.build import preprocess, warn_if_validation_has_no_attacks
from pipeline.stage_warnings import clear_warnings


def run(ctx) -> dict[str, Any]:
    """Stage entry: build the cache unless one with the same key exists; return where it is."""
    clear_warnings(ctx.dir)
    result = preprocess(ctx.profile, ctx.log)
    warn_if_validation_has_no_attacks(result["labels"], ctx.dir, ctx.log, ctx.profile.data.val_files)
    return result


