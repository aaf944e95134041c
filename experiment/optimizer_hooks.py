"""What a run calls around an optimizer's steps: the generic plumbing, :class:`OptimizerHooks`.

Most optimizers need nothing around their steps. Some do: Schedule-Free must be switched
between its training and evaluation points, DoG evaluates an averaged copy of the network whose
state must be checkpointed, and the adaptive methods have a step size worth logging. The
training loops and :class:`experiment.Run` call the same methods for every optimizer; an
optimizer that needs more subclasses :class:`OptimizerHooks` (see :mod:`experiment.baselines`)
and names the subclass in its entry of :data:`experiment.optimizers.OPTIMIZERS`.

Importing this module needs no torch (the registry, read by ``--help``, names the base class).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


class OptimizerHooks:
    """What the training loops and :class:`experiment.Run` call around an optimizer's steps.

    The loops call :meth:`train` before the training steps of an epoch and evaluate the network
    returned by :meth:`evaluation_network`; the run calls :meth:`evaluation_network` before
    saving a checkpoint, saves that network as ``best.pt``, stores :meth:`state_dict` in the
    checkpoint and adds :meth:`record` to each epoch's record. This base class does nothing:
    the network is ``model``.

    Args:
        model: the network the optimizer trains.
        optimizer: the optimizer (``None`` for hooks that do not read it).
        calibration_batches: ``calibration_batches()``, if given, yields model inputs from the
            training set (Schedule-Free recomputes its BatchNorm statistics on them).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        calibration_batches: Callable[[], Iterable] | None = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.calibration_batches = calibration_batches

    def train(self) -> None:
        """Before the training steps of an epoch (e.g. Schedule-Free's switch to its training point)."""

    def evaluation_network(self) -> nn.Module:
        """Before evaluating and before saving a checkpoint: put the optimizer at its evaluation
        point (Schedule-Free) and return the network to evaluate and to save as ``best.pt``
        (DoG: the averaged one). It stays there until :meth:`train`."""
        return self.model

    def eval(self) -> nn.Module:
        """The former name of :meth:`evaluation_network`, kept for code written before it (it
        returns the network: it is not only a mode switch). Subclasses override
        :meth:`evaluation_network`."""
        return self.evaluation_network()

    def record(self) -> dict:
        """Fields added to the epoch's record (e.g. the adapted step size)."""
        return {}

    def state_dict(self) -> dict:
        """What the checkpoint must hold to resume the hooks (e.g. DoG's averaged weights)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
