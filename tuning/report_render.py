"""The report's output formats: a `Section` of prose, `Table`s and plotly figures, written as a
self-contained HTML page (plotly.js inlined, nothing fetched), as Markdown (the same prose and
tables, no figures), and the trials as CSV.

Nothing here computes anything about a study; the sections are built in tuning.report_sections
and tuning.report_heldout.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the statistics format their numbers with `fmt`: no import cycle at runtime
    from tuning.report_stats import StudyView


def fmt(value, digits: int = 4) -> str:
    """A table cell: '-' for nothing or not finite, `digits` significant digits for a float.

    From 0.0001 to 9999 a float is written out (0.0003, 0.001234, 0.03400, 1.000, 1235), as
    Python's "g" writes a learning rate elsewhere in the report: decimal places alone would show
    0.0012345 as 0.0012 and 0.99996 as 1.0000. Beyond, 1.234e-05.
    Trailing zeros say a value was rounded: one that its shorter form gives exactly (a
    choice such as lr 0.001 or dropout 0.1) is written without them.
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        # The exponent after rounding: 0.99996 rounds to 1.000, 9999.6 to 1.000e+04.
        if value == 0:
            return "0"
        scientific = f"{value:.{digits - 1}e}"
        mantissa, exponent = scientific.split("e")
        # Written out while `digits` significant digits need no zeros before the point.
        if -4 <= int(exponent) <= digits - 1:
            shown = f"{value:.{digits - 1 - int(exponent)}f}"
        else:
            shown = scientific
        exact = (mantissa.rstrip("0").rstrip(".") + "e" + exponent) if shown == scientific \
            else shown.rstrip("0").rstrip(".") if "." in shown else shown
        return exact if float(exact) == value else shown
    return str(value)


DECIMALS = 4
"""Decimal places of the losses, accuracies and scores the report writes."""


def fixed(value) -> str:
    """A loss, accuracy or score: DECIMALS decimal places, so that a column reads 0.7200 above
    0.7020 (fmt writes the first 0.72, which looks like another kind of number). A value that
    would read 0.0000 but is not 0 keeps fmt's 4 significant digits (1.258e-07)."""
    if not isinstance(value, float) or not math.isfinite(value):
        return fmt(value)
    if value != 0 and abs(value) < 0.5 * 10 ** -DECIMALS:
        return fmt(value)
    return f"{value:.{DECIMALS}f}"


def _md_cell(text: str) -> str:
    """A Markdown table cell: a class named "a|b" would split its row, a line break end it."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split("\n"))


@dataclass
class Table:
    """A table rendered both as HTML and as Markdown."""

    columns: list[str]
    rows: list[list] = field(default_factory=list)
    note: str = ""
    """Printed under the table: which trials it counts, what its columns mean."""
    fixed_columns: tuple[str, ...] = ()
    """Columns of losses, accuracies or scores, written with `fixed`; the others with `fmt`."""

    def cells(self, row: list) -> list[str]:
        return [fixed(v) if column in self.fixed_columns else fmt(v)
                for column, v in zip(self.columns, row, strict=True)]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(map(_md_cell, self.columns)) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(map(_md_cell, self.cells(row))) + " |" for row in self.rows]
        if self.note:
            lines += ["", f"*{self.note}*"]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>"
                                        for cell in self.cells(row))
                       + "</tr>" for row in self.rows)
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


@dataclass
class Section:
    """One section of the report: prose, tables and figures."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, Table]] = field(default_factory=list)
    figures: list = field(default_factory=list)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;
padding:.25em .6em;text-align:right}th{background:#f3f3f3}h2{border-bottom:2px solid #ddd;
margin-top:2em}.warn{color:#a40}.note{font-size:.9em;color:#555;margin-top:-1em}"""


def render_html(title: str, sections: list[Section]) -> str:
    """One page that opens offline: plotly.js is inlined once, each figure refers to it."""
    from plotly.offline import get_plotlyjs

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2 id='{section.title.lower().replace(' ', '-')}'>"
                     f"{html.escape(section.title)}</h2>")
        for p in section.paragraphs:
            cls = " class='warn'" if p.startswith("Warning") else ""
            parts.append(f"<p{cls}>{html.escape(p)}</p>")
        for caption, table in section.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>{table.html()}")
        for fig in section.figures:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        out += [p + "\n" for p in section.paragraphs]
        for caption, table in section.tables:
            out += [f"### {caption}", "", table.markdown(), ""]
    return "\n".join(out)


def trials_csv(view: StudyView) -> str:
    """trials.csv: one row per trial: its state, value, every parameter (fixed ones too) and
    what the worker recorded about it."""
    names = sorted({n for t in view.trials for n in t.params} | set(view.space))
    attrs = ["val_accuracy", "train_eval_loss", "epochs_run", "train_seconds",
             "samples_per_second", "seed", "worker", "device", "prune_reason", "fail_reason",
             "train_eval_losses", "train_objectives", "val_accuracies", "epoch_ends",
             "param_count", "latency_ms", "warm_start"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["number", "state", "value", *names, *attrs])
    for t in view.trials:
        writer.writerow([t.number, t.state.name, t.value,
                         *[view.param(t, n) for n in names],
                         *[_csv_cell(t.user_attrs.get(a)) for a in attrs]])
    return text.getvalue()


def _csv_cell(value):
    """A list or dict (each epoch's losses) as JSON, which any language reads back: Python's
    own text of it writes a diverged epoch's None, which JSON calls null, and True for true."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value
