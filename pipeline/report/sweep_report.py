"""``<sweep folder>/report.html``: a sweep's runs (profiles x seeds) summed up: mean ± std of every
headline number over the seeds of each profile, as a table and a figure, then each run's numbers
side by side and where its own report is. The runs are given by the launch layer (which reads the
sweep's ``sweep.json``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import io
from pipeline.report.compare import Summary, compare_rows, summarise
from pipeline.report.figures import new_figure, save_png
from pipeline.report.html import Image, Note, Section, Table, render
from pipeline.report.records import RunRecords
from pipeline.report.run_report import REPORT


def write_sweep_report(folder: Path, runs: list[RunRecords]) -> Path:
    summaries = summarise(runs)
    sections = [Section("Runs", [Table(("run", "profile", "seed", "state", "report"),
                                       [(r.key, r.profile.name, r.profile.train.seed, r.state, _report_of(r))
                                        for r in runs], state_column=3, empty="the sweep lists no run")])]
    for group in dict.fromkeys(s.group for s in summaries):
        mine = [s for s in summaries if s.group == group]
        blocks: list = [Table(("metric", "mean ± std (n)"), [(s.metric, s.text) for s in mine],
                              caption=f"{group}: over its {max(s.n for s in mine)} run(s) with a value")]
        figure = summary_figure(folder, group, mine)
        blocks.append(Image(figure, f"{group}: mean ± std over seeds") if figure else
                      Note(f"{group}: no finished run to plot"))
        sections.append(Section(f"Mean ± std over seeds: {group}", blocks))
    if not summaries:
        sections.append(Section("Mean ± std over seeds", [Note("no run of the sweep has finished evaluate or export")]))
    columns, rows = compare_rows(runs)
    sections.append(Section("Every run", [Table(columns, rows, empty="no headline metrics yet")]))
    intro = [f"sweep {folder.name}: {len(runs)} runs, {sum(r.state == 'done' for r in runs)} done",
             f"folder: {folder}"]
    out = folder / REPORT
    io.write_text(out, render(f"Sweep {folder.name}", intro, sections))
    return out


def summary_figure(folder: Path, group: str, summaries: list[Summary]) -> Path | None:
    shown = [s for s in summaries if s.mean is not None]
    if not shown:
        return None
    fig = new_figure(8, 0.28 * len(shown) + 1.3)
    ax = fig.subplots()
    y = np.arange(len(shown))
    ax.errorbar([s.mean for s in shown], y, xerr=[s.std or 0.0 for s in shown], fmt="o", capsize=3)
    ax.set(yticks=y, title=f"{group}: mean ± std over seeds", xlabel="value")
    ax.set_yticklabels([s.metric for s in shown], fontsize=7)
    ax.invert_yaxis()
    ax.grid(alpha=0.3)
    return save_png(fig, folder / f"summary_{group}.png")


def _report_of(run: RunRecords) -> str:
    path = run.path / REPORT
    return str(path) if path.exists() else "not drawn yet"
