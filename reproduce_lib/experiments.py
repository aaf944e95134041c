"""The experiments of the paper: for each, the runs it needs and the files it writes from them.

An experiment is one :class:`Experiment` in :data:`EXPERIMENTS`: the runs it
needs (a function of the :class:`Plan`) and a report writing its files from
whichever of those runs have finished. Experiments needing the same run share
its folder (``table1``, ``curves`` and ``baselines`` share the SGD, Adam and
Alrao runs).
"""

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiment import optimizers
from experiment.optimizers import OPTIMIZERS, MissingPackage, import_baseline

from . import figures
from .aggregate import RowResult, load_result, row_result
from .outputs import Provenance, format_seeds, runs_note, seeds_text, write_json
from .plan import Column, Plan, Row, RunSpec, alrao_sgd, baseline_columns, sgd, table1_columns, unique, width_columns
from .protocol import (
    ALRAO_CNN,
    ALRAO_LSTM,
    CURVE_EXTRA_RATES,
    GRANULARITIES,
    GRANULARITY_SETTINGS,
    WIDTH_FACTOR,
    AlraoSetting,
    is_lstm,
    loss_metric,
)
from .tables import common_notes, display_name, format_rate, json_table1, markdown_by_method, write_table, write_table1


@dataclass(frozen=True)
class Context:
    """Where an experiment reads its runs and writes its results, and the provenance it states."""

    plan: Plan
    out_dir: Path
    results_dir: Path
    commit: str
    command: str
    source_hash: str = ""  # of the code writing the results (experiment.provenance.source_hash)

    def provenance(self, models: Sequence[str], run_commits: Iterable[str], seeds: str | None = None) -> Provenance:
        """The provenance of a result on ``models`` from runs trained at ``run_commits``."""
        return Provenance(
            self.plan.profile.name,
            seeds or seeds_text(self.plan, models),
            self.commit,
            self.command,
            tuple(sorted(set(run_commits))),
            self.source_hash,
        )


@dataclass(frozen=True)
class Experiment:
    """``runs(plan)``: the runs it needs; ``report(context)``: writes its tables or figures from
    the finished runs and returns their paths."""

    help: str
    runs: Callable[[Plan], list[RunSpec]]
    report: Callable[[Context], list[Path]]
    warnings: Callable[[Plan], list[str]] = lambda plan: []  # what it leaves out and why, said before running


# ------------------------------------------------------------------ Table 1
def table1_rows(plan: Plan) -> list[Row]:
    return [Row(m, 1, table1_columns(m)) for m in plan.models_or(plan.profile.table1_models)]


def width_rows(plan: Plan) -> list[Row]:
    """The width×3 rows: the CNNs among the models, Adam and Alrao at 3 times the profile's width."""
    return [
        Row(m, WIDTH_FACTOR, width_columns(m)) for m in plan.models_or(plan.profile.table1_models) if not is_lstm(m)
    ]


def rows_runs(rows: Callable[[Plan], list[Row]]) -> Callable[[Plan], list[RunSpec]]:
    return lambda plan: unique(run for row in rows(plan) for run in plan.row_runs(row))


def table1_and_width_rows(plan: Plan) -> list[Row]:
    """The rows of the paper's Table 1 in its order: each model, then that model at width×3."""
    width = {row.model: row for row in width_rows(plan)}
    return [r for row in table1_rows(plan) for r in (row, width.get(row.model)) if r is not None]


#: ``write(rows, provenance, context) -> paths``: a table's files from its rows' results.
TableWriter = Callable[[list[RowResult], Provenance, Context], list[Path]]


def table_report(rows: Callable[[Plan], list[Row]], stem: str, write: TableWriter) -> Callable[[Context], list[Path]]:
    """A report writing a table (``<stem>`` in messages) from the rows that have finished runs."""

    def report(context: Context) -> list[Path]:
        results = [row_result(context.plan, row, context.out_dir) for row in rows(context.plan)]
        results = [r for r in results if r.has_runs]
        if not results:
            print(f"{stem}: no finished run in {context.out_dir}: nothing to write")
            return []
        commits = [run["commit"] for r in results for cell in r.cells for run in cell.runs]
        return write(results, context.provenance([r.row.model for r in results], commits), context)

    return report


def write_table1_files(rows: list[RowResult], provenance: Provenance, context: Context) -> list[Path]:
    return write_table1(
        rows, provenance, context.plan.profile.size_multiplier, context.results_dir, str(context.out_dir)
    )


# ---------------------------------------------------------- learning curves
def curve_models(plan: Plan) -> list[str]:
    return list(plan.models_or(plan.profile.curve_models))


def curve_columns(model: str) -> tuple[Column, ...]:
    """Table 1's columns, SGD's with the rates of :data:`CURVE_EXTRA_RATES` added."""
    sgd_column, *others = table1_columns(model)
    extra = tuple(sgd(lr) for lr in CURVE_EXTRA_RATES)
    return (Column(sgd_column.title, sgd_column.methods + extra), *others)


def curves_runs(plan: Plan) -> list[RunSpec]:
    """The curve models' runs of every curve, first seed only (the figures show one run per method)."""
    return unique(
        plan.run(m, method, plan.seeds_for(m)[0])
        for m in curve_models(plan)
        for column in curve_columns(m)
        for method in column.methods
    )


def curves_report(context: Context) -> list[Path]:
    """``curves_<model>.png`` (train and test loss per epoch of every method) and
    ``posterior_<model>.png`` (the Alrao run's switch posterior) for each curve model."""
    plan, written = context.plan, []
    for model in curve_models(plan):
        seed = plan.seeds_for(model)[0]
        curves, missing, alrao, commits = [], [], None, []
        for column in curve_columns(model):
            for method in column.methods:
                result = load_result(context.out_dir, plan.run(model, method, seed))
                if result is None:
                    missing.append(method.name)
                    continue
                kind = "sgd" if method.lr is not None else column.title.lower()
                label = f"SGD lr {format_rate(method.lr)}" if kind == "sgd" else column.title
                curves.append(
                    figures.Curve(label, kind, result.history, bool(result.summary.get("diverged")), method.lr)
                )
                commits.append(result.commit)
                if kind == "alrao":
                    alrao = result
        if not curves:
            print(f"curves: no finished run of {model} in {context.out_dir}: no figure")
            continue
        name = display_name(model, plan.dataset_for(model), plan.profile.size_multiplier)
        title = f"{name}, seed {seed}" + (f"\n(not finished: {', '.join(missing)})" if missing else "")
        provenance = context.provenance([model], commits, seeds=str(seed))
        key, unit = loss_metric(model)
        written.append(
            figures.learning_curves(
                f"Learning curves: {title}", curves, key, unit, provenance, context.results_dir / f"curves_{model}.png"
            )
        )
        if alrao is not None:
            written.append(
                figures.posterior_figure(
                    f"Alrao's switch posterior: {name}, seed {seed}",
                    alrao.history,
                    context.provenance([model], [alrao.commit], seeds=str(seed)),
                    context.results_dir / f"posterior_{model}.png",
                )
            )
    return written


# ----------------------------------------------------------------- triangle
def triangle_models(plan: Plan) -> list[str]:
    return list(plan.models_or((plan.profile.triangle.model,)))


def triangle_seeds(plan: Plan, model: str):
    return plan.seeds_for(model, plan.profile.triangle.n_seeds)


def triangle_method(model: str, low: float, high: float):
    """Plain SGD on the diagonal (``low == high``), else Alrao-SGD on ``(10**low, 10**high)``."""
    if low == high:
        return sgd(10.0**low)
    copies = (ALRAO_LSTM if is_lstm(model) else ALRAO_CNN).n_classifiers
    return alrao_sgd(AlraoSetting(low, high, copies))


def triangle_cells(plan: Plan, model: str):
    """``(i, j, run)`` for every interval of the grid and seed, ``i <= j`` (indices of the ends)."""
    ends, setting = plan.profile.triangle.ends_log10, plan.profile.triangle
    return [
        (
            i,
            j,
            plan.run(
                model, triangle_method(model, ends[i], ends[j]), seed, epochs=setting.epochs, early_stopping=False
            ),
        )
        for i in range(len(ends))
        for j in range(i, len(ends))
        for seed in triangle_seeds(plan, model)
    ]


def triangle_runs(plan: Plan) -> list[RunSpec]:
    return unique(run for m in triangle_models(plan) for _, _, run in triangle_cells(plan, m))


def triangle_report(context: Context) -> list[Path]:
    """``triangle_<model>.png`` and ``.json``: the mean over seeds of the train and test losses after
    the last epoch for each interval; an interval is marked diverged when one of its runs diverged."""
    plan, written = context.plan, []
    ends = plan.profile.triangle.ends_log10
    n = len(ends)
    for model in triangle_models(plan):
        key, unit = loss_metric(model)
        sums = {split: np.zeros((n, n)) for split in ("train", "test")}
        counts = np.zeros((n, n))
        diverged = np.zeros((n, n), dtype=bool)
        runs: dict[str, dict] = {}
        commits = []
        for i, j, run in triangle_cells(plan, model):
            result = load_result(context.out_dir, run)
            if result is None:
                continue
            commits.append(result.commit)
            last = result.history[-1] if result.history else {}
            runs[run.folder] = {
                "min_lr": 10.0 ** ends[i],
                "max_lr": 10.0 ** ends[j],
                "diverged": bool(result.summary.get("diverged")),
                **{f"{s}_{key}": last.get(f"{s}_{key}") for s in sums},
            }
            if result.summary.get("diverged"):
                diverged[i, j] = True
            elif all(isinstance(last.get(f"{s}_{key}"), (int, float)) for s in sums):
                for split in sums:
                    sums[split][i, j] += last[f"{split}_{key}"]
                counts[i, j] += 1
        if not runs:
            print(f"triangle: no finished run of {model} in {context.out_dir}: no figure")
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            means = {split: np.where(counts > 0, sums[split] / counts, np.nan) for split in sums}
        seeds = triangle_seeds(plan, model)
        provenance = context.provenance([model], commits, seeds=format_seeds(seeds))
        name = display_name(model, plan.dataset_for(model), plan.profile.size_multiplier)
        epochs = plan.epochs or plan.profile.triangle.epochs
        written.append(
            figures.triangle_figure(
                f"Alrao for every interval (diagonal: plain SGD), {name}, {epochs} epoch{'s' if epochs > 1 else ''}",
                ends,
                means["train"],
                means["test"],
                diverged,
                unit,
                provenance,
                context.results_dir / f"triangle_{model}.png",
            )
        )
        path = context.results_dir / f"triangle_{model}.json"
        write_json(
            path,
            {
                **provenance.as_dict(),
                "model": model,
                "ends_log10": list(ends),
                "epochs": epochs,
                "loss_unit": unit,
                "rows_min_lr_cols_max_lr": {
                    split: [[None if not math.isfinite(v) else v for v in row] for row in means[split]]
                    for split in means
                },
                "diverged": diverged.tolist(),
                "runs": runs,
            },
        )
        written.append(path)
    return written


# ---------------------------------------------------------------- baselines
#: The runner's tuning-free optimizers (``--optimizer``), run under Table 1's protocol.
BASELINES = optimizers.BASELINES


def chosen_baselines(plan: Plan) -> tuple[str, ...]:
    return plan.baselines if plan.baselines is not None else BASELINES


def missing_baselines(names: Iterable[str] = BASELINES) -> dict[str, str]:
    """Those of ``names`` whose optional package is not installed, each with the error naming its
    pip command."""
    missing = {}
    for name in names:
        if OPTIMIZERS[name].package is not None:
            try:
                import_baseline(*OPTIMIZERS[name].package, name)
            except MissingPackage as error:
                missing[name] = str(error)
    return missing


def baselines_rows(plan: Plan) -> list[Row]:
    """Table 1's rows (width 1) with a column per installed baseline after SGD, Adam and Alrao."""
    missing = missing_baselines(chosen_baselines(plan))
    extra = baseline_columns(name for name in chosen_baselines(plan) if name not in missing)
    return [Row(m, 1, table1_columns(m) + extra) for m in plan.models_or(plan.profile.table1_models)]


def baselines_notes(names: Sequence[str], missing: dict[str, str], runs_dir: Path) -> list[str]:
    settings = ", ".join(f"{name} {OPTIMIZERS[name].default_lr:g}" for name in names)
    notes = [
        *common_notes(),
        "Baselines: the tuning-free optimizers of `--optimizer`, each as its authors document it, "
        f"without `--lr` (its default, the authors' value: {settings}; the max_lr of AliG, a multiplier of "
        "the adapted step size for Prodigy, D-Adaptation and DoG, the learning rate of Schedule-Free), no "
        "schedule, no warmup; DoG/LDoG evaluated at their averaged iterate, Schedule-Free at its "
        "evaluation point (see README, `--optimizer`).",
        "The paper's numbers for SGD, Adam and Alrao are beside ours in table1.md.",
    ]
    notes += [f"Not run: {message}" for message in missing.values()]
    return [*notes, runs_note(runs_dir)]


def write_baselines_files(rows: list[RowResult], provenance: Provenance, context: Context) -> list[Path]:
    """``baselines.md`` (one row per method, a column pair per model) and ``baselines.json``."""
    width = context.plan.profile.size_multiplier
    markdown = markdown_by_method(
        rows,
        provenance,
        width,
        "Tuning-free baselines beside Table 1",
        baselines_notes(
            chosen_baselines(context.plan), missing_baselines(chosen_baselines(context.plan)), context.out_dir
        ),
    )
    return write_table(context.results_dir, "baselines", markdown, json_table1(rows, provenance, width))


def baselines_warnings(plan: Plan) -> list[str]:
    return [f"left out: {message}" for message in missing_baselines(chosen_baselines(plan)).values()]


# -------------------------------------------------------------- granularity
GRANULARITY_TITLES = {"feature": "per feature", "weight": "per weight"}


def granularity_column(setting: AlraoSetting, granularity: str) -> Column:
    return Column(
        f"{GRANULARITY_TITLES[granularity]}, max_lr {format_rate(10.0**setting.max_lr_log10)}",
        (alrao_sgd(setting, granularity),),
    )


def granularity_grid() -> list[tuple[str, AlraoSetting]]:
    """``(granularity, setting)`` of each column, in the table's order."""
    return [(g, s) for g in GRANULARITIES for s in GRANULARITY_SETTINGS]


def granularity_rows(plan: Plan) -> list[Row]:
    """The CNNs of Table 1 (width 1), a column per granularity and ``max_lr``."""
    columns = tuple(granularity_column(s, g) for g, s in granularity_grid())
    return [Row(m, 1, columns) for m in plan.models_or(plan.profile.table1_models) if not is_lstm(m)]


def granularity_warnings(plan: Plan) -> list[str]:
    left_out = [m for m in plan.models_or(plan.profile.table1_models) if is_lstm(m)]
    return [f"left out: {', '.join(left_out)} (the ablation is on the CNNs)"] if left_out else []


def write_granularity_files(rows: list[RowResult], provenance: Provenance, context: Context) -> list[Path]:
    """``granularity.md`` (a row per granularity and max_lr, a column pair per model),
    ``granularity.json`` and ``granularity.png``."""
    width = context.plan.profile.size_multiplier
    lows = {format_rate(10.0**s.min_lr_log10) for s in GRANULARITY_SETTINGS}
    notes = [
        common_notes()[0],
        common_notes()[2],
        f"Alrao-SGD with min_lr {', '.join(sorted(lows))} and {ALRAO_CNN.n_classifiers} classifier copies; "
        "per feature: one random learning rate per feature of the pre-classifier (the paper's Alrao; "
        "max_lr 10 is Table 1's Alrao run); per weight: one per weight (`--lr_granularity weight`), the "
        "paper's ablation, reported much worse for a large max_lr. The copies' rates are the same in both.",
        runs_note(context.out_dir),
    ]
    markdown = markdown_by_method(
        rows, provenance, width, "Random learning rates per feature vs per weight (Alrao-SGD)", notes
    )
    written = write_table(context.results_dir, "granularity", markdown, json_table1(rows, provenance, width))
    panels = {}
    for result in rows:
        points = []
        for cell, (granularity, setting) in zip(result.cells, granularity_grid()):
            points.append(
                figures.GranularityPoint(
                    granularity,
                    10.0**setting.max_lr_log10,
                    None if cell.loss is None else (cell.loss.mean, cell.loss.std),
                    None if cell.top1 is None else (cell.top1.mean, cell.top1.std),
                    cell.diverged,
                )
            )
        panels[display_name(result.row.model, result.dataset, width)] = points
    written.append(
        figures.granularity_figure(
            "Alrao-SGD: a random learning rate per feature vs per weight\n(test at the epoch of best validation loss)",
            panels,
            rows[0].loss_unit,
            provenance,
            context.results_dir / "granularity.png",
        )
    )
    return written


TABLE1_REPORT = table_report(table1_and_width_rows, "table1", write_table1_files)

EXPERIMENTS: dict[str, Experiment] = {
    "table1": Experiment(
        "Table 1: SGD at every rate of the grid (best on validation), Adam, Alrao-SGD; "
        "writes table1.md/.json (with the width×3 rows when they were run)",
        rows_runs(table1_rows),
        TABLE1_REPORT,
    ),
    "width": Experiment(
        "Table 1's width×3 rows: Adam and Alrao-SGD on 3 times wider CNNs; rewrites table1.md/.json",
        rows_runs(width_rows),
        TABLE1_REPORT,
    ),
    "curves": Experiment(
        "learning curves (train and test loss per epoch, SGD at every rate of the grid and at "
        "100 as in the paper's figures, Adam, Alrao) and the "
        "switch posterior over epochs: curves_<model>.png, posterior_<model>.png",
        curves_runs,
        curves_report,
    ),
    "triangle": Experiment(
        "Alrao for every interval of a grid, plain SGD on the diagonal, without early "
        "stopping: triangle_<model>.png/.json",
        triangle_runs,
        triangle_report,
    ),
    "baselines": Experiment(
        "Table 1's rows with the tuning-free optimizers (AliG, Prodigy, D-Adaptation, DoG, "
        "Schedule-Free) beside SGD, Adam and Alrao: baselines.md/.json",
        rows_runs(baselines_rows),
        table_report(baselines_rows, "baselines", write_baselines_files),
        baselines_warnings,
    ),
    "granularity": Experiment(
        "the per-weight ablation: Alrao-SGD with one random learning rate per feature vs per weight, "
        "min_lr 1e-5, max_lr in {1, 10, 100}, on Table 1's CNNs: granularity.md/.json/.png",
        rows_runs(granularity_rows),
        table_report(granularity_rows, "granularity", write_granularity_files),
        granularity_warnings,
    ),
}
