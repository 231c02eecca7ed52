"""Preprocess stage for task: kg: build the heterogeneous mmap cache of the edge file, or find it built,
and check the labels file when the profile names one (see ``pipeline.kg.build``)."""
from __future__ import annotations

from typing import Any

from pipeline.kg.build import kg_preprocess
from pipeline.kg.cache import KGGraph
from pipeline.kg.report import check_labels


def run(ctx) -> dict[str, Any]:
    result = kg_preprocess(ctx.profile, ctx.log)
    if ctx.profile.labels_path:
        labelled = check_labels(KGGraph.open(result["cache_dir"]), ctx.profile.labels_path,
                                ctx.profile.kg.label_test_fraction)
        ctx.log.info("%s: labelled nodes %s", ctx.profile.labels_path, labelled)
    return result
