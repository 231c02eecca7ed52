"""One self-contained HTML page: tables, notes and PNG figures embedded as base64, with inline CSS,
so the file reads offline after ``scp`` (no script, no link to anything outside it).

A table with no rows is never drawn as an empty grid: it becomes a note that says what is missing.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+")
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: 2px 7px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child, td.text { text-align: left; }
caption { caption-side: top; text-align: left; color: #555; padding-bottom: .2em; }
figure { margin: .5em 0 1.2em; } figcaption { color: #555; font-size: .85em; }
img { max-width: 100%; } .note { color: #555; font-size: .9em; }
.failed, .out_of_memory, .cancelled, .interrupted { color: #b00; font-weight: bold; }
"""


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    empty: str = "nothing to show"
    """What the note says in place of a table without rows."""
    state_column: int | None = None
    """Column whose cell text also becomes the cell's class (failed stages in red)."""


@dataclass(frozen=True)
class Image:
    path: Path
    caption: str = ""


@dataclass(frozen=True)
class Note:
    text: str


Block = Union[Table, Image, Note, "Section"]


@dataclass(frozen=True)
class Section:
    title: str
    blocks: Sequence[Block] = field(default_factory=list)


def render(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
    body = [f"<h1>{_e(title)}</h1>", *(f'<p class="note">{_e(line)}</p>' for line in intro)]
    for section in sections:
        body += _section(section, level=2)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _section(section: Section, level: int) -> list[str]:
    out = [f"<h{level}>{_e(section.title)}</h{level}>"]
    for block in section.blocks:
        if isinstance(block, Section):
            out += _section(block, min(level + 1, 4))
        elif isinstance(block, Table):
            out.append(_table(block))
        elif isinstance(block, Image):
            out.append(_image(block))
        else:
            out.append(f'<p class="note">{_e(block.text)}</p>')
    return out


def _table(table: Table) -> str:
    if not table.rows:
        caption = f"{table.caption}: " if table.caption else ""
        return f'<p class="note">{_e(caption + table.empty)}</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    rows = []
    for row in table.rows:
        cells = []
        for i, value in enumerate(row):
            text = format_cell(value)
            # names and notes read left-aligned, numbers right-aligned; the state column also colours
            classes = ([text] if i == table.state_column else []) + (["text"] if _is_text(value) else [])
            cls = f' class="{_e(" ".join(classes))}"' if classes else ""
            cells.append(f"<td{cls}>{_e(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{_e(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def _image(image: Image) -> str:
    if not image.path.exists():
        what = _e(image.caption or image.path.name)
        return f'<p class="note">{what}: no figure ({_e(str(image.path))} is missing)</p>'
    data = base64.b64encode(image.path.read_bytes()).decode("ascii")
    caption = f"<figcaption>{_e(image.caption)}</figcaption>" if image.caption else ""
    return (f'<figure><img alt="{_e(image.caption or image.path.name)}" '
            f'src="data:image/png;base64,{data}">{caption}</figure>')


def format_cell(value: Any) -> str:
    """Numbers as a table reads them: scores to 4 decimals, large counts with separators, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return str(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and not NUMBER.fullmatch(value)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
