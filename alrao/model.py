"""AlraoModel: a pre-classifier, ``n_classifiers`` classifier copies and the switch
(paper, section 3 and Algorithm 1).

Training protocol::

    output = model(x)               # the switch-averaged model's prediction
    loss = model.loss(output, y)    # its loss (the value to report)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    model.update_switch()           # posterior update from this batch's per-copy losses

Gradients (section 3.2): the pre-classifier is trained through the averaged
model, i.e. it receives the gradient of the averaged model's loss; copy ``j``
is trained as if it were the only classifier, i.e. it receives the gradient of
its own loss with the pre-classifier output held fixed. Both come out of the
single ``loss.backward()``: the copies are evaluated once in the forward pass
and the backward pass routes the two gradients (see ``alrao/copies.py``).
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .copies import evaluate_copies, known_all_finite
from .distributed import average_copy_losses
from .switch import Switch

TASKS = ("classification", "regression")


class AlraoModel(nn.Module):
    """A network trained with Alrao.

    Args:
        task: ``'classification'`` (copies return log-probabilities, the model
            returns the posterior-weighted mixture, in log space) or
            ``'regression'`` (the model returns the posterior-weighted mean of
            the copies' predictions).
        loss: the loss of one prediction, reduced to a scalar mean over the
            batch, e.g. ``nn.NLLLoss()``. The switch reads each copy's loss as a
            negative log-likelihood in nats (for regression, use a Gaussian
            negative log-likelihood or a loss that is one).
        preclassifier: the network minus its last layer. If it returns a tuple
            ``(x, a, b, ...)``, ``x`` feeds the copies and the model returns
            ``(y, a, b, ...)`` (e.g. an RNN's hidden state).
        n_classifiers: number of classifier copies (the paper uses 10 for the
            CNNs, 6 for the LSTM).
        classifier_cls, *args, **kwargs: each copy is
            ``classifier_cls(*args, **kwargs)``, with its own initialisation.
        theta: the switch's prior probability of never switching.
    """

    def __init__(
        self,
        task: str,
        loss: Callable,
        preclassifier: nn.Module,
        n_classifiers: int,
        classifier_cls: Callable[..., nn.Module],
        *args,
        theta: float = 0.9999,
        **kwargs,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not (isinstance(n_classifiers, int) and n_classifiers >= 1):
            raise ValueError(f"n_classifiers must be an integer >= 1, got {n_classifiers!r}")
        if not isinstance(preclassifier, nn.Module):
            raise TypeError(f"preclassifier must be an nn.Module, got {type(preclassifier).__name__}")
        self.task = task
        self.loss_fn = loss
        self.preclassifier = preclassifier
        self.classifiers = nn.ModuleList(classifier_cls(*args, **kwargs) for _ in range(n_classifiers))
        self.switch = Switch(n_classifiers, theta=theta)
        self.n_classifiers = n_classifiers
        self._forwarded = {}
        self._reset_last()
        # On accelerators the finiteness check of the pre-classifier output is
        # deferred (checking means synchronising with the host): a device flag
        # is read every `check_every` calls of update_switch(). None = defer
        # everywhere but on the CPU.
        self.defer_finite_check = None
        self.check_every = 100
        self._updates_since_check = 0
        self.register_buffer("_nonfinite_seen", torch.zeros((), dtype=torch.bool), persistent=False)

    def _reset_last(self):
        self.last_copy_outputs = None  # (N, ...) outputs of the copies on the last batch
        self.last_copy_losses = None  # (N,) their losses, set by loss()
        self._last_finite = None

    # ------------------------------------------------------------------ forward
    def forward(self, *args, **kwargs):
        out = self.preclassifier(*args, **kwargs)
        rest = None
        if isinstance(out, tuple):
            out, rest = out[0], out[1:]
        self._check_finite(out)
        y_mix, y_own, finite = evaluate_copies(list(self.classifiers), out)
        self.last_copy_outputs, self._last_finite, self.last_copy_losses = y_own, finite, None
        y = self._average(y_mix, finite)
        return (y, *rest) if rest is not None else y

    def _average(self, y: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """Posterior-weighted average of the copies, renormalised over the finite ones."""
        shape = (self.n_classifiers,) + (1,) * (y.dim() - 1)
        neg_inf = torch.full((), -math.inf, dtype=y.dtype, device=y.device)
        log_post = torch.where(finite, self.switch.log_posterior.to(y.dtype), neg_inf)
        log_post = (log_post - torch.logsumexp(log_post, dim=0)).reshape(shape)
        finite = finite.reshape(shape)
        if self.task == "classification":
            # log sum_j p_j(y|x) * posterior_j, computed in log space.
            return _LogMixture.apply(y, log_post, finite)
        return (torch.where(finite, y, torch.zeros((), dtype=y.dtype, device=y.device)) * log_post.exp()).sum(0)

    def _check_finite(self, out: torch.Tensor) -> None:
        bad = ~torch.isfinite(out.detach()).all()
        defer = self.defer_finite_check
        if not (out.device.type != "cpu" if defer is None else defer):
            if bad:
                self._raise_nonfinite()
        else:
            self._nonfinite_seen |= bad

    def _raise_nonfinite(self):
        raise FloatingPointError(
            "AlraoModel: the pre-classifier output contains NaN or inf; the shared network has "
            "diverged (feature learning rates too large?): lower max_lr"
        )

    def __getstate__(self):
        # The last batch's outputs hold an autograd graph, which cannot be
        # copied or pickled; a copy of the model starts without them.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state.update(last_copy_outputs=None, last_copy_losses=None, _last_finite=None)
        return state

    # --------------------------------------------------------------------- loss
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of the averaged model on this batch (the value to report).

        Its backward pass trains the pre-classifier through the averaged model
        and each copy on its own loss. Also records the per-copy losses in
        ``last_copy_losses`` for :meth:`update_switch`.
        """
        if self.last_copy_outputs is None:
            raise RuntimeError("AlraoModel.loss: call the model's forward on this batch first")
        mixed = self.loss_fn(output, target)
        own = self._copy_losses(self.last_copy_outputs, target)
        if mixed.dim() != 0 or own.dim() != 1:
            raise ValueError("AlraoModel: the loss must reduce to a scalar (use reduction='mean')")
        self.last_copy_losses = own.detach()
        ok = self._last_finite & torch.isfinite(own)
        own = torch.where(ok, own, torch.zeros((), dtype=own.dtype, device=own.device)).sum()
        # Adds the copies' own losses to the graph without changing the value.
        return mixed + (own - own.detach())

    def _copy_losses(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each copy's loss, shape ``(N,)``: one gather for a plain ``nn.NLLLoss``
        (the common case), else one loss call per copy."""
        fn = self.loss_fn
        if (
            type(fn) is nn.NLLLoss
            and fn.weight is None
            and fn.reduction == "mean"
            and outputs.dim() == 3
            and target.dim() == 1
        ):
            valid = target != fn.ignore_index
            index = torch.where(valid, target, 0).view(1, -1, 1).expand(outputs.shape[0], -1, 1)
            picked = outputs.gather(2, index).squeeze(2)
            zero = torch.zeros((), dtype=picked.dtype, device=picked.device)
            return -torch.where(valid, picked, zero).sum(dim=1) / valid.sum()
        return torch.stack([fn(y, target) for y in outputs.unbind(0)])

    def update_switch(self, process_group=None) -> None:
        """Update the switch posterior with the per-copy losses of the last :meth:`loss` call;
        under ``torch.distributed``, averaged over the ranks of ``process_group`` (default: the
        world) first, so every rank holds the same posterior (see ``alrao/distributed.py``)."""
        if self.last_copy_losses is None:
            raise RuntimeError("AlraoModel.update_switch: call model.loss(output, target) on this batch first")
        self.switch.update(average_copy_losses(self.last_copy_losses, process_group))
        self.last_copy_losses = None
        self._updates_since_check += 1
        if self._updates_since_check >= self.check_every:
            self._updates_since_check = 0
            if self._nonfinite_seen:
                self._raise_nonfinite()

    def posterior(self) -> torch.Tensor:
        """Switch posterior over the copies, shape ``(n_classifiers,)``, summing to 1."""
        return self.switch.posterior()

    # ---------------------------------------------------------- method forwarding
    def method_fwd_preclassifier(self, name: str) -> None:
        """Make ``model.name(...)`` call ``model.preclassifier.name(...)``."""
        if not callable(getattr(self.preclassifier, name, None)):
            raise AttributeError(f"the pre-classifier has no method {name!r}")
        self._forwarded[name] = "preclassifier"

    def method_fwd_classifiers(self, name: str) -> None:
        """Make ``model.name(...)`` return ``[c.name(...) for c in model.classifiers]``."""
        if not callable(getattr(self.classifiers[0], name, None)):
            raise AttributeError(f"the classifier has no method {name!r}")
        self._forwarded[name] = "classifiers"

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            target = self.__dict__.get("_forwarded", {}).get(name)
            if target == "preclassifier":
                return getattr(self.preclassifier, name)
            if target == "classifiers":
                methods = [getattr(c, name) for c in self.classifiers]
                return lambda *a, **k: [m(*a, **k) for m in methods]
            raise


class _LogMixture(torch.autograd.Function):
    """``logsumexp_j(y_j + log_post_j)`` over the copies (dim 0), the diverged ones left out.

    The value and gradient of ``torch.logsumexp(torch.where(finite, y + log_post, -inf), 0)``
    with fewer full-size temporaries: the copies' outputs are the largest tensors of a step (a
    word-level decoder: copies x tokens x vocabulary), and on a CPU each new one costs its page
    faults as well as its pass. The forward keeps the mixture weights (each copy's share of the
    averaged probability, computed anyway on the way to the log-sum-exp); the gradient with
    respect to ``y_j`` is that weight times the incoming gradient.
    """

    @staticmethod
    def forward(ctx, y, log_post, finite):
        weight = y + log_post
        masked = not known_all_finite(finite)
        if masked:
            weight.masked_fill_(~finite.view(-1, *(1,) * (y.dim() - 1)), -math.inf)
        top = weight.amax(dim=0)
        if masked:  # where every copy is left out, the mixture is -inf and its weights 0 (not NaN)
            top = torch.where(torch.isfinite(top), top, torch.zeros((), dtype=top.dtype, device=top.device))
        weight.sub_(top).exp_()
        total = weight.sum(dim=0)
        weight.div_(total)
        out = total.log_().add_(top)
        if masked:
            weight.nan_to_num_(0.0)
        ctx.save_for_backward(weight)
        ctx.mark_non_differentiable(finite)
        return out

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return weight * grad, None, None


def classifier_lrs(min_lr: float, max_lr: float, n_classifiers: int) -> Sequence[float]:
    """Learning rates of the copies: ``log eta_j`` evenly spaced on ``[log min_lr, log max_lr]``
    (paper, section 3.1). A single copy gets the log-midpoint."""
    if n_classifiers == 1:
        return [math.sqrt(min_lr * max_lr)]
    step = math.log(max_lr / min_lr) / (n_classifiers - 1)
    return [math.exp(math.log(min_lr) + j * step) for j in range(n_classifiers)]
