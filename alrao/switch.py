"""The switch model averaging (paper, section 3.2; van Erven, Grunwald and de Rooij 2012,
"Catching up faster by switching sooner").

The switch is a Bayesian mixture over sequences of models: at each step it may
switch from the current copy to another one, so it follows the copy that is
best *now* rather than the one that was best on average. Alrao uses it to
average the classifier copies.

The recurrence is the one of the authors' code, which produced the paper's
tables (see PAPER.md): log-weights ``logw`` of shape ``(2, N)``, row 0 for "has
not switched yet", row 1 for "has switched".
"""

import math

import torch
from torch import nn

from .device_path import on_accelerator_path


class Switch(nn.Module):
    """Switch posterior over ``n_models`` models.

    Args:
        n_models: number of models averaged (the classifier copies).
        theta: prior probability of never switching (the authors' code uses
            0.9999; the paper's appendix says 0.999).

    All the state is in buffers (``logw``, ``log_posterior``, ``t``), so it is
    saved by ``state_dict()``, moved by ``.to()``, and updated on an accelerator
    without synchronising with the host (on a CPU, in Python floats: see
    :meth:`update`). The log-weights stay float32 (or
    float64, when asked for) whatever the model's dtype: ``model.half()`` or
    ``.to(torch.bfloat16)`` leaves them float32, and the step counter ``t``
    is an integer.
    """

    def __init__(self, n_models: int, theta: float = 0.9999):
        super().__init__()
        if not (isinstance(n_models, int) and n_models >= 1):
            raise ValueError(f"n_models must be an integer >= 1, got {n_models!r}")
        if not (0.0 < theta < 1.0):
            raise ValueError(f"theta must be in (0, 1), got {theta!r}")
        self.n_models = n_models
        self.theta = theta
        log_n = math.log(n_models)
        logw = torch.empty(2, n_models)
        logw[0] = math.log(theta) - log_n
        logw[1] = math.log1p(-theta) - log_n
        self.register_buffer("logw", logw)
        self.register_buffer("log_posterior", torch.full((n_models,), -log_n))
        # Step counter t of the recurrence (starts at 1); a buffer so that a
        # resumed run continues the prior pi_t = 1/(t+1) where it stopped.
        self.register_buffer("t", torch.ones((), dtype=torch.long))
        self.register_buffer(
            "_log_prior_switch", torch.tensor([[math.log(theta)], [math.log1p(-theta)]]), persistent=False
        )

    def _apply(self, fn, recurse=True):
        # A cast to a half-precision type (model.half(), .to(torch.bfloat16)) keeps the
        # log-weights float32: in float16 the counter t overflows at 65,504 and a step's
        # loss differences vanish. The cast is done from the original values, not rounded.
        def keep_float32(tensor):
            out = fn(tensor)
            if out.is_floating_point() and out.element_size() < 4 <= tensor.element_size():
                return tensor.to(device=out.device, dtype=torch.float32)
            return out

        module = super()._apply(keep_float32, recurse)
        # The prior's constants made again in the new dtype: a cast of their float32 roundings
        # would leave a float64 switch with float32 constants.
        prior = self._log_prior_switch
        self._log_prior_switch = torch.tensor(
            [[math.log(self.theta)], [math.log1p(-self.theta)]], dtype=prior.dtype, device=prior.device
        )
        return module

    def posterior(self) -> torch.Tensor:
        """Posterior probabilities of the models, shape ``(n_models,)``, summing to 1."""
        return self.log_posterior.exp()

    def update(self, losses: torch.Tensor) -> None:
        """Bayesian update after a mini-batch.

        Args:
            losses: shape ``(n_models,)``, each model's mean loss on the batch,
                in nats (a negative log-likelihood). A non-finite loss counts as
                ``+inf``: that model gets probability zero for this step (it may
                receive mass again through later switches). If every loss is
                non-finite the update is skipped.

        The recurrence is invariant to subtracting one constant from every
        loss; the smallest finite loss is subtracted first, so that the
        log-weights keep their precision when the losses are huge (in float32,
        ``1e9 - 1.4 == 1e9``).

        The tensors are tiny (``2 * n_models`` numbers): the cost is the number of
        operations. On the host path (a CPU, :mod:`alrao.device_path`) the update reads
        them and runs in Python floats (double precision), a few tensor operations in
        all; on the accelerator path it stays on the device, with few operations of few
        kinds (after a step's forward and backward, the first call of a kind costs ~10 us
        on a CPU). That form's arithmetic is still the plain form's (``logw - (losses -
        best)``, ``torch.logsumexp``, ...), operation for operation, and gives the same bits
        (``tests/test_switch.py`` runs the two).
        """
        # The buffers from _buffers (nn.Module.__getattr__ is a Python call per name), read
        # at each call: .to() replaces them.
        buffers = self._buffers
        logw_old, t_int = buffers["logw"], buffers["t"]
        losses = losses.detach()
        if losses.numel() != self.n_models:
            raise ValueError(f"Switch.update expects {self.n_models} losses, got shape {tuple(losses.shape)}")
        if losses.dim() != 1:
            losses = losses.reshape(-1)
        if not on_accelerator_path(logw_old.device):
            self._update_on_host(losses.tolist(), buffers)
            return
        if losses.dtype != logw_old.dtype:
            losses = losses.to(logw_old.dtype)
        # -loss, a non-finite loss as -inf; its maximum is minus the smallest finite loss
        # (-inf if there is none). Negated so that one reduction (amax) serves here and in
        # the log-sum-exps; -(a - b) == b - a exactly, so the shifted losses are unchanged.
        neg_losses = torch.nan_to_num(0 - losses, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)
        neg_best = neg_losses.amax()
        keep = neg_best > -math.inf  # all copies diverged: keep the previous state rather than NaNs
        logw = logw_old + (neg_losses - neg_best)  # logw - (losses - best)

        # t counts in int64; its logarithms are taken in the state's dtype, in forms that stay
        # accurate for large t: log(1 / (t + 1)) = -log1p(t), log(1 - 1 / (t + 1)) = -log1p(1 / t).
        t = t_int.to(logw.dtype)
        not_switched = logw[0]  # a view: row 0 is updated in place below
        pool = _logsumexp(not_switched) - torch.log1p(t)  # + log pi_t
        not_switched.sub_(torch.log1p(t.reciprocal()))  # + log(1 - pi_t)
        logw = torch.logaddexp(logw, buffers["_log_prior_switch"] + pool - math.log(self.n_models))
        logw = logw - _logsumexp(logw)

        torch.where(keep, logw, logw_old, out=logw_old)
        log_posterior = buffers["log_posterior"]
        torch.where(keep, _logsumexp(logw_old, dim=0), log_posterior, out=log_posterior)
        t_int.add_(1)

    def _update_on_host(self, losses: list[float], buffers) -> None:
        """:meth:`update`'s recurrence in Python floats, read from and written to the buffers."""
        logw_old, t_int = buffers["logw"], buffers["t"]
        neg_losses = [-loss if math.isfinite(loss) else -math.inf for loss in losses]
        neg_best = max(neg_losses)
        if neg_best > -math.inf:  # else all copies diverged: the previous state is kept
            t = float(t_int.item())
            w0, w1 = ([w + (n - neg_best) for w, n in zip(row, neg_losses)] for row in logw_old.tolist())
            pool = _lse(w0) - math.log1p(t) - math.log(self.n_models)  # + log pi_t, spread over the copies
            w0 = [w - math.log1p(1 / t) for w in w0]  # + log(1 - pi_t)
            w0 = [_logaddexp(w, math.log(self.theta) + pool) for w in w0]
            w1 = [_logaddexp(w, math.log1p(-self.theta) + pool) for w in w1]
            total = _lse(w0 + w1)
            w0, w1 = [w - total for w in w0], [w - total for w in w1]
            logw_old.copy_(torch.tensor([w0, w1], dtype=torch.float64))
            log_posterior = [_logaddexp(a, b) for a, b in zip(w0, w1)]
            buffers["log_posterior"].copy_(torch.tensor(log_posterior, dtype=torch.float64))
        t_int.add_(1)

    def extra_repr(self) -> str:
        return f"n_models={self.n_models}, theta={self.theta}"


def _logsumexp(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``torch.logsumexp(x, dim)`` (over every element when ``dim`` is None): its operations (amax,
    subtract, exp, sum, log, add), the same bits, without its guard for an infinite maximum
    (three operations more). In :meth:`Switch.update` the maximum is finite whenever the result
    is kept: row 0 of the log-weights is finite (every update gives each entry some switching
    mass), and the best copy's shifted loss is 0."""
    top = x.amax() if dim is None else x.amax(dim)
    total = (x - top).exp_()
    total = total.sum() if dim is None else total.sum(dim)
    return total.log_().add_(top)


def _lse(xs: list[float]) -> float:
    """``log(sum(exp(x)))`` of Python floats (the maximum is finite: see :func:`_logsumexp`)."""
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def _logaddexp(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` of Python floats, ``b`` finite."""
    top = max(a, b)
    return top + math.log1p(math.exp(-abs(a - b)))
