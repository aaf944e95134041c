"""The adapters of the tuning-free baselines: AliG, Prodigy, D-Adaptation, DoG and Schedule-Free.

Each adapter is a thin builder ``build(model, lr, args) -> Optimizer`` around its package and,
where the loops must do something around its steps, an :class:`OptimizerHooks` subclass; the
registry :data:`experiment.optimizers.OPTIMIZERS` names them (its docstring says how to add an
optimizer). Each is built as its authors document it (their README and docstrings, for
the package versions of the ``baselines`` extra: prodigyopt 1.1.2,
dadaptation 3.2, dog-optimizer 1.0.3, schedulefree 1.4.1), so the comparison
with Alrao is fair:

- ``--lr`` is the optimizer's own ``lr`` argument. For Prodigy, D-Adaptation
  and DoG that is a multiplier of the adapted step size, which the authors
  ask to leave at 1 (the default here); for Schedule-Free it is the learning
  rate (the authors' defaults: 1.0 for SGD, 0.0025 for AdamW); for AliG it is
  ``max_lr``, the largest step size of its Polyak step.
- No learning-rate schedule and no warmup, as for every optimizer of the
  paper's protocol (Table 1). The Schedule-Free README recommends a warmup
  (``warmup_steps``) but it is a step count that the runner cannot choose
  without knowing the data set: none is used, which we state here.
- DoG and LDoG keep their state on the parameters' device after ``load_state_dict`` (the
  package moves it to the CPU; see :func:`_on_the_parameters_device`, which also says where
  their step reads the host).
- DoG is always combined with the authors' ``PolynomialDecayAverager``
  (their README: "DoG/L-DoG must be combined with iterate averaging"); its
  averaged model is the one evaluated and saved as ``best.pt``. ``reps_rel``
  is 1e-4 when the network has batch normalisation, 1e-6 otherwise (their
  README's recommendation).
- Schedule-Free's ``optimizer.train()`` runs before the training steps and
  ``optimizer.eval()`` before evaluation and before every checkpoint (their
  README). With batch normalisation, the running statistics are recomputed
  at the evaluation point ``x`` on training batches before evaluating, as
  their README's caveat recommends, when the script gives those batches.

What the loops call around the steps is an :class:`OptimizerHooks` object
(:mod:`experiment.optimizer_hooks`); ordinary optimizers get the no-op one.
"""

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn

from alrao.tools import AliG

from .optimizer_hooks import OptimizerHooks
from .optimizers import PIP_EXTRA, MissingPackage, import_baseline  # noqa: F401 (their former home)

CALIBRATION_BATCHES = 50  # the Schedule-Free README's number of training batches for the BatchNorm statistics


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --------------------------------------------------------------------- hooks
class ScheduleFreeHooks(OptimizerHooks):
    """Schedule-Free: the parameters hold the gradient point ``y`` in train mode and the
    evaluation point ``x`` in eval mode (the optimizer switches them in place).

    ``calibration_batches()``, if given, yields model inputs from the training
    set; with batch normalisation, :meth:`evaluation_network` runs the network in
    train mode on the first :data:`CALIBRATION_BATCHES` of them so that the running
    statistics are those of ``x``, not of ``y`` (the authors' README caveat).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        calibration_batches: Callable[[], Iterable] | None = None,
    ):
        super().__init__(model, optimizer, calibration_batches if has_batch_norm(model) else None)

    def train(self) -> None:
        self.optimizer.train()

    def evaluation_network(self) -> nn.Module:
        # once per switch: it is also called before saving, and a second switch would move x again
        if self.optimizer.param_groups[0]["train_mode"]:
            self.optimizer.eval()
            if self.calibration_batches is not None:
                self._recompute_batch_norm_statistics()
        return self.model

    @torch.no_grad()
    def _recompute_batch_norm_statistics(self) -> None:
        was_training = self.model.training
        self.model.train()
        for inputs in itertools.islice(self.calibration_batches(), CALIBRATION_BATCHES):
            self.model(inputs)
        self.model.train(was_training)


class AveragedHooks(OptimizerHooks):
    """DoG / LDoG: the authors' polynomial-decay iterate averaging, updated after every step.

    The averaged network is the one evaluated and saved as ``best.pt``; the
    averager's state (its step count and averaged weights) is checkpointed.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        calibration_batches: Callable[[], Iterable] | None = None,
    ):
        super().__init__(model, optimizer, calibration_batches)
        package = import_baseline("dog", "dog-optimizer", type(optimizer).__name__)
        self.averager = package.PolynomialDecayAverager(model)  # gamma 8, the authors' default
        optimizer.register_step_post_hook(lambda *_: self.averager.step())

    def evaluation_network(self) -> nn.Module:
        return self.averager.averaged_model

    def record(self) -> dict:
        eta = self.optimizer.param_groups[0].get("eta")  # DoG's step size, per parameter with LDoG
        return {} if eta is None else {"eta": torch.stack(list(eta)).float().mean().item()}

    def state_dict(self) -> dict:
        return self.averager.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averager.load_state_dict(state)


class AdaptedRateHooks(OptimizerHooks):
    """Prodigy / D-Adaptation: log the step size ``d * lr`` that the method estimated."""

    def record(self) -> dict:
        group = self.optimizer.param_groups[0]
        return {"adapted_lr": float(group["d"]) * group["lr"]}


class AliGHooks(OptimizerHooks):
    """AliG: log the last Polyak step size (at most ``max_lr``)."""

    def record(self) -> dict:
        step_size = self.optimizer.param_groups[0]["step_size"]
        return {} if step_size is None else {"step_size": step_size.item()}


# ------------------------------------------------------------------ builders
# Each is ``build(model, lr, args) -> Optimizer``, as OptimizerSpec.plain.
def alig(model, lr, args):
    return AliG(model.parameters(), max_lr=lr, momentum=args.momentum)


def prodigy(model, lr, args):
    # decouple=True (AdamW-style weight decay) is the authors' default.
    return import_baseline("prodigyopt", "prodigyopt", "Prodigy").Prodigy(
        model.parameters(), lr=lr, weight_decay=args.weight_decay
    )


def dadapt_sgd(model, lr, args):
    return import_baseline("dadaptation", "dadaptation", "DAdaptSGD").DAdaptSGD(
        model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay
    )


def dadapt_adam(model, lr, args):
    return import_baseline("dadaptation", "dadaptation", "DAdaptAdam").DAdaptAdam(
        model.parameters(), lr=lr, weight_decay=args.weight_decay
    )


def move_group_tensors(optimizer: torch.optim.Optimizer) -> None:
    """Put every tensor kept in a parameter group (not the parameters) on the device of the
    group's first parameter."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        for key, value in group.items():
            if key == "params":
                continue
            if isinstance(value, torch.Tensor):
                group[key] = value.to(device)
            elif isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
                group[key] = [v.to(device) for v in value]


def _on_the_parameters_device(cls: type) -> type:
    """``cls`` (DoG or LDoG of dog-optimizer 1.0.3) with a ``load_state_dict`` that leaves its
    state on the parameters' device.

    The package keeps its state in the parameter groups (``rbar``, ``G``, ``eta``,
    ``init_buffer``) and its ``load_state_dict`` moves all of them but ``init_buffer`` to the CPU:
    a run resumed on CUDA would then mix devices (LDoG's ``torch.maximum(rbar, ...)`` of a CPU
    and a CUDA vector fails; DoG's ``G += ...`` on a CPU tensor with a CUDA operand too).
    Everything else is the package's: its step reads the host at every step (``assert G > 0``,
    and each parameter's step size ``eta``, a device tensor, passed as ``alpha``), a device
    synchronisation per parameter per step on CUDA that we leave as its authors wrote it.
    """

    class OnTheParametersDevice(cls):
        def load_state_dict(self, state_dict: dict) -> None:
            super().load_state_dict(state_dict)
            move_group_tensors(self)

    OnTheParametersDevice.__name__ = OnTheParametersDevice.__qualname__ = cls.__name__
    OnTheParametersDevice.__doc__ = cls.__doc__
    return OnTheParametersDevice


def _dog(name):
    def build(model, lr, args):
        reps_rel = 1e-4 if has_batch_norm(model) else 1e-6  # the authors' README
        cls = _on_the_parameters_device(getattr(import_baseline("dog", "dog-optimizer", name), name))
        return cls(model.parameters(), lr=lr, reps_rel=reps_rel, weight_decay=args.weight_decay)

    return build


dog, ldog = _dog("DoG"), _dog("LDoG")


def _schedule_free(name):
    def build(model, lr, args):
        cls = getattr(import_baseline("schedulefree", "schedulefree", name), name)
        return cls(model.parameters(), lr=lr, weight_decay=args.weight_decay)  # momentum / betas: their defaults

    return build


sgd_schedule_free, adamw_schedule_free = _schedule_free("SGDScheduleFree"), _schedule_free("AdamWScheduleFree")
