"""What to run: methods, the rows and columns of a table, and one run's command line and folder.

A :class:`Plan` is a profile narrowed by the command line (``--models``,
``--seeds``, ``--epochs``, ``--dataset``, ``--dry_run``, ``--baselines``). It turns a model, a
:class:`Method` and a seed into a :class:`RunSpec`: the flags of one
``main_cnn.py`` / ``main_rnn.py`` run and the folder it writes, named after
what it computes, so that two experiments needing the same run share it and a
finished run is never trained again.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import data

from .protocol import ADAM_LR, ALRAO_CNN, ALRAO_LSTM, SGD_RATES, AlraoSetting, Profile, is_lstm

SCRIPT_DATASETS = {"main_cnn": tuple(data.IMAGE_DATASETS), "main_rnn": tuple(data.TEXT_CORPORA)}


def fmt(value: float) -> str:
    """A number as written on the command line and in folder names: ``1e-05``, ``0.1``, ``10``."""
    return f"{value:g}"


# ------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """One way of training: an optimizer and its settings.

    Attributes:
        name: folder name of its runs, e.g. ``'sgd-lr0.01'``.
        flags: its flags of ``main_cnn.py`` / ``main_rnn.py``.
        lr: the learning rate a table shows when the method was chosen among
            others on validation (``None``: nothing to show).
    """

    name: str
    flags: tuple[str, ...]
    lr: float | None = None


def sgd(lr: float) -> Method:
    """Plain SGD at learning rate ``lr`` (no momentum, no weight decay, as in the paper)."""
    return Method(f"sgd-lr{fmt(lr)}", ("--optimizer", "SGD", "--lr", fmt(lr)), lr=lr)


def adam() -> Method:
    """Adam with its default hyper-parameters, the paper's Adam baseline."""
    return Method("adam", ("--optimizer", "Adam", "--lr", fmt(ADAM_LR)))


def baseline(optimizer: str) -> Method:
    """A tuning-free optimizer of the runner (``--optimizer``) as its authors use it: without
    ``--lr``, so that the script's default, the authors' value, is used."""
    return Method(optimizer.lower(), ("--optimizer", optimizer))


def alrao_sgd(setting: AlraoSetting, granularity: str = "feature") -> Method:
    """Alrao-SGD on the interval and with the copies of ``setting``, one random learning rate per
    feature (the paper's Alrao) or per weight (``granularity='weight'``, the paper's ablation)."""
    low, high = 10.0**setting.min_lr_log10, 10.0**setting.max_lr_log10
    # The per-feature runs keep their name and flags: the granularity experiment shares them with Table 1's.
    per_weight = ("-per-weight", ("--lr_granularity", "weight")) if granularity == "weight" else ("", ())
    return Method(
        f"alrao-sgd-{fmt(low)}-{fmt(high)}-x{setting.n_classifiers}{per_weight[0]}",
        (
            "--use_alrao",
            "--optimizer",
            "SGD",
            "--minLR",
            fmt(setting.min_lr_log10),
            "--maxLR",
            fmt(setting.max_lr_log10),
            "--n_last_layers",
            str(setting.n_classifiers),
            *per_weight[1],
        ),
    )


@dataclass(frozen=True)
class Column:
    """A column pair (loss, top-1) of a table: one method, or several among which the one with
    the lowest mean validation loss is reported (the paper's choice of SGD's learning rate)."""

    title: str
    methods: tuple[Method, ...]

    @property
    def tuned(self) -> bool:
        return len(self.methods) > 1


def table1_columns(model: str) -> tuple[Column, ...]:
    """Table 1's columns: SGD at the best rate of the grid, Adam, Alrao-SGD with the paper's setting."""
    return (
        Column("SGD", tuple(sgd(lr) for lr in SGD_RATES)),
        Column("Adam", (adam(),)),
        Column("Alrao", (alrao_sgd(ALRAO_LSTM if is_lstm(model) else ALRAO_CNN),)),
    )


def baseline_columns(optimizers: Iterable[str]) -> tuple[Column, ...]:
    """One column per tuning-free optimizer, each run once per seed with its defaults."""
    return tuple(Column(name, (baseline(name),)) for name in optimizers)


def width_columns(model: str) -> tuple[Column, ...]:
    """The width×3 rows' columns (the paper reports no SGD there)."""
    return table1_columns(model)[1:]


# ---------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunSpec:
    """One run: ``python <script>.py <flags> --out_dir <out_dir>/<folder>``."""

    script: str
    flags: tuple[str, ...]
    folder: str
    model: str = field(compare=False)
    method: Method = field(compare=False)
    seed: int = field(compare=False)


@dataclass(frozen=True)
class Row:
    """A row of a table: a model at ``width`` times the profile's width, and its columns."""

    model: str
    width: float
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Plan:
    """A profile and the command line's restrictions (``None``: the profile's choice)."""

    profile: Profile
    models: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    epochs: int | None = None
    dataset: str | None = None
    dry_run: bool = False
    #: the tuning-free optimizers of the ``baselines`` experiment (``None``: every one)
    baselines: tuple[str, ...] | None = None

    def models_or(self, default: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.models) if self.models is not None else tuple(default)

    def seeds_for(self, model: str, n_seeds: int | None = None) -> tuple[int, ...]:
        """The seeds of ``model``'s runs: ``--seeds``, else ``0 .. n - 1`` with the profile's ``n``."""
        if self.seeds is not None:
            return tuple(self.seeds)
        return tuple(range(n_seeds if n_seeds is not None else self.profile.script_setting(model).n_seeds))

    def dataset_for(self, model: str) -> str:
        script = script_of(model)
        if self.dataset is not None and self.dataset in SCRIPT_DATASETS[script]:
            return self.dataset
        return self.profile.script_setting(model).dataset

    def run(
        self,
        model: str,
        method: Method,
        seed: int,
        width: float = 1,
        epochs: int | None = None,
        early_stopping: bool = True,
    ) -> RunSpec:
        """The run of ``method`` on ``model`` (at ``width`` times the profile's width) with ``seed``,
        for ``epochs`` (``--epochs``, else the profile's), with or without early stopping."""
        setting = self.profile.script_setting(model)
        script = script_of(model)
        dataset = self.dataset_for(model)
        epochs = self.epochs or epochs or setting.epochs
        flags = ["--dataset", dataset, "--epochs", str(epochs), *setting.flags]
        if is_lstm(model):
            model_tag = model
        else:
            multiplier = self.profile.size_multiplier * width
            flags += ["--model_name", model, "--size_multiplier", fmt(multiplier)]
            model_tag = model if multiplier == 1 else f"{model}-x{fmt(multiplier)}"
        setting_tag = f"{dataset}-{epochs}ep"
        if not early_stopping:
            flags.append("--no-early_stopping")
            setting_tag += "-noES"
        if self.dry_run:
            flags.append("--dry_run")
            setting_tag += "-dry"
        flags += [*method.flags, "--seed", str(seed)]
        return RunSpec(
            script,
            tuple(flags),
            f"{model_tag}/{setting_tag}/{method.name}/seed{seed}",
            model=model,
            method=method,
            seed=seed,
        )

    def row_runs(self, row: Row) -> list[RunSpec]:
        """Every run of ``row``: each method of each column, with each seed."""
        return [
            self.run(row.model, method, seed, width=row.width)
            for column in row.columns
            for method in column.methods
            for seed in self.seeds_for(row.model)
        ]


def script_of(model: str) -> str:
    return "main_rnn" if is_lstm(model) else "main_cnn"


def unique(runs: Iterable[RunSpec]) -> list[RunSpec]:
    """``runs`` without repeats (same folder), in their first order."""
    seen, out = set(), []
    for run in runs:
        if run.folder not in seen:
            seen.add(run.folder)
            out.append(run)
    return out
