"""The optimizers a run can use: one table, read by ``--optimizer`` and by :func:`build_optimizer`.

A new baseline is one more :class:`OptimizerSpec` in :data:`OPTIMIZERS`. The
training loops call ``optimizer.step(closure)`` with a closure returning the
batch loss (the torch protocol; optimizers such as AliG need the loss value),
and the optimizer's hooks (:func:`build_optimizer_hooks`) around training,
evaluation and checkpoints. The tuning-free baselines and their hooks are in
:mod:`experiment.baselines`; their packages are optional (the ``baselines`` extra).
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

import alrao

from . import baselines
from .baselines import OptimizerHooks


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
            ``None`` if the optimizer has no Alrao version.
        hooks: ``hooks(model, optimizer, calibration_batches) -> OptimizerHooks``,
            what the loops call around training, evaluation and checkpoints
            (default: nothing to do).
        package: ``(module, pip package)`` of an optional dependency, checked
            when the flags are parsed; ``None`` for none.
    """

    default_lr: float
    flags: frozenset[str]
    plain: Callable[..., torch.optim.Optimizer]
    alrao: Callable[..., torch.optim.Optimizer] | None
    hooks: Callable[..., OptimizerHooks] = lambda model, optimizer, calibration_batches: OptimizerHooks(model)
    package: tuple[str, str] | None = None


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
        plain=baselines.alig,
        alrao=None,
        hooks=lambda model, optimizer, calibration_batches: baselines.AliGHooks(model, optimizer),
    ),
    # Prodigy, D-Adaptation, DoG: --lr multiplies the adapted step size; the authors ask for 1.
    "Prodigy": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baselines.prodigy,
        alrao=None,
        hooks=lambda model, optimizer, calibration_batches: baselines.AdaptedRateHooks(model, optimizer),
        package=("prodigyopt", "prodigyopt"),
    ),
    "DAdaptSGD": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"momentum", "weight_decay"}),
        plain=baselines.dadapt_sgd,
        alrao=None,
        hooks=lambda model, optimizer, calibration_batches: baselines.AdaptedRateHooks(model, optimizer),
        package=("dadaptation", "dadaptation"),
    ),
    "DAdaptAdam": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baselines.dadapt_adam,
        alrao=None,
        hooks=lambda model, optimizer, calibration_batches: baselines.AdaptedRateHooks(model, optimizer),
        package=("dadaptation", "dadaptation"),
    ),
    "DoG": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baselines.dog,
        alrao=None,
        hooks=lambda model, optimizer, calibration_batches: baselines.AveragedHooks(model, optimizer),
        package=("dog", "dog-optimizer"),
    ),
    "LDoG": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baselines.ldog,
        alrao=None,
        hooks=lambda model, optimizer, calibration_batches: baselines.AveragedHooks(model, optimizer),
        package=("dog", "dog-optimizer"),
    ),
    # Schedule-Free: --lr is the learning rate (the authors' defaults); their momentum 0.9 / betas.
    "SGDScheduleFree": OptimizerSpec(
        default_lr=1.0,
        flags=frozenset({"weight_decay"}),
        plain=baselines.sgd_schedule_free,
        alrao=None,
        hooks=baselines.ScheduleFreeHooks,
        package=("schedulefree", "schedulefree"),
    ),
    "AdamWScheduleFree": OptimizerSpec(
        default_lr=0.0025,
        flags=frozenset({"weight_decay"}),
        plain=baselines.adamw_schedule_free,
        alrao=None,
        hooks=baselines.ScheduleFreeHooks,
        package=("schedulefree", "schedulefree"),
    ),
}

# Flags of the optimisation group that only some optimizers use, with the
# value meaning "not used" (the flag's default).
OPTIONAL_FLAGS = {"momentum": 0.0, "weight_decay": 0.0}


def check_optimizer_flags(args) -> str | None:
    """The error message if ``args`` combine ``--optimizer`` with a flag it does not use, else ``None``."""
    spec = OPTIMIZERS[args.optimizer]
    if spec.package is not None:
        try:
            baselines.import_baseline(*spec.package, args.optimizer)
        except baselines.MissingPackage as error:
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


def _granularity(args) -> str:
    """``--lr_granularity`` (``'feature'``, the paper's Alrao, when the namespace has none)."""
    return getattr(args, "lr_granularity", None) or "feature"


def build_optimizer(model: nn.Module, args, generator: torch.Generator | None = None) -> torch.optim.Optimizer:
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
    model: nn.Module, optimizer: torch.optim.Optimizer, args, calibration_batches: Callable[[], Iterable] | None = None
) -> OptimizerHooks:
    """The hooks of ``optimizer`` (built by :func:`build_optimizer` from ``args``), which the
    training loop and :class:`experiment.Run` call around training, evaluation and checkpoints.

    ``calibration_batches()``, if given, yields model inputs from the training
    set (for the BatchNorm statistics of Schedule-Free's evaluation point).
    """
    return OPTIMIZERS[args.optimizer].hooks(model, optimizer, calibration_batches)
