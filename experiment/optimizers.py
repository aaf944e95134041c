"""The optimizers a run can use: one registry, :data:`OPTIMIZERS`, read by ``--optimizer`` (its
choices, ``--lr``'s defaults, which flags each one takes), by :func:`build_optimizer`, by
:func:`build_optimizer_hooks` and by ``reproduce.py``'s baselines experiment.

To add an optimizer:

1. Write its builder, ``build(model, lr, args) -> torch.optim.Optimizer`` over
   ``model.parameters()`` (``lr`` is ``--lr``): for a third-party package, a thin adapter in
   :mod:`experiment.baselines` that imports the package with :func:`import_baseline` (so that a
   missing package is a one-line error naming its pip command) and follows its authors'
   documented settings.
2. If the loops must do something around its steps (switch a mode, evaluate averaged weights,
   checkpoint extra state, log its step size), subclass :class:`experiment.OptimizerHooks`
   beside the builder.
3. Add one :class:`OptimizerSpec` to :data:`OPTIMIZERS` below, naming them with
   :func:`baseline` (which imports :mod:`experiment.baselines` only when the run builds it).
   If it is a tuning-free baseline, say in :data:`LR_OF_BASELINES` what ``--lr`` means for it;
   add its package to the ``baselines`` extra of pyproject.toml. If its step reads the batch
   loss itself, set ``steps_by_the_loss`` (it then runs in one process only).

Nothing else lists the optimizers: ``--optimizer`` and ``reproduce.py --baselines`` take their
choices from here, and the tests run every entry. The training loops call
``optimizer.step(closure)`` with a closure returning the batch loss (the torch protocol;
optimizers such as AliG need the loss value).

Importing this module needs no torch (``--help`` reads the table): the builders import it
when a run calls them.
"""

from __future__ import annotations  # the annotations name torch types without importing torch

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .lazy import alrao, torch  # imported at first use: --help reads the table without torch
from .optimizer_hooks import OptimizerHooks

PIP_EXTRA = "pip install 'alrao[baselines]'"


class MissingPackage(ImportError):
    """An optional baseline's package is not installed."""


def import_baseline(module: str, package: str, optimizer: str):
    """The module ``module`` of the pip package ``package``; a one-line :class:`MissingPackage`
    naming the pip command when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(
            f"--optimizer {optimizer} needs the package {package}: pip install {package} "
            f"(or all the baselines: {PIP_EXTRA})"
        ) from None


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer from the run's flags.

    Attributes:
        default_lr: learning rate of the plain optimizer when ``--lr`` is not given.
        flags: the optimisation flags this optimizer uses besides the rate
            (``momentum``, ``weight_decay``); giving another one is an error,
            never silently ignored.
        plain: ``plain(model, lr, args) -> Optimizer`` over ``model.parameters()``;
            ``lr`` is ``--lr`` (see :mod:`experiment.baselines` for what it means
            for each baseline).
        alrao: ``alrao(model, min_lr, max_lr, args, generator) -> Optimizer``
            (``min_lr``/``max_lr`` are learning rates, not their log10), or
            ``None`` if the optimizer has no Alrao version. The optimizers with one
            are the paper's; the others are the tuning-free baselines.
        hooks: ``hooks(model, optimizer, calibration_batches) -> OptimizerHooks``,
            what the loops call around training, evaluation and checkpoints
            (default: :class:`OptimizerHooks`, nothing to do).
        package: ``(module, pip package)`` of an optional dependency, checked
            when the flags are parsed; ``None`` for none.
        steps_by_the_loss: its step reads the mini-batch loss itself, not only the
            gradients: with several processes the ranks' losses differ and so would
            their steps, so it runs in one process only (:mod:`experiment.distributed`).
    """

    default_lr: float
    flags: frozenset[str]
    plain: Callable[..., torch.optim.Optimizer]
    alrao: Callable[..., torch.optim.Optimizer] | None = None
    hooks: Callable[..., OptimizerHooks] = OptimizerHooks
    package: tuple[str, str] | None = None
    steps_by_the_loss: bool = False


def baseline(name: str) -> Callable:
    """The builder or hooks class ``name`` of :mod:`experiment.baselines`, imported when first
    called: that module needs torch, and the table is read without it (``--help``)."""

    def call(*args, **kwargs):
        from . import baselines

        return getattr(baselines, name)(*args, **kwargs)

    call.__name__ = name
    call.__qualname__ = f"baselines.{name}"
    return call


def _granularity(args) -> str:
    """``--lr_granularity`` (``'feature'``, the paper's Alrao, when the namespace has none)."""
    return getattr(args, "lr_granularity", None) or "feature"


OPTIMIZERS: dict[str, OptimizerSpec] = {
    # The paper's baselines: plain SGD (no momentum, no weight decay, no schedule)
    # and Adam with its default hyper-parameters; --momentum / --weight_decay are
    # honoured (the authors' code silently ignored them for the baselines).
    "SGD": OptimizerSpec(
        default_lr=0.01,  # the authors' default for --lr
        flags=frozenset({"momentum", "weight_decay"}),
        plain=lambda model, lr, args: torch.optim.SGD(
            model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay
        ),
        alrao=lambda model, min_lr, max_lr, args, generator: alrao.AlraoSGD(
            model,
            min_lr,
            max_lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            generator=generator,
            granularity=_granularity(args),
        ),
    ),
    "Adam": OptimizerSpec(
        default_lr=1e-3,  # Adam's default, the paper's Adam baseline
        flags=frozenset({"weight_decay"}),
        plain=lambda model, lr, args: torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay),
        alrao=lambda model, min_lr, max_lr, args, generator: alrao.AlraoAdam(
            model, min_lr, max_lr, weight_decay=args.weight_decay, generator=generator, granularity=_granularity(args)
        ),
    ),
    # Tuning-free baselines, built as their authors document them (experiment/baselines.py).
    # AliG (ours, alrao.tools.AliG): --lr is max_lr, the largest step size; regularisation
    # would be a constraint (projection_fn), so --weight_decay is not offered.
    "AliG": OptimizerSpec(
        default_lr=0.1,  # the max_lr of the AliG paper's CIFAR experiments
        flags=frozenset({"momentum"}),
        plain=baseline("alig"),
        hooks=baseline("AliGHooks"),
        steps_by_the_loss=True,  # its Polyak step size is the batch loss over the gradient's squared norm
    ),
    # Prodigy, D-Adaptation, DoG: --lr multiplies the adapted step size; the authors ask for 1.
    "Prodigy": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baseline("prodigy"),
        hooks=baseline("AdaptedRateHooks"),
        package=("prodigyopt", "prodigyopt"),
    ),
    "DAdaptSGD": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"momentum", "weight_decay"}),
        plain=baseline("dadapt_sgd"),
        hooks=baseline("AdaptedRateHooks"),
        package=("dadaptation", "dadaptation"),
    ),
    "DAdaptAdam": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baseline("dadapt_adam"),
        hooks=baseline("AdaptedRateHooks"),
        package=("dadaptation", "dadaptation"),
    ),
    "DoG": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baseline("dog"),
        hooks=baseline("AveragedHooks"),
        package=("dog", "dog-optimizer"),
    ),
    "LDoG": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baseline("ldog"),
        hooks=baseline("AveragedHooks"),
        package=("dog", "dog-optimizer"),
    ),
    # Schedule-Free: --lr is the learning rate (the authors' defaults); their momentum 0.9 / betas.
    "SGDScheduleFree": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baseline("sgd_schedule_free"),
        hooks=baseline("ScheduleFreeHooks"),
        package=("schedulefree", "schedulefree"),
    ),
    "AdamWScheduleFree": OptimizerSpec(
        default_lr=0.0025,
        flags=frozenset({"weight_decay"}),
        plain=baseline("adamw_schedule_free"),
        hooks=baseline("ScheduleFreeHooks"),
        package=("schedulefree", "schedulefree"),
    ),
}

#: The tuning-free baselines of the table (those without an Alrao version), in its order.
BASELINES = tuple(name for name, spec in OPTIMIZERS.items() if spec.alrao is None)

# What --lr means for the tuning-free baselines (--help; a test checks that it names every one)
LR_OF_BASELINES = (
    "for a tuning-free baseline, its own lr argument: max_lr (the largest step size) for AliG, "
    "a multiplier of the adapted step size for Prodigy, DAdaptSGD, DAdaptAdam, DoG and LDoG "
    "(their authors ask for 1), the learning rate for SGDScheduleFree and AdamWScheduleFree"
)

# Flags of the optimisation group that only some optimizers use, with the
# value meaning "not used" (the flag's default).
OPTIONAL_FLAGS = {"momentum": 0.0, "weight_decay": 0.0}


def check_optimizer_flags(args) -> str | None:
    """The error message if ``args`` combine ``--optimizer`` with a flag it does not use, else ``None``."""
    spec = OPTIMIZERS[args.optimizer]
    if spec.package is not None:
        try:
            import_baseline(*spec.package, args.optimizer)
        except MissingPackage as error:
            return str(error)
    for flag, unused in OPTIONAL_FLAGS.items():
        if getattr(args, flag) != unused and flag not in spec.flags:
            return (
                f"--{flag} {getattr(args, flag)} is not used by --optimizer {args.optimizer} "
                f"(it uses: {', '.join(sorted(spec.flags)) or 'no other flag'})"
            )
    if args.use_alrao and spec.alrao is None:
        alrao_ones = ", ".join(name for name, s in OPTIMIZERS.items() if s.alrao is not None)
        return f"--optimizer {args.optimizer} has no Alrao version (with --use_alrao: {alrao_ones})"
    return None


def build_optimizer(model: torch.nn.Module, args, generator: torch.Generator | None = None) -> torch.optim.Optimizer:
    """The optimizer of a run.

    With ``args.use_alrao``: the Alrao version over ``model`` (an
    :class:`alrao.AlraoModel`), its feature rates drawn log-uniformly in
    ``[10**args.minLR, 10**args.maxLR]`` with ``generator``. Otherwise the plain
    optimizer over ``model.parameters()`` at rate ``args.lr``.
    """
    spec = OPTIMIZERS[args.optimizer]
    if args.use_alrao:
        return spec.alrao(model, 10.0**args.minLR, 10.0**args.maxLR, args, generator)
    return spec.plain(model, args.lr, args)


def build_optimizer_hooks(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    args,
    calibration_batches: Callable[[], Iterable] | None = None,
) -> OptimizerHooks:
    """The hooks of ``optimizer`` (built by :func:`build_optimizer` from ``args``), which the
    training loop and :class:`experiment.Run` call around training, evaluation and checkpoints.

    ``calibration_batches()``, if given, yields model inputs from the training
    set (for the BatchNorm statistics of Schedule-Free's evaluation point).
    """
    return OPTIMIZERS[args.optimizer].hooks(model, optimizer, calibration_batches)
