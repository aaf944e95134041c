"""AliG: Adaptive Learning-rate for Interpolation with Gradients.

Berrada, Zisserman, Kumar, "Training Neural Networks for and by
Interpolation", ICML 2020 (arXiv 1906.05661). AliG assumes the loss can reach
zero on the training data (interpolation) and takes the Polyak-like step

    step_size = min(max_lr, loss / (||g||^2 + eps)),   w <- w - step_size * g

where ``g`` is the gradient of all the optimizer's parameters together and
``loss`` the mini-batch loss at ``w``. Regularisation is expressed as a
constraint: ``projection_fn`` projects the parameters back onto the feasible
set after every step.

The semantics follow the authors' PyTorch package (``alig.th.AliG`` in
github.com/oval-group/ali-g): the squared gradient norm is summed over all
groups, each group clips with its own ``max_lr``, the momentum is their
Nesterov-style update (or their "adjusted" one), and ``projection_fn`` is
called once at construction and after every step. The code is ours; two
deliberate differences: the step size stays on the parameters' device (no
``float(loss)``, hence no host synchronisation), and it is also clamped below
at 0, so a negative loss (outside AliG's assumption loss >= 0) gives no step
instead of a gradient-ascent step.
"""

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


class AliG(Optimizer):
    """AliG optimizer (Berrada et al. 2020): Polyak-like step clipped at ``max_lr``.

    Args:
        params: parameters or parameter-group dicts, as for any torch optimizer.
        max_lr: maximal step size (a learning rate, not its log10); ``None``
            means no clipping (the plain ``loss / (||g||^2 + eps)`` step), as
            in the authors' package.
        momentum: momentum factor in ``[0, 1)``; 0 disables momentum.
        projection_fn: callable with no argument that projects the parameters
            onto the constraint set in place; called once here (so training
            starts from a feasible point) and after every step.
        eps: non-negative constant added to the squared gradient norm, so that
            a vanishing gradient gives a finite step (default 1e-5).
        adjusted_momentum: if ``False`` (default), the authors' Nesterov-style
            momentum: ``z <- momentum * z - step_size * g`` then
            ``w <- w - step_size * g + momentum * z``. If ``True``, their
            "adjusted" (PyTorch-like) momentum: the buffer accumulates raw
            gradients, ``z <- momentum * z - g``, and the current step size
            scales all of it: ``w <- w - step_size * g + step_size * momentum * z``.

    ``step(closure)`` requires a closure returning the loss at the current
    parameters (a tensor or a float): AliG needs its value for the step size.
    The closure may also recompute the gradients (the torch convention: zero
    the gradients, forward, backward, return the loss) or only return a loss
    whose gradients are already in ``.grad`` (the authors' usage
    ``optimizer.step(lambda: loss)``).

    After each step, every group holds ``group['step_size']``: the step size
    used (a 0-dim tensor on the parameters' device; ``None`` before the first
    step), for logging without a host synchronisation.

    Example::

        optimizer = alrao.tools.AliG(model.parameters(), max_lr=0.1, momentum=0.9)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step(lambda: loss)
    """

    def __init__(
        self,
        params: Iterable,
        max_lr: float | None = None,
        momentum: float = 0.0,
        projection_fn: Callable[[], None] | None = None,
        eps: float = 1e-5,
        adjusted_momentum: bool = False,
    ):
        _check_group(dict(max_lr=max_lr, momentum=momentum, eps=eps))
        if not isinstance(adjusted_momentum, bool):
            raise ValueError(f"Invalid adjusted_momentum: {adjusted_momentum!r}; expected True or False")
        if projection_fn is not None and not callable(projection_fn):
            raise ValueError(f"Invalid projection_fn: {projection_fn!r}; expected a callable with no argument, or None")
        defaults = dict(max_lr=max_lr, momentum=momentum, eps=eps, adjusted_momentum=adjusted_momentum, step_size=None)
        super().__init__(params, defaults)
        # Groups given as dicts may override the defaults: validate them too.
        for group in self.param_groups:
            _check_group(group)
        self.projection_fn = projection_fn
        if projection_fn is not None:
            projection_fn()

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One AliG step; ``closure`` (required) returns the loss at the current parameters."""
        if closure is None:
            raise ValueError(
                "AliG.step needs a closure returning the loss value, e.g. "
                "optimizer.step(lambda: loss): AliG computes its step size from the loss"
            )
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise ValueError(
                "the closure given to AliG.step returned None; it must return the loss (a scalar tensor or a float)"
            )

        params_with_grad = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params_with_grad:
            for p in params_with_grad:
                if p.grad.is_sparse:
                    raise RuntimeError("AliG does not support sparse gradients")
            device = params_with_grad[0].device
            # float64 parameters get a float64 step size; anything else float32.
            dtype = torch.float64 if any(p.grad.dtype == torch.float64 for p in params_with_grad) else torch.float32
            loss_value = _loss_tensor(loss, dtype, device)
            # ||g||^2 over all the optimizer's parameters, as in the paper and the package.
            grad_sqrd_norm = (
                torch.stack([torch.linalg.vector_norm(p.grad, dtype=dtype).to(device) for p in params_with_grad])
                .square()
                .sum()
            )
            for group in self.param_groups:
                step_size = (loss_value / (grad_sqrd_norm + group["eps"])).clamp(min=0.0, max=group["max_lr"])
                group["step_size"] = step_size
                self._update_group(group, step_size)

        if self.projection_fn is not None:
            self.projection_fn()
        return loss

    def _update_group(self, group: dict, step_size: torch.Tensor) -> None:
        momentum = group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            # Cast once per parameter: a 0-dim tensor multiplies without a host sync.
            lr = step_size.to(device=p.device, dtype=p.dtype)
            p.addcmul_(grad, lr, value=-1.0)
            if not momentum:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                # The package allocates zero buffers up front; a lazy zero buffer is the same.
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            if group["adjusted_momentum"]:
                buf.mul_(momentum).sub_(grad)
                p.addcmul_(buf, lr, value=momentum)
            else:
                buf.mul_(momentum).addcmul_(grad, lr, value=-1.0)
                p.add_(buf, alpha=momentum)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_group(group: dict) -> None:
    """Validate the hyper-parameters of one group (or of the defaults)."""
    max_lr, momentum, eps = group["max_lr"], group["momentum"], group["eps"]
    if max_lr is not None and not (_is_number(max_lr) and max_lr > 0):
        raise ValueError(f"Invalid max_lr: {max_lr!r}; expected a finite number > 0, or None (no clipping)")
    if not (_is_number(momentum) and 0.0 <= momentum < 1.0):
        raise ValueError(f"Invalid momentum: {momentum!r}; expected a number in [0, 1)")
    if not (_is_number(eps) and eps >= 0):
        raise ValueError(f"Invalid eps: {eps!r}; expected a finite number >= 0")


def _loss_tensor(loss, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The closure's loss as a detached 0-dim tensor (no host synchronisation)."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(
                f"the closure given to AliG.step returned a tensor of shape {tuple(loss.shape)}; expected a scalar loss"
            )
        return loss.detach().reshape(()).to(device=device, dtype=dtype)
    try:
        return torch.tensor(float(loss), dtype=dtype, device=device)
    except (TypeError, ValueError):
        raise ValueError(
            f"the closure given to AliG.step returned {loss!r}; expected the loss as a scalar tensor or a float"
        ) from None
