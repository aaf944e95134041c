"""Loss per learning rate: the loss on one batch after one optimizer step at each rate.

A cheap look at the learning-rate landscape before a run (the idea of the
``learning-rate-utils`` tools): from the current model and optimizer state,
take ONE step at each rate of a list and measure the loss on the same batch,
restoring everything in between, so that every probe starts from the same
point and the caller's model, optimizer and random stream are unchanged
afterwards.

What "rate" means: each probe sets the hyper-parameter ``lr_key`` (default
``'lr'``) of EVERY parameter group to the probed value, the natural generic
behaviour. For SGD or Adam that is the learning rate. For
:class:`alrao.AlraoSGD` / :class:`alrao.AlraoAdam`, whose group ``lr`` is a
multiplier (default 1) of the per-feature learning rates, the probed value
scales all feature rates together (1 is Alrao's own step). For
:class:`alrao.tools.AliG`, scan ``lr_key='max_lr'``. One exception keeps relative
rates per module meaningful: a group built by
:func:`alrao.relative_param_groups` carries its factor ``relative_lr``, and
its ``lr`` is set to the probed value times that factor (so the probed value
is the base rate, and a frozen module stays frozen).
"""

import copy
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Real

import torch
from torch import nn


@dataclass(frozen=True)
class LRScanResult:
    """Outcome of :func:`lr_scan`.

    Attributes:
        lrs: the probed rates, in the order given (values of ``lr_key``, not log10).
        losses: the loss on the batch after one step at each rate; ``inf`` or
            ``nan`` where the step diverged.
        loss_before: the loss on the batch before the step (the same starting
            point for every probe).
        lr_key: the param-group hyper-parameter that was set to each rate.
    """

    lrs: tuple
    losses: tuple
    loss_before: float
    lr_key: str = "lr"

    @property
    def best_lr(self) -> float | None:
        """The rate with the lowest finite loss after the step, or ``None`` if all diverged."""
        finite = [(loss, lr) for lr, loss in zip(self.lrs, self.losses) if math.isfinite(loss)]
        return min(finite)[1] if finite else None

    def to_dict(self) -> dict:
        """JSON-ready dict; a non-finite loss becomes ``None`` (JSON has no inf/nan)."""

        def clean(x):
            return x if math.isfinite(x) else None

        return {
            "lr_key": self.lr_key,
            "lrs": list(self.lrs),
            "losses": [clean(x) for x in self.losses],
            "loss_before": clean(self.loss_before),
            "best_lr": self.best_lr,
        }


def lr_scan(
    model: nn.Module,
    loss_fn: Callable,
    batch: Sequence | None,
    optimizer: torch.optim.Optimizer,
    lrs: Iterable[float],
    *,
    lr_key: str = "lr",
) -> LRScanResult:
    """Loss on ``batch`` after one ``optimizer`` step at each rate of ``lrs``.

    Args:
        model: the module trained by ``optimizer``. Its mode is left as is: in
            train mode BatchNorm uses batch statistics and dropout is active,
            for the gradient and for the loss after the step alike.
        loss_fn: ``loss_fn(model(inputs), targets) -> scalar tensor`` when
            ``batch`` is given (e.g. ``nn.NLLLoss()``, or ``alrao_model.loss``);
            when ``batch`` is ``None``, a closure ``loss_fn() -> scalar tensor``
            that runs the model on its own batch (models with several inputs,
            a hidden state, ...).
        batch: ``(inputs, targets)``, already on the model's device, or ``None``
            (see ``loss_fn``).
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters,
            possibly with state (momentum buffers, Adam moments). Its ``step``
            is called with a closure that zeroes the gradients, computes the
            loss and back-propagates, so closure-based optimizers (LBFGS,
            :class:`alrao.tools.AliG`) work too.
        lrs: the rates to probe, positive numbers (learning rates, not log10).
        lr_key: the param-group hyper-parameter set to each rate, in every
            group (times the group's ``relative_lr`` factor, if any: see the
            module docstring); ``'max_lr'`` for AliG.

    Before each probe and at the end, this restores in place: parameters and
    their ``.grad``, buffers (BatchNorm running statistics and
    ``num_batches_tracked`` included), the optimizer's ``state_dict()``
    (state and param-group hyper-parameters) and the torch random generators
    (CPU, and every CUDA device once CUDA is initialised). So dropout draws
    are the same in every probe, and the caller's random stream is unchanged.
    Not restored: plain Python attributes of modules or of the optimizer
    outside ``state_dict()``, and ``torch.Generator`` objects passed explicitly.
    Memory: one extra copy of the parameters, buffers, gradients and optimizer
    state. Cost: one forward pass, then per rate one forward-backward pass (a
    step) and one forward pass.

    Returns:
        :class:`LRScanResult` with the loss before the step and one loss per rate.
    """
    lrs = _check_lrs(lrs)
    if not isinstance(lr_key, str) or lr_key == "params":
        raise ValueError(
            f"Invalid lr_key: {lr_key!r}; expected the name of a param-group hyper-parameter such as 'lr' or 'max_lr'"
        )
    for index, group in enumerate(optimizer.param_groups):
        if lr_key not in group:
            keys = sorted(k for k in group if k != "params")
            raise ValueError(
                f"param group {index} of {type(optimizer).__name__} has no "
                f"{lr_key!r}; its hyper-parameters are {keys}: pass lr_key= one of them"
            )

    if batch is None:
        compute_loss = loss_fn
    else:
        inputs, targets = _split_batch(batch)

        def compute_loss():
            return loss_fn(model(inputs), targets)

    def closure():
        optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        loss = _scalar(compute_loss())
        loss.backward()
        return loss.detach()

    snapshot = _Snapshot(model, optimizer)
    try:
        with torch.no_grad():
            loss_before = _scalar(compute_loss())
        losses_after = []
        for lr in lrs:
            snapshot.restore()
            for group in optimizer.param_groups:
                factor = group.get("relative_lr", 1.0) if lr_key == "lr" else 1.0
                _set_hyper_parameter(group, lr_key, lr * factor)
            optimizer.step(closure)
            with torch.no_grad():
                losses_after.append(_scalar(compute_loss()))
    finally:
        snapshot.restore()
    # One transfer to the host for all the values, not one per probe.
    values = torch.stack([loss_before] + losses_after).double().cpu().tolist()
    return LRScanResult(lrs=tuple(lrs), losses=tuple(values[1:]), loss_before=values[0], lr_key=lr_key)


def plot_lr_scan(result: LRScanResult, ax=None, path: str | None = None):
    """Plot the loss after one step against the rate (log x axis); returns the Axes.

    The loss before the step is a dashed horizontal line; a rate whose loss is
    not finite (diverged) is a red cross on the top edge. The y axis is
    logarithmic when every finite loss is positive. With ``path``, the figure
    is saved there as a PNG (written to a temporary file, then renamed, so no
    half-written file is left). matplotlib is imported here only.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot_lr_scan needs matplotlib: pip install matplotlib") from None
    if ax is None:
        ax = Figure(figsize=(6, 4), layout="constrained").add_subplot()
    finite = [(lr, loss) for lr, loss in zip(result.lrs, result.losses) if math.isfinite(loss)]
    diverged = [lr for lr, loss in zip(result.lrs, result.losses) if not math.isfinite(loss)]
    if finite:
        ax.plot(*zip(*finite), "o-", label="after one step")
    ax.axhline(result.loss_before, color="gray", linestyle="--", label="before the step")
    if diverged:
        # x in data coordinates, y at the top of the axes: visible whatever the loss scale.
        ax.plot(
            diverged,
            [1.0] * len(diverged),
            "x",
            color="red",
            clip_on=False,
            transform=ax.get_xaxis_transform(),
            label="diverged (not finite)",
        )
    ax.set_xscale("log")
    if result.loss_before > 0 and all(loss > 0 for _, loss in finite):
        ax.set_yscale("log")
    ax.set_xlabel(f"learning rate (param group '{result.lr_key}')")
    ax.set_ylabel("loss on the batch")
    ax.legend()
    if path is not None:
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            ax.figure.savefig(tmp, format="png", dpi=120)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return ax


class _Snapshot:
    """Copies of everything one probe changes, restored in place by :meth:`restore`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        # Parameters are restored in place: the optimizer holds references to them.
        params = {}
        for p in list(model.parameters()) + [p for g in optimizer.param_groups for p in g["params"]]:
            params.setdefault(id(p), p)
        self.params = list(params.values())
        self.values = [p.detach().clone() for p in self.params]
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        # Buffers by owner and name, so that a module that re-assigns a buffer in its
        # forward (instead of updating it in place) gets its original tensor back.
        self.buffers = []
        for name, buf in model.named_buffers():
            owner, _, attr = name.rpartition(".")
            self.buffers.append((model.get_submodule(owner), attr, buf, buf.detach().clone()))
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )

    def restore(self) -> None:
        with torch.no_grad():
            for p, value, grad in zip(self.params, self.values, self.grads):
                p.copy_(value)
                p.grad = None if grad is None else grad.clone()
            for module, attr, buf, value in self.buffers:
                setattr(module, attr, buf)
                buf.copy_(value)
        # load_state_dict may keep the given tensors as the new state, which the next
        # step updates in place: hand it a copy, never the snapshot itself.
        self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def _check_lrs(lrs) -> list:
    try:
        lrs = list(lrs)
    except TypeError:
        raise ValueError(f"Invalid lrs: {lrs!r}; expected a list of positive learning rates") from None
    if not lrs:
        raise ValueError("Invalid lrs: empty; expected at least one positive learning rate")
    for lr in lrs:
        if isinstance(lr, bool) or not isinstance(lr, Real) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(
                f"Invalid learning rate in lrs: {lr!r}; expected finite numbers > 0 (learning rates, not their log10)"
            )
    return [float(lr) for lr in lrs]


def _split_batch(batch):
    try:
        inputs, targets = batch
    except (TypeError, ValueError):
        raise ValueError(
            "Invalid batch: expected a pair (inputs, targets), or None with a closure as loss_fn"
        ) from None
    return inputs, targets


def _scalar(loss) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        what = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else repr(loss)
        raise ValueError(f"loss_fn must return a scalar tensor (the loss), got {what}")
    return loss.reshape(())


def _set_hyper_parameter(group: dict, key: str, value: float) -> None:
    if isinstance(group[key], torch.Tensor):
        # A tensor rate (capturable / fused optimizers) must stay a tensor.
        group[key].fill_(value)
    else:
        group[key] = value
