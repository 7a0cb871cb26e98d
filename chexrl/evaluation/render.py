"""Text renderings: a `Table` as Markdown, HTML or CSV, and a page (a list of blocks) as one Markdown file or
one self-contained HTML file (figures embedded as base64 PNG). Pure: strings and bytes in, strings out."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

from chexrl.evaluation.tables import Table, format_cell


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]
    warning: bool = False  # shown in red in HTML


@dataclass(frozen=True)
class Image:
    path: str  # relative to the page, for Markdown
    alt: str
    png: bytes  # embedded in HTML


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Para | Bullets | Image | Code | Table


def _bold_cells(table: Table, row: tuple) -> set[int]:
    if not table.bold_row_max:
        return set()
    numbers = {i: v for i, v in enumerate(row) if table.formats[i] != "text" and isinstance(v, int | float)}
    if not numbers:
        return set()
    best = max(numbers.values())
    if best == min(numbers.values()):  # all equal: no best to show
        return set()
    return {i for i, v in numbers.items() if v == best}


def _md_text(text: str) -> str:
    """Markdown would read `<think>` as an HTML tag and hide it."""
    return text.replace("<", "&lt;")


def _md_escape(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in table.header) + " |"]
    lines.append("|" + "|".join("---" if f == "text" else "---:" for f in table.formats) + "|")
    for row in table.rows:
        bold = _bold_cells(table, row)
        cells = []
        for i, (value, fmt) in enumerate(zip(row, table.formats, strict=True)):
            text = _md_escape(format_cell(value, fmt))
            cells.append(f"**{text}**" if i in bold else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        bold = _bold_cells(table, row)
        cells = []
        for i, (value, fmt) in enumerate(zip(row, table.formats, strict=True)):
            text = html.escape(format_cell(value, fmt))
            cls = "" if fmt == "text" else ' class="num"'
            cells.append(f"<td{cls}><b>{text}</b></td>" if i in bold else f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def csv_text(table: Table) -> str:
    """Raw values at full precision; None is an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.header)
    for row in table.rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def markdown_page(title: str, blocks: Sequence[Block]) -> str:
    parts = [f"# {title}"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            parts.append(_md_text(b.text))
        elif isinstance(b, Bullets):
            mark = "**WARNING** " if b.warning else ""
            parts.append("\n".join(f"- {mark}{_md_text(item)}" for item in b.items))
        elif isinstance(b, Image):
            parts.append(f"![{b.alt}]({b.path})")
        elif isinstance(b, Code):
            parts.append(f"```\n{b.text.rstrip()}\n```")
        else:
            parts.append((f"**{b.title}**\n\n" if b.title else "") + markdown_table(b))
            if b.note:
                parts.append(f"*{b.note}*")
    return "\n\n".join(parts) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
.warning { color: #b00020; font-weight: bold; } .note { color: #555; font-style: italic; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""


def html_page(title: str, blocks: Sequence[Block]) -> str:
    parts = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>',
        f"<body><h1>{html.escape(title)}</h1>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Bullets):
            cls = ' class="warning"' if b.warning else ""
            parts.append("<ul>" + "".join(f"<li{cls}>{html.escape(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(f'<p><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}"></p>')
        elif isinstance(b, Code):
            parts.append(f"<pre>{html.escape(b.text)}</pre>")
        else:
            table = html_table(b)
            if b.title:
                table = table.replace("<table>", f"<table><caption>{html.escape(b.title)}</caption>", 1)
            parts.append(table)
            if b.note:
                parts.append(f'<p class="note">{html.escape(b.note)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
