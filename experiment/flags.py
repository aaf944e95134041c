"""Command-line flags shared by the scripts (DESIGN.md principles 2, 7, 11).

The flags of both training scripts (``main_cnn.py``, ``main_rnn.py``) are defined once here,
with the same names, types and units; each script adds its own (model, task) flags to the
groups returned by :func:`add_common_arguments`. A flag that other scripts take too
(``lr_scan.py``, ``reproduce.py``) has its type in :data:`SHARED_FLAGS`, so that the same
value is accepted everywhere. Checks across flags run inside ``parse_args``, so every invalid
command line is an argparse error (exit status 2) naming the bad value.
"""

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .optimizers import LR_OF_BASELINES, OPTIMIZERS, check_optimizer_flags
from .run_folder import RESUMABLE_FLAGS  # the run folder's contract: what a --resume may change

GROUPS = ("data", "model", "optimisation", "Alrao", "run")
PATIENCE = 20  # the paper's early stopping: 20 epochs without a better validation loss
EPOCHS = 50
# A dry run trains a few batches for DRY_RUN_EPOCHS epochs, or --epochs if fewer than
# DRY_RUN_MAX_EPOCHS (a second epoch runs from the first one's checkpoint state), whatever
# --epochs says: it checks a command, every phase once, in seconds.
DRY_RUN_EPOCHS = 1
DRY_RUN_MAX_EPOCHS = 2
# ... and on batches of at most DRY_RUN_MAX_BATCH_SIZE (a GoogLeNet step on 32 images takes
# 10-15 s on a shared CPU core): it checks the code path, not the memory of a full batch.
DRY_RUN_MAX_BATCH_SIZE = 8
# Alrao's interval ends are log10 of learning rates: a value that can only be a rate typed as
# such (0 < x < 1, e.g. 1e-5) or a rate above 10**MAX_LR_LOG10 is refused (see _check_log10).
MAX_LR_LOG10 = 3
# alrao.lr_sampling.GRANULARITIES, spelled out so that --help needs no torch (a test keeps them equal)
GRANULARITIES = ("feature", "weight")


@dataclass(frozen=True)
class OptimizerChoice:
    """What the flags know of an optimizer of :data:`experiment.optimizers.OPTIMIZERS`: its
    ``default_lr``, the optional ``flags`` it uses, and whether it has an Alrao version."""

    default_lr: float
    flags: frozenset[str]
    has_alrao: bool


# The registry as --optimizer, --lr and --momentum show it (read without torch: --help needs none)
OPTIMIZER_CHOICES = {
    name: OptimizerChoice(spec.default_lr, spec.flags, spec.alrao is not None) for name, spec in OPTIMIZERS.items()
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout (its example commands) and shows ``(default: X)`` after each
    help text, except where there is no default value to show (flags whose default depends on
    other flags say so in their own text)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Flags(argparse.Namespace):
    """The parsed flags, plus what ``vars(flags)`` (the run's recorded configuration) leaves out:

    ``given``: the destinations of the flags typed on the command line (not defaulted);
    ``notes``: lines the script prints with its configuration (e.g. what a dry run does);
    ``resumed_changes``: with ``--resume``, ``{flag: [recorded value, new value]}`` of the
    resumable flags changed, and ``previous_resumes`` the record of earlier ones.
    """

    __slots__ = ("given", "notes", "resumed_changes", "previous_resumes")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.given, self.notes, self.resumed_changes, self.previous_resumes = frozenset(), [], {}, []


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` that also runs checks across flags.

    ``add_check(check)``: after parsing, ``check(args)`` may complete ``args``
    (defaults that depend on other flags) and returns an error message or
    ``None``; a message becomes an argparse error (usage, message, exit 2).
    The result is a :class:`Flags`, whose ``given`` names the flags typed.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
        self._checks = []
        self._given = set()

    def add_check(self, check: Callable[[argparse.Namespace], str | None]) -> None:
        self._checks.append(check)

    def _get_values(self, action, arg_strings):
        # argparse converts the strings of each flag it meets here (never for a default):
        # the one place that knows which flags were typed.
        self._given.add(action.dest)
        return super()._get_values(action, arg_strings)

    def parse_known_args(self, args=None, namespace=None):
        self._given = set()
        namespace, extras = super().parse_known_args(args, namespace if namespace is not None else Flags())
        if isinstance(namespace, Flags):
            namespace.given = frozenset(self._given)
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


# ----------------------------------------------------- flags of several scripts
# What a flag taken by several scripts must have the same in each: the type of its value, or its
# action. Each script gives its own default and help (a scan's --batch_size is not a training's).
SHARED_FLAGS = {
    "batch_size": {"type": positive_int},
    "seed": {"type": nonnegative_int},
    "epochs": {"type": positive_int},
    "minLR": {"type": log10_rate},
    "maxLR": {"type": log10_rate},
    "size_multiplier": {"type": positive_float},
    "dry_run": {"action": "store_true"},
    "no_cuda": {"action": "store_true"},
}
# Former spellings still accepted: --no-cuda was the one dashed flag among underscored ones.
ALIASES = {"no_cuda": ("--no-cuda",)}
NO_CUDA_HELP = "run on the CPU even when CUDA is available"


def add_shared_argument(group, dest: str, **kwargs) -> None:
    """Add ``--dest`` (a key of :data:`SHARED_FLAGS`, with its type or action there) to
    ``group``; ``kwargs``: the script's ``default``, ``help``..."""
    fixed = SHARED_FLAGS[dest]
    clash = fixed.keys() & kwargs.keys()
    if clash:
        raise ValueError(f"{flag_name(dest)}: its {', '.join(sorted(clash))} is set once, in SHARED_FLAGS")
    group.add_argument(flag_name(dest), *ALIASES.get(dest, ()), **fixed, **kwargs)


def add_network_arguments(
    parser: "ArgumentParser", group, model_names: Sequence[str], narrowest_width: dict[str, int]
) -> None:
    """``--model_name`` and ``--size_multiplier``: a CIFAR-10 network of the registry
    (``main_cnn.py``, ``lr_scan.py``). ``model_names``: ``models.MODEL_NAMES``;
    ``narrowest_width``: ``models.NARROWEST_WIDTH``, to refuse a multiplier that leaves a layer
    less than one channel wide (both spelled out in models/ without torch)."""
    group.add_argument("--model_name", choices=list(model_names), default="GoogLeNet", help="pre-classifier network")
    add_shared_argument(
        group,
        "size_multiplier",
        default=1.0,
        help="width multiplier of the network (the paper's 'width x3' rows use 3)",
    )
    parser.add_check(lambda args: _check_size_multiplier(args, narrowest_width))


def _check_size_multiplier(args, narrowest_width: dict[str, int]) -> str | None:
    width = narrowest_width[args.model_name]
    smallest = 1 / width  # models.min_size_multiplier
    if args.size_multiplier < smallest:
        return (
            f"--size_multiplier {args.size_multiplier:g} is below {smallest:g}: the narrowest layer of "
            f"{args.model_name} ({width} channels at width 1) would have less than one channel"
        )
    return None


def unused_data_path(args, offline_datasets: Sequence[str]) -> str | None:
    """The error of a ``--data_path`` typed for a data set made in memory, or ``None``."""
    if args.dataset in offline_datasets and "data_path" in given_flags(args):
        return f"--data_path {args.data_path} is not used by --dataset {args.dataset} (made in memory, no files)"
    return None


def used_only_with(args, flags: Sequence[str], needed: str) -> str | None:
    """The error of the first of ``flags`` given a value (not ``None``) where it is not used:
    ``"--FLAG VALUE is used only with NEEDED"``; ``None`` when none is."""
    for flag in flags:
        value = getattr(args, flag)
        if value is not None:
            shown = f"{value:g}" if isinstance(value, (int, float)) else value
            return f"{flag_name(flag)} {shown} is used only with {needed}"
    return None


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
    ``offline_datasets``: the data sets made in memory, which read no ``--data_path``.
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
    offline_datasets: Sequence[str] = ()


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
    add_shared_argument(data, "batch_size", default=defaults.batch_size, help="mini-batch size for training")
    if defaults.data_loader:
        data.add_argument(
            "--num_workers",
            type=nonnegative_int,
            default=0,
            help="data-loading worker processes (0: load in the main process)",
        )

    optim = groups["optimisation"]
    optim.add_argument(
        "--optimizer",
        choices=list(OPTIMIZER_CHOICES),
        default="SGD",
        help="optimizer (with --use_alrao: its Alrao version)",
    )
    paper = {n: s for n, s in OPTIMIZER_CHOICES.items() if s.has_alrao}
    baselines = {n: s for n, s in OPTIMIZER_CHOICES.items() if not s.has_alrao}
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
        + ", ".join(n for n, s in OPTIMIZER_CHOICES.items() if "momentum" in s.flags)
        + "; the paper uses none)",
    )
    optim.add_argument("--weight_decay", type=nonnegative_float, default=0.0, help="L2 penalty (the paper uses none)")
    add_shared_argument(
        optim,
        "epochs",
        default=None,
        help=f"maximal number of training epochs (default: {EPOCHS}; with --dry_run {DRY_RUN_EPOCHS}, "
        f"at most {DRY_RUN_MAX_EPOCHS})",
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
    add_shared_argument(
        alrao_group,
        "minLR",
        default=None,
        help=f"log10 of min_lr, the lower end of Alrao's learning-rate interval (default: {defaults.min_lr_log10:g})",
    )
    add_shared_argument(
        alrao_group,
        "maxLR",
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
    add_shared_argument(
        run,
        "seed",
        default=0,
        help="seed of every random number generator (initialisation, data order, dropout, feature learning rates)",
    )
    run.add_argument("--out_dir", default=None, help="folder of this run's files (default: a new folder under runs/)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out_dir from its last checkpoint, with the flags recorded in its "
        "config.json; only "
        + ", ".join(flag_name(k) for k in sorted(RESUMABLE_FLAGS - {"resume", "out_dir"}))
        + " may be given again, with new values (recorded in config.json)",
    )
    add_shared_argument(
        run,
        "dry_run",
        help=f"check a command in seconds: a few batches (of at most {DRY_RUN_MAX_BATCH_SIZE} examples) of each "
        f"split for {DRY_RUN_EPOCHS} epoch (at most {DRY_RUN_MAX_EPOCHS} with --epochs), with validation, test "
        "and checkpoints, on offline data unless --dataset; its numbers mean nothing",
    )
    add_shared_argument(run, "no_cuda", help=NO_CUDA_HELP)
    run.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="mixed precision: the forward and the loss under torch.autocast in bfloat16 or float16 "
        "(fp16: CUDA only, with a gradient scaler); the Alrao switch stays float32",
    )
    run.add_argument(
        "--compile", action="store_true", help="compile the model's forward with torch.compile (model.compile())"
    )

    parser.add_check(lambda args: _resolve_common(args, defaults))
    return groups


def flag_name(dest: str) -> str:
    """The command-line spelling of a flag's destination: ``'no_cuda'`` -> ``'--no_cuda'`` (its
    former spelling ``--no-cuda`` is still accepted, see :data:`ALIASES`)."""
    return f"--{dest}"


def dry_run_line(args: argparse.Namespace, batches: int) -> str:
    """What a dry run does, said once at its start (with the flags it changed)."""
    notes = [n.removeprefix("--dry_run: ") for n in getattr(args, "notes", [])]
    return (
        f"dry run: {batches} batches of {args.batch_size} per split, {args.epochs} epoch"
        f"{'' if args.epochs == 1 else 's'} of training, validation, test and checkpoints (resumable); "
        + (f"{'; '.join(notes)}; " if notes else "")
        + "its numbers mean nothing"
    )


def given_flags(args: argparse.Namespace) -> frozenset:
    """The destinations of the flags typed on the command line (all of them for a plain Namespace)."""
    return args.given if isinstance(args, Flags) else frozenset(vars(args))


def _resolve_common(args: argparse.Namespace, defaults: ScriptDefaults) -> str | None:
    """Fill the defaults that depend on other flags; the first inconsistency found, as a message."""
    if args.resume and args.out_dir is None:
        return "--resume needs --out_dir, the folder of the run to continue"
    if args.resume:
        message = _resume_flags(args)
        if message:
            return message
    if args.dataset is None:
        args.dataset = defaults.dry_run_dataset if args.dry_run else defaults.dataset
    if args.epochs is None:
        args.epochs = DRY_RUN_EPOCHS if args.dry_run else EPOCHS
    if args.dry_run and args.epochs > DRY_RUN_MAX_EPOCHS:
        if isinstance(args, Flags):
            args.notes.append(f"--dry_run: --epochs {args.epochs} is cut to {DRY_RUN_MAX_EPOCHS}")
        args.epochs = DRY_RUN_MAX_EPOCHS
    if args.dry_run and args.batch_size > DRY_RUN_MAX_BATCH_SIZE:
        if isinstance(args, Flags):
            args.notes.append(f"--dry_run: --batch_size {args.batch_size} is cut to {DRY_RUN_MAX_BATCH_SIZE}")
        args.batch_size = DRY_RUN_MAX_BATCH_SIZE
    message = unused_data_path(args, defaults.offline_datasets)
    if message:
        return message
    if not args.early_stopping and args.patience is not None:
        return f"--patience {args.patience} is used only with early stopping (not with --no-early_stopping)"
    if args.early_stopping and args.patience is None:
        args.patience = PATIENCE
    message = check_optimizer_flags(args)
    if message:
        return message
    if not args.use_alrao:
        message = used_only_with(args, ("minLR", "maxLR", "n_last_layers", "lr_granularity"), "--use_alrao")
        if message:
            return message
        if args.lr is None:
            args.lr = OPTIMIZER_CHOICES[args.optimizer].default_lr
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
    return check_log10_interval(args.minLR, args.maxLR)


def check_log10_interval(min_lr_log10: float, max_lr_log10: float, flags=("--minLR", "--maxLR")) -> str | None:
    """Why ``(min_lr_log10, max_lr_log10)``, log10 of Alrao's learning rates, cannot be meant, or ``None``.

    Learning rates typed where their log10 is expected read as absurd intervals:
    ``--minLR 1e-5 --maxLR 10`` is [10**1e-5, 10**10], about [1, 1e10], and every copy
    diverges. Refused: an end strictly between 0 and 1 (a log10 is rarely a fraction of one
    decade there, a rate often is) and an upper end above :data:`MAX_LR_LOG10` (rates above 1000).
    """
    low, high = flags
    for flag, value in ((low, min_lr_log10), (high, max_lr_log10)):
        if 0 < value < 1:
            return (
                f"{flag} {value:g} would mean a learning rate of 10**{value:g} = {10.0**value:.4g}: {low} and "
                f"{high} are log10 of the rates ({low} -5 means 1e-5, {high} 1 means 10)"
            )
    if max_lr_log10 > MAX_LR_LOG10:
        return (
            f"{high} {max_lr_log10:g} would mean learning rates up to 1e{max_lr_log10:g} (valid: at most "
            f"{MAX_LR_LOG10}, i.e. 1e{MAX_LR_LOG10}): {low} and {high} are log10 of the rates "
            f"({low} -5 means 1e-5, {high} 1 means 10)"
        )
    return None


def _resume_flags(args: argparse.Namespace) -> str | None:
    """``--resume``: take the flags of the run recorded in ``<out_dir>/config.json``; the flags
    typed must be resumable ones or repeat the recorded values. Without a config (no run there),
    the flags stay as typed and the run reports what it finds."""
    path = Path(args.out_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
        saved = config["args"]
        if not isinstance(saved, dict):
            raise TypeError
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return f"--resume: cannot read the run's flags from {path} (not a config.json written by a run)"
    given = given_flags(args)
    differ = [k for k in sorted(given - RESUMABLE_FLAGS) if saved.get(k, "<absent>") != getattr(args, k)]
    if differ:
        changes = ", ".join(f"{flag_name(k)} {getattr(args, k)} (run: {saved.get(k, '<absent>')})" for k in differ)
        return (
            f"--resume: the command differs from the run in {args.out_dir}: {changes}; `--resume --out_dir "
            f"{args.out_dir}` alone continues it, and only "
            f"{', '.join(flag_name(k) for k in sorted(RESUMABLE_FLAGS - {'resume', 'out_dir'}))} may change"
        )
    if isinstance(args, Flags):
        args.resumed_changes = {
            k: [saved[k], getattr(args, k)]
            for k in sorted(given & RESUMABLE_FLAGS - {"resume", "out_dir"})
            if k in saved and saved[k] != getattr(args, k)
        }
        previous = config.get("resumes", [])
        args.previous_resumes = previous if isinstance(previous, list) else []
    for key, value in saved.items():
        if key not in given:
            setattr(args, key, value)
    return None
