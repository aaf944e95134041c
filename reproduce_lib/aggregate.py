"""From the runs' files to a table's numbers: best rate on validation, mean ± std over seeds.

The paper's rules (PAPER.md): each run reports its test metrics at its epoch
of best validation loss (its ``summary.json``); among several methods of a
column (SGD at each rate of the grid) the one with the lowest mean validation
loss over seeds is reported; a cell is the mean ± standard deviation over seeds.

A run that diverged reports its best epoch before diverging, like any other
run (it is counted, and the tables mark it); a run without any finite
validation loss has no test metrics and is left out of the mean (and counted);
a missing run (failed, not run yet, or with unreadable files) is counted as missing.
"""

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from experiment.run_folder import CONFIG, INTERRUPTED, METRICS, SUMMARY

from .plan import Column, Plan, Row, RunSpec, script_of
from .protocol import PAPER_DATASETS, PAPER_TABLE1, Published, is_lstm, loss_metric

UNKNOWN = "unknown"  # the commit of a run that did not record one


@dataclass(frozen=True)
class RunResult:
    """A finished run: its folder (relative to the sweep's), ``summary.json`` and ``metrics.jsonl``
    records, and the commit of the code that trained it (its ``config.json``)."""

    folder: str
    summary: dict
    history: list[dict] = field(default_factory=list)
    commit: str = UNKNOWN


def _read_json_object(path: Path) -> dict | None:
    """The JSON object in ``path``; ``None`` if the file does not exist; ``ValueError`` (one
    line naming the file) if it is not a JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")
    return value


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as error:
                raise ValueError(f"{path}, line {number}, is not JSON ({error})") from None
    return records


def folder_problem(run_dir: Path) -> str | None:
    """Why the run folder ``run_dir`` cannot be read (a garbled ``summary.json``,
    ``config.json`` or ``metrics.jsonl``), or ``None``."""
    try:
        _read_json_object(run_dir / SUMMARY)
        _read_json_object(run_dir / CONFIG)
        _read_metrics(run_dir / METRICS)
    except ValueError as error:
        return f"{error}: remove the folder to train the run again"
    return None


def load_result(out_dir: Path, run: RunSpec) -> RunResult | None:
    """The result of ``run`` in ``out_dir``, or ``None`` when it has not finished, or when its
    files are unreadable (:func:`folder_problem` says why; reproduce.py reports it)."""
    run_dir = Path(out_dir) / run.folder
    try:
        summary = _read_json_object(run_dir / SUMMARY)
        if summary is None or summary.get("status") == INTERRUPTED:
            return None
        history = _read_metrics(run_dir / METRICS)
        config = _read_json_object(run_dir / CONFIG) or {}
    except ValueError:
        return None
    return RunResult(run.folder, summary, history, config.get("commit", UNKNOWN))


# ---------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``None`` for one value) of ``n`` values."""

    mean: float
    std: float | None
    n: int


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_std(values: Sequence[float | None]) -> Stat | None:
    """:class:`Stat` of the finite ``values`` (``None`` and NaN are left out); ``None`` if none."""
    kept = [float(v) for v in values if finite(v)]
    if not kept:
        return None
    return Stat(statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else None, len(kept))


def mean_validation_loss(results: Sequence[RunResult | None]) -> float:
    """Mean over the finished runs of their best validation loss (nats); a run that never had a
    finite one counts as infinite; ``inf`` when no run finished."""
    losses = [r.summary.get("valid_loss") for r in results if r is not None]
    losses = [v if finite(v) else math.inf for v in losses]
    return statistics.fmean(losses) if losses else math.inf


def choose_on_validation(candidates: Mapping[str, Sequence[RunResult | None]]) -> str | None:
    """The candidate (e.g. SGD's learning rate) with the lowest mean validation loss over its
    runs, the first one on a tie; ``None`` when none has a finite one."""
    best, best_loss = None, math.inf
    for name, results in candidates.items():
        loss = mean_validation_loss(results)
        if loss < best_loss:
            best, best_loss = name, loss
    return best


# ---------------------------------------------------------------------- cells
@dataclass
class Cell:
    """A column pair (test loss, top-1 %) of one row, with what it was computed from.

    ``method``: the method reported (chosen on validation for a tuned column),
    ``None`` when no run has a finite validation loss; ``lr``: its learning rate
    if the column was tuned. ``expected``: the runs of that method (one per
    seed); ``missing``: not finished; ``diverged``: diverged at some epoch;
    ``no_result``: finished without a finite validation loss (not in the mean).
    ``validation``: the mean validation loss of every candidate (``None``:
    none finite); ``finished``: finished runs over all candidates, of ``candidate_runs``
    (when fewer, a tuned column's choice was made among the finished ones only).
    """

    title: str
    method: str | None
    lr: float | None
    loss: Stat | None
    top1: Stat | None
    expected: int
    missing: int
    diverged: int
    no_result: int
    validation: dict[str, float | None]
    finished: int
    runs: list[dict]
    candidate_runs: int = 0

    @property
    def choice_incomplete(self) -> bool:
        """A tuned column whose choice did not see every candidate's runs."""
        return len(self.validation) > 1 and self.finished < self.candidate_runs


def column_cell(column: Column, results: Mapping[str, Sequence[RunResult | None]], loss_key: str) -> Cell:
    """The cell of ``column`` from ``results[method name]`` (one entry per seed, ``None`` when
    missing); ``loss_key`` is the summary's test loss (``'test_loss'`` in nats, ``'test_bpc'``)."""
    candidates = {m.name: results.get(m.name, ()) for m in column.methods}
    chosen = choose_on_validation(candidates) if column.tuned else column.methods[0].name
    validation = {name: (v if finite(v := mean_validation_loss(rs)) else None) for name, rs in candidates.items()}
    chosen_results = list(candidates.get(chosen, ())) if chosen else []
    finished = [r for r in chosen_results if r is not None]
    with_result = [r for r in finished if finite(r.summary.get("valid_loss"))]
    method = next((m for m in column.methods if m.name == chosen), None)
    acc = [r.summary.get("test_acc") for r in with_result]
    return Cell(
        title=column.title,
        method=chosen,
        lr=method.lr if (method and column.tuned) else None,
        loss=mean_std([r.summary.get(loss_key) for r in with_result]),
        top1=mean_std([100 * a if finite(a) else None for a in acc]),
        expected=len(chosen_results),
        missing=len(chosen_results) - len(finished),
        diverged=sum(bool(r.summary.get("diverged")) for r in finished),
        no_result=len(finished) - len(with_result),
        validation=validation,
        finished=sum(r is not None for rs in candidates.values() for r in rs),
        candidate_runs=sum(len(rs) for rs in candidates.values()),
        runs=[
            {
                "folder": r.folder,
                "commit": r.commit,
                "status": r.summary.get("status"),
                "diverged": bool(r.summary.get("diverged")),
                "best_epoch": r.summary.get("best_epoch"),
                "valid_loss": r.summary.get("valid_loss"),
                "loss": r.summary.get(loss_key),
                "top1": 100 * r.summary["test_acc"] if finite(r.summary.get("test_acc")) else None,
            }
            for r in finished
        ],
    )


# ----------------------------------------------------------------------- rows
@dataclass
class RowResult:
    """A table row: ours (one :class:`Cell` per column) and the paper's, when it has that row.

    ``comparable``: our runs use the paper's data set, so that the difference means something.
    """

    row: Row
    dataset: str
    loss_unit: str
    cells: list[Cell]
    paper: dict[str, Published] | None
    comparable: bool

    @property
    def has_runs(self) -> bool:
        return any(cell.finished for cell in self.cells)

    @property
    def paper_dataset(self) -> str:
        return PAPER_DATASETS["main_rnn" if is_lstm(self.row.model) else "main_cnn"]


def row_result(plan: Plan, row: Row, out_dir: Path) -> RowResult:
    """Read the runs of ``row`` under ``out_dir`` and compute its cells."""
    seeds = plan.seeds_for(row.model)
    key, loss_unit = loss_metric(row.model)
    loss_key = f"test_{key}"
    cells = []
    for column in row.columns:
        results = {
            m.name: [load_result(out_dir, plan.run(row.model, m, s, width=row.width)) for s in seeds]
            for m in column.methods
        }
        cells.append(column_cell(column, results, loss_key))
    dataset = plan.dataset_for(row.model)
    comparable = (
        dataset == PAPER_DATASETS[script_of(row.model)]
        and not plan.dry_run
        and (is_lstm(row.model) or plan.profile.size_multiplier == 1)
    )
    return RowResult(row, dataset, loss_unit, cells, PAPER_TABLE1.get((row.model, row.width)), comparable)
