"""A tiny finished CAN run for the report and tracking tests (a synthetic cache, a 3-epoch teacher,
evaluate, its report), copies of it under other run ids, and readers of what a report.html holds."""
from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image

from jobs.track import report
from pipeline.runner import run_stage
from pipeline.runs import RunDir
from tests.helpers import run_with_cache, tiny_profile, write_synthetic_cache

EPOCHS = 3


def tiny_can_run(root: Path) -> RunDir:
    """preprocess (marked done on a synthetic cache) -> teacher -> evaluate, in ``root/runs/local/r``."""
    cache = write_synthetic_cache(root / "cache")
    run = run_with_cache(root, tiny_profile([f"train.epochs={EPOCHS}", "train.patience=5"]), cache)
    run_stage(run.path, "teacher")
    run_stage(run.path, "evaluate")
    report(run.path)
    return run


def copy_run(run: RunDir, runs_root: Path, run_id: str, f1_shift: float = 0.0) -> RunDir:
    """A copy of ``run`` (its report too, but no checkpoint) as ``runs_root/<profile>/<run_id>``;
    ``f1_shift`` is added to every F1 of its evaluate table, so copies read as runs with different
    results."""
    target = runs_root / run.path.parent.name / run_id
    shutil.copytree(run.path, target, ignore=shutil.ignore_patterns("*.pt"))
    if f1_shift:
        path = target / "evaluate" / "metrics.json"
        data = json.loads(path.read_text())
        for row in data["rows"]:
            row["f1"] = row["f1"] + f1_shift
        path.write_text(json.dumps(data))
    return RunDir(target)


class ReportParser(HTMLParser):
    """The images (decoded PNG bytes) and tables (their body rows) of a report.html."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, bytes]] = []
        self.other_sources: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.scripts = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            src = attrs.get("src", "")
            if src.startswith("data:image/png;base64,"):
                self.images.append((attrs.get("alt", ""), base64.b64decode(src.split(",", 1)[1])))
            else:
                self.other_sources.append(src)
        elif tag in ("script", "link", "iframe"):
            self.scripts += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_report(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text())
    return parser


def decode_png(data: bytes):
    """The pixels of a PNG (raises if the bytes are not one)."""
    return matplotlib.image.imread(io.BytesIO(data), format="png")
