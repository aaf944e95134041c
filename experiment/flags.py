"""Command-line flags shared by ``main_cnn.py`` and ``main_rnn.py`` (DESIGN.md principles 2, 7, 11).

The common flags are defined once here, with the same names, types and units
in both scripts; each script adds its own (model, task) flags to the groups
returned by :func:`add_common_arguments`. Checks across flags run inside
``parse_args``, so every invalid command line is an argparse error (exit
status 2) naming the bad value.
"""

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .baselines import LR_OF_BASELINES
from .optimizers import OPTIMIZERS, check_optimizer_flags

GROUPS = ("data", "model", "optimisation", "Alrao", "run")
PATIENCE = 20  # the paper's early stopping: 20 epochs without a better validation loss
EPOCHS = 50
DRY_RUN_EPOCHS = 1
# alrao.lr_sampling.GRANULARITIES, spelled out so that --help needs no torch (a test keeps them equal)
GRANULARITIES = ("feature", "weight")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout (its example commands) and shows ``(default: X)`` after each
    help text, except where there is no default value to show (flags whose default depends on
    other flags say so in their own text)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` that also runs checks across flags.

    ``add_check(check)``: after parsing, ``check(args)`` may complete ``args``
    (defaults that depend on other flags) and returns an error message or
    ``None``; a message becomes an argparse error (usage, message, exit 2).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
        self._checks = []

    def add_check(self, check: Callable[[argparse.Namespace], str | None]) -> None:
        self._checks.append(check)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for check in self._checks:
            message = check(namespace)
            if message:
                self.error(message)
        return namespace, extras


# ---------------------------------------------------------------- value types
def _number(kind: type, name: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse ``type`` converting to ``kind`` and accepting only values where ``ok`` holds."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text}")
        return value

    convert.__name__ = name
    return convert


positive_int = _number(int, "an integer >= 1", lambda v: v >= 1)
nonnegative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _number(float, "a number > 0", lambda v: v > 0)
nonnegative_float = _number(float, "a number >= 0", lambda v: v >= 0)
probability = _number(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
# log10 of a learning rate: 10**x must be a finite, non-zero float64.
log10_rate = _number(float, "a log10 learning rate in [-300, 300]", lambda v: -300 <= v <= 300)


# -------------------------------------------------------------- common flags
@dataclass(frozen=True)
class ScriptDefaults:
    """The defaults that differ between the two scripts: each is the paper's setting for its task.

    ``datasets``: the ``--dataset`` choices; ``dataset``: the paper's data set;
    ``dry_run_dataset``: the offline generated one that ``--dry_run`` uses
    unless ``--dataset`` is given. ``min_lr_log10``/``max_lr_log10``: log10 of
    Alrao's interval ends; ``n_classifiers``: Alrao's classifier copies.
    ``data_path``: the default folder of the data files.
    ``data_loader``: the script reads its data through a loader with worker
    processes (``--num_workers``); a script without one does not get the flag.
    """

    datasets: Sequence[str]
    dataset: str
    dry_run_dataset: str
    batch_size: int
    min_lr_log10: float
    max_lr_log10: float
    n_classifiers: int
    data_path: str = "datasets"
    data_loader: bool = True


def add_common_arguments(parser: ArgumentParser, defaults: ScriptDefaults) -> dict[str, argparse._ArgumentGroup]:
    """Add the flags both scripts share; returns the argument groups by name (see :data:`GROUPS`)."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}

    data = groups["data"]
    data.add_argument(
        "--dataset",
        choices=list(defaults.datasets),
        default=None,
        help=f"data set (default: {defaults.dataset}, or {defaults.dry_run_dataset} with --dry_run)",
    )
    data.add_argument(
        "--data_path", default=defaults.data_path, help="folder of the data files (downloaded there when missing)"
    )
    data.add_argument(
        "--batch_size", type=positive_int, default=defaults.batch_size, help="mini-batch size for training"
    )
    if defaults.data_loader:
        data.add_argument(
            "--num_workers",
            type=nonnegative_int,
            default=0,
            help="data-loading worker processes (0: load in the main process)",
        )

    optim = groups["optimisation"]
    optim.add_argument(
        "--optimizer", choices=list(OPTIMIZERS), default="SGD", help="optimizer (with --use_alrao: its Alrao version)"
    )
    paper = {n: s for n, s in OPTIMIZERS.items() if s.alrao is not None}
    baselines = {n: s for n, s in OPTIMIZERS.items() if s.alrao is None}
    optim.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="learning rate of the plain optimizer, not used with --use_alrao (default: "
        + ", ".join(f"{s.default_lr:g} for {n}" for n, s in paper.items())
        + "); "
        + LR_OF_BASELINES
        + " (default: "
        + ", ".join(f"{s.default_lr:g} for {n}" for n, s in baselines.items())
        + ")",
    )
    optim.add_argument(
        "--momentum",
        type=nonnegative_float,
        default=0.0,
        help="momentum (used by "
        + ", ".join(n for n, s in OPTIMIZERS.items() if "momentum" in s.flags)
        + "; the paper uses none)",
    )
    optim.add_argument("--weight_decay", type=nonnegative_float, default=0.0, help="L2 penalty (the paper uses none)")
    optim.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"maximal number of training epochs (default: {EPOCHS}, or {DRY_RUN_EPOCHS} with --dry_run)",
    )
    optim.add_argument(
        "--early_stopping",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop when the validation loss has not improved for --patience epochs (the paper's rule)",
    )
    optim.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        help=f"epochs without improvement of the validation loss before early stopping (default: {PATIENCE})",
    )

    alrao_group = groups["Alrao"]
    alrao_group.add_argument(
        "--use_alrao",
        action="store_true",
        help="train with Alrao: random feature learning rates in the pre-classifier, "
        "--n_last_layers classifier copies averaged by the switch",
    )
    alrao_group.add_argument(
        "--minLR",
        type=log10_rate,
        default=None,
        help=f"log10 of min_lr, the lower end of Alrao's learning-rate interval (default: {defaults.min_lr_log10:g})",
    )
    alrao_group.add_argument(
        "--maxLR",
        type=log10_rate,
        default=None,
        help=f"log10 of max_lr, the upper end of Alrao's learning-rate interval (default: {defaults.max_lr_log10:g})",
    )
    alrao_group.add_argument(
        "--n_last_layers",
        type=positive_int,
        default=None,
        help=f"number of classifier copies (default: {defaults.n_classifiers})",
    )
    alrao_group.add_argument(
        "--lr_granularity",
        choices=list(GRANULARITIES),
        default=None,
        help="feature: one random learning rate per feature (the paper's Alrao; default with --use_alrao); "
        "weight: one per weight of the pre-classifier (the paper's ablation, much worse for a large max_lr)",
    )

    run = groups["run"]
    run.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of every random number generator (initialisation, data order, dropout, feature learning rates)",
    )
    run.add_argument("--out_dir", default=None, help="folder of this run's files (default: a new folder under runs/)")
    run.add_argument(
        "--resume", action="store_true", help="continue the run saved in --out_dir from its last checkpoint"
    )
    run.add_argument(
        "--dry_run", action="store_true", help="a few batches of each split, to check a command in seconds"
    )
    run.add_argument("--no-cuda", action="store_true", help="run on the CPU even when CUDA is available")

    parser.add_check(lambda args: _resolve_common(args, defaults))
    return groups


def _resolve_common(args: argparse.Namespace, defaults: ScriptDefaults) -> str | None:
    """Fill the defaults that depend on other flags; the first inconsistency found, as a message."""
    if args.dataset is None:
        args.dataset = defaults.dry_run_dataset if args.dry_run else defaults.dataset
    if args.epochs is None:
        args.epochs = DRY_RUN_EPOCHS if args.dry_run else EPOCHS
    if args.resume and args.out_dir is None:
        return "--resume needs --out_dir, the folder of the run to continue"
    if not args.early_stopping and args.patience is not None:
        return f"--patience {args.patience} is used only with early stopping (not with --no-early_stopping)"
    if args.early_stopping and args.patience is None:
        args.patience = PATIENCE
    message = check_optimizer_flags(args)
    if message:
        return message
    if not args.use_alrao:
        for flag in ("minLR", "maxLR", "n_last_layers"):
            if getattr(args, flag) is not None:
                return f"--{flag} {getattr(args, flag):g} is used only with --use_alrao"
        if args.lr_granularity is not None:
            return f"--lr_granularity {args.lr_granularity} is used only with --use_alrao"
        if args.lr is None:
            args.lr = OPTIMIZERS[args.optimizer].default_lr
        return None
    if args.lr is not None:
        return (
            f"--lr {args.lr:g} is the plain optimizer's learning rate and is not used with "
            "--use_alrao (set Alrao's interval with --minLR/--maxLR)"
        )
    if args.minLR is None:
        args.minLR = defaults.min_lr_log10
    if args.maxLR is None:
        args.maxLR = defaults.max_lr_log10
    if args.n_last_layers is None:
        args.n_last_layers = defaults.n_classifiers
    if args.lr_granularity is None:
        args.lr_granularity = GRANULARITIES[0]
    if args.minLR > args.maxLR:
        return (
            f"--minLR {args.minLR:g} is above --maxLR {args.maxLR:g}: they are log10 of the "
            "interval's lower and upper ends, so --minLR must be <= --maxLR"
        )
    return None
