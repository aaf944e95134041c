"""Table 1 as Markdown (the paper's layout, its numbers beside ours) and as JSON (the same numbers)."""

from collections.abc import Sequence
from pathlib import Path

from .aggregate import Cell, RowResult, Stat
from .outputs import DASH, Provenance, atomic_write_text, format_rate, runs_note, write_json
from .protocol import DATASET_NAMES, PAPER_SOURCE, SGD_RATES, Published, is_lstm


def format_stat(stat: Stat | None, decimals: int) -> str:
    if stat is None:
        return DASH
    if stat.std is None:
        return f"{stat.mean:.{decimals}f}"
    return f"{stat.mean:.{decimals}f} ± {stat.std:.{decimals}f}"


def loss_decimals(row: RowResult) -> int:
    return 3 if is_lstm(row.row.model) else 2


def cell_notes(cell: Cell) -> str:
    """Marks after a cell's numbers: ``†`` some runs diverged; ``‡`` the rate was chosen among the
    finished runs only; ``(n=k/m)`` only k of m runs have a result."""
    marks = (" †" if cell.diverged else "") + (" ‡" if cell.choice_incomplete else "")
    n = cell.loss.n if cell.loss else 0
    if cell.method is not None and n < cell.expected:
        marks += f" (n={n}/{cell.expected})"
    return marks


def display_name(model: str, dataset: str, size_multiplier: float) -> str:
    """E.g. ``CIFAR-10 VGG19 width×3`` or ``pydoc char LSTM (bits/char)``."""
    data_name = DATASET_NAMES.get(dataset, dataset)
    if is_lstm(model):
        return f"{data_name} char LSTM (bits/char)"
    return f"{data_name} {model}" + ("" if size_multiplier == 1 else f" width×{size_multiplier:g}")


def row_name(row: RowResult, base_width: float) -> str:
    return display_name(row.row.model, row.dataset, base_width * row.row.width)


def column_titles(rows: Sequence[RowResult]) -> list[tuple]:
    """``(title, tuned)`` of every column of the table, in first-seen order."""
    seen = {}
    for row in rows:
        for column in row.row.columns:
            seen.setdefault(column.title, column.tuned)
    return list(seen.items())


def difference(ours: Stat | None, paper: tuple | None, decimals: int) -> str:
    if ours is None or paper is None:
        return DASH
    return f"{ours.mean - paper[0]:+.{decimals}f}"


def markdown_table1(
    rows: Sequence[RowResult], provenance: Provenance, base_width: float, runs_dir: str, title: str = "Table 1"
) -> str:
    """The Markdown text of the table: per model, our row, the paper's row and their difference."""
    columns = column_titles(rows)
    header = ["Model", ""]
    for name, tuned in columns:
        header += ([f"{name} best lr"] if tuned else []) + [f"{name} loss", f"{name} top-1"]
    lines = [
        f"# {title}: test loss and top-1 accuracy at the epoch of best validation loss",
        "",
        f"{provenance.line()} · `{provenance.command}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = {cell.title: cell for cell in row.cells}
        decimals = loss_decimals(row)
        ours = [row_name(row, base_width), "ours"]
        paper = ["", f"paper ({DATASET_NAMES[row.paper_dataset]})"] if row.paper else None
        diff = ["", "ours − paper"] if row.paper and row.comparable else None
        for name, tuned in columns:
            cell = cells.get(name)
            published: Published | None = row.paper.get(name) if row.paper else None
            if tuned:
                ours.append(format_rate(cell.lr) if cell else DASH)
                if paper is not None:
                    paper.append(format_rate(published.lr) if published else DASH)
                if diff is not None:
                    diff.append("")
            if cell is None:
                ours += [DASH, DASH]
            else:
                notes = cell_notes(cell)
                ours += [format_stat(cell.loss, decimals) + notes, format_stat(cell.top1, 1) + notes]
            if paper is not None:
                paper += [published.loss_text, published.top1_text] if published else [DASH, DASH]
            if diff is not None:
                diff += (
                    [difference(cell.loss, published.loss, decimals), difference(cell.top1, published.top1, 1)]
                    if cell and published
                    else [DASH, DASH]
                )
        for line in (ours, paper, diff):
            if line is not None:
                lines.append("| " + " | ".join(line) + " |")
    lines += ["", *notes_text(rows, base_width, runs_dir)]
    return "\n".join(lines) + "\n"


def common_notes() -> list[str]:
    """What every table's cells are: metrics, the paper's three methods, the marks."""
    grid = ", ".join(format_rate(lr) for lr in SGD_RATES)
    return [
        "Each run is evaluated on test at its epoch of best validation loss; a cell is the mean ± sample "
        "standard deviation over seeds. Loss: negative log-likelihood in nats (LSTM: bits per character); "
        "top-1: accuracy in %.",
        f"SGD: the learning rate of the grid {{{grid}}} with the lowest mean validation loss. "
        "Adam: default hyper-parameters. Alrao: Alrao-SGD with the paper's interval and copies.",
        "† some runs of the cell diverged; they count with their best epoch before diverging. "
        "(n=k/m): k of the m runs have a result (the others failed, are not finished, or never had "
        "a finite validation loss). ‡ not every rate of the grid has finished all its runs: the rate "
        "was chosen among those that have.",
    ]


def notes_text(rows: Sequence[RowResult], base_width: float, runs_dir: str) -> list[str]:
    notes = [*common_notes(), f"Paper: {PAPER_SOURCE} (CIFAR-10 at width 1 and 3; PTB at character level)."]
    if any(row.paper and not row.comparable for row in rows):
        notes.append(
            "The paper's numbers are for its data and widths; rows on other data or widths show "
            "them for reference, without a difference."
        )
    notes.append(runs_note(runs_dir))
    return ["- " + note for note in notes]


# ---------------------------------------------------------------------- JSON
def _stat(stat: Stat | None) -> dict | None:
    return None if stat is None else {"mean": stat.mean, "std": stat.std, "n": stat.n}


def json_table1(rows: Sequence[RowResult], provenance: Provenance, base_width: float) -> dict:
    """The numbers of :func:`markdown_table1`, with the runs each cell comes from."""
    out = {**provenance.as_dict(), "paper_source": PAPER_SOURCE, "rows": []}
    for row in rows:
        cells = {}
        for cell in row.cells:
            published = row.paper.get(cell.title) if row.paper else None
            cells[cell.title] = {
                "method": cell.method,
                "lr": cell.lr,
                "loss": _stat(cell.loss),
                "top1": _stat(cell.top1),
                "expected": cell.expected,
                "missing": cell.missing,
                "diverged": cell.diverged,
                "no_result": cell.no_result,
                "choice_incomplete": cell.choice_incomplete,
                "validation_loss_by_method": cell.validation,
                "runs": cell.runs,
                "paper": None
                if published is None
                else {"loss": list(published.loss), "top1": list(published.top1), "lr": published.lr},
                "difference": None
                if not (published and row.comparable)
                else {
                    "loss": cell.loss.mean - published.loss[0] if cell.loss else None,
                    "top1": cell.top1.mean - published.top1[0] if cell.top1 else None,
                },
            }
        out["rows"].append(
            {
                "name": row_name(row, base_width),
                "model": row.row.model,
                "width": row.row.width,
                "size_multiplier": None if is_lstm(row.row.model) else base_width * row.row.width,
                "dataset": row.dataset,
                "loss_unit": row.loss_unit,
                "comparable": row.comparable,
                "cells": cells,
            }
        )
    return out


def write_table(results_dir: Path, stem: str, markdown: str, numbers: dict) -> list[Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` into ``results_dir`` (atomically); returns their paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    md, js = results_dir / f"{stem}.md", results_dir / f"{stem}.json"
    atomic_write_text(md, markdown)
    write_json(js, numbers)
    return [md, js]


def write_table1(
    rows: Sequence[RowResult], provenance: Provenance, base_width: float, results_dir: Path, runs_dir: str
) -> list[Path]:
    """Table 1 (one row per model, the paper's beside ours) as ``table1.md`` and ``table1.json``."""
    return write_table(
        results_dir,
        "table1",
        markdown_table1(rows, provenance, base_width, runs_dir),
        json_table1(rows, provenance, base_width),
    )


# ------------------------------------------------------------------ baselines
def markdown_by_method(
    rows: Sequence[RowResult], provenance: Provenance, base_width: float, title: str, notes: Sequence[str]
) -> str:
    """One row per method (column pairs of ``rows``), one column pair (loss, top-1) per model:
    the layout for many methods on few models. A tuned column's cells say the rate chosen."""
    header = ["Method"]
    for row in rows:
        header += [f"{row_name(row, base_width)} loss", "top-1"]
    lines = [
        f"# {title}: test loss and top-1 accuracy at the epoch of best validation loss",
        "",
        f"{provenance.line()} · `{provenance.command}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, tuned in column_titles(rows):
        line = [f"{name} (best lr on validation)" if tuned else name]
        for row in rows:
            cell = next((c for c in row.cells if c.title == name), None)
            if cell is None:
                line += [DASH, DASH]
                continue
            marks = cell_notes(cell) + (f" (lr {format_rate(cell.lr)})" if tuned and cell.lr is not None else "")
            line += [format_stat(cell.loss, loss_decimals(row)) + marks, format_stat(cell.top1, 1) + cell_notes(cell)]
        lines.append("| " + " | ".join(line) + " |")
    lines += ["", *("- " + note for note in notes)]
    return "\n".join(lines) + "\n"
