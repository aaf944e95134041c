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

Mixed precision: under ``torch.autocast`` the pre-classifier and the copies may
compute in a low dtype; the mixture (its log-sum-exp), the copies' losses fed
to the switch and the switch state are float32.

Skipped steps: an Alrao optimizer built on the model tells it when it steps.
The switch is updated from a batch only if the optimizer stepped on that
batch: when a ``torch.amp.GradScaler`` skips a step (inf/nan gradients), the
``update_switch()`` that follows consumes the batch's losses and leaves the
switch as it was. (``update_switch()`` called before ``optimizer.step()`` is
applied by that step.)
"""

import math
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import nn

from .copies import evaluate_copies
from .deprecated import classifier_lrs  # noqa: F401  (its old home: alrao.model.classifier_lrs)
from .device_path import known_all, on_accelerator_path
from .distributed import average_copy_losses
from .likelihood import GaussianNLL, copy_log_likelihoods, mixture_mean
from .linear_copies import copy_nlls, linear_copies_nll
from .mixture import LogMixture
from .switch import Switch

TASKS = ("classification", "regression")

# Optimizer steps without any update_switch() call after which the model warns (once).
STEPS_BEFORE_NO_SWITCH_WARNING = 100

# A classification copy's output must be log-probabilities: on the first forward, the
# log-sum-exp over the class dimension must be 0 within this (nats; bf16 outputs stay well inside).
LOG_PROB_TOLERANCE = 0.1


class AlraoModel(nn.Module):
    """A network trained with Alrao.

    Args:
        task: ``'classification'`` (copies return log-probabilities, the model
            returns the posterior-weighted mixture, in log space) or
            ``'regression'`` (copy ``j`` predicts the mean ``mu_j`` of a Gaussian
            ``N(mu_j, variance)``; the model is the posterior-weighted mixture of
            these Gaussians and returns its mean; see ``alrao/likelihood.py``).
        loss: classification: the loss of one prediction, a negative
            log-likelihood in nats reduced to a scalar mean over the batch, e.g.
            ``nn.NLLLoss()`` (the switch reads each copy's loss as one).
            Regression: an :class:`alrao.GaussianNLL` (its variance, fixed or
            learned) or ``None`` for unit variance; no other loss, since the
            mixture needs each copy's likelihood, not a loss of the average.
            Copy ``j`` trains on, and the switch scores it by, its own Gaussian
            negative log-likelihood (nats, summed over the output dimensions);
            the pre-classifier trains on the mixture's, which :meth:`loss`
            returns. The prediction, ``model(x)``, is the mixture's mean under
            ``log_prediction_weights`` (a buffer, log-probabilities): the switch
            posterior after the last batch's evidence, in which a copy with huge
            losses has weight zero (see :meth:`_update_prediction_weights`).
        preclassifier: the network minus its last layer. If it returns a tuple
            ``(x, a, b, ...)``, ``x`` feeds the copies and the model returns
            ``(y, a, b, ...)`` (e.g. an RNN's hidden state).
        n_classifiers: number of classifier copies (the paper uses 10 for the
            CNNs, 6 for the LSTM).
        classifier_cls, *args, **kwargs: each copy is
            ``classifier_cls(*args, **kwargs)``, with its own initialisation.
        theta: the switch's prior probability of never switching.

    Checks: on the host path (eager on a CPU, see :mod:`alrao.device_path`) a
    pre-classifier output with NaN or inf raises ``FloatingPointError`` at
    once, and copies' outputs that are not log-probabilities (first forward,
    classification) raise ``ValueError``. On the accelerator path these set
    device flags, read by :meth:`check` every ``check_every`` switch updates
    (the only host read of the training step).
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
        if task == "regression":
            if loss is None:
                loss = GaussianNLL()
            if not isinstance(loss, GaussianNLL):
                raise TypeError(
                    "AlraoModel('regression', loss, ...): loss must be alrao.GaussianNLL(variance=..., "
                    "learn_variance=...) or None (unit variance), got "
                    f"{type(loss).__name__}: the copies are Gaussians averaged as a mixture"
                )
            # The prediction's weights: the switch posterior after the last batch's evidence,
            # before the switching prior spreads mass again (see update_switch).
            self.register_buffer("log_prediction_weights", torch.full((n_classifiers,), -math.log(n_classifiers)))
        self.loss_fn = loss
        self.preclassifier = preclassifier
        self.classifiers = nn.ModuleList(classifier_cls(*args, **kwargs) for _ in range(n_classifiers))
        self.switch = Switch(n_classifiers, theta=theta)
        self.n_classifiers = n_classifiers
        self._forwarded = {}
        self._reset_last()
        self.check_every = 100
        self._updates_since_check = 0
        self.register_buffer("_nonfinite_seen", torch.zeros((), dtype=torch.bool), persistent=False)
        self.register_buffer("_not_log_probs", torch.zeros((), dtype=torch.bool), persistent=False)
        self._outputs_checked = task != "classification"
        self._reset_optimizer_link()

    def _reset_optimizer_link(self):
        # Host-side bookkeeping of the Alrao optimizers built on this model (Python values, no
        # device read): whether one stepped since the last forward, a switch update waiting for
        # that step, and the counts behind the "update_switch() is never called" warning.
        self._optimizers = weakref.WeakSet()
        self._stepped_since_forward = False
        self._pending_losses = None
        self._optimizer_steps = 0
        self._update_switch_calls = 0

    def _reset_last(self):
        self.last_copy_outputs = None  # (N, ...) outputs of the copies on the last batch
        self.last_copy_losses = None  # (N,) their losses, set by loss()
        self._last_finite = None
        self._last_means = None  # regression: the copies' outputs on the mixture's path
        self._last_linear = None  # built-in linear copies (log-softmax): their forward, for the fused NLL
        self._last_mixture = None  # the averaged model's output that forward returned
        self._last_probs = None  # exp of the copies' outputs, if the mixture made it
        self._last_log_post = None  # the (N,) log-posterior the mixture was made with

    # ------------------------------------------------------------------ forward
    def forward(self, *args, **kwargs):
        out = self.preclassifier(*args, **kwargs)
        rest = None
        if isinstance(out, tuple):
            out, rest = out[0], out[1:]
        self._check_finite(out)
        y_mix, y_own, finite, linear = evaluate_copies(list(self.classifiers), out)
        # Plain writes (no read): a compiled forward does not specialise on them.
        self.last_copy_outputs, self._last_finite, self.last_copy_losses = y_own, finite, None
        self._last_linear = linear if linear is not None and linear.head.log_softmax else None
        self._stepped_since_forward, self._pending_losses = False, None
        # The mixture in float32 at least, whatever the copies computed in (autocast, half).
        y_mix = y_mix.to(torch.promote_types(y_mix.dtype, torch.float32))
        if self.task == "regression":
            self._last_means = y_mix
            y = mixture_mean(y_mix, self.log_prediction_weights, finite)
        else:
            if not torch.compiler.is_compiling() and not self._outputs_checked:
                self._check_log_probs(y_own, finite)
            hand_over = self._last_linear is not None  # to the fused NLL (alrao/linear_copies.py)
            y, self._last_probs, self._last_log_post = self._average(y_mix, finite, hand_over)
        self._last_mixture = y
        return (y, *rest) if rest is not None else y

    def _average(self, y: torch.Tensor, finite: torch.Tensor, hand_over: bool = False):
        """``log sum_j posterior_j * exp(y_j)`` over the copies (dim 0), in log space, the posterior
        renormalised over the finite ones: the averaged model's log-probabilities from the copies'
        (classification), or its log-likelihoods from the copies' (regression); if ``hand_over``,
        ``exp(y)`` where it was made (see ``alrao/mixture.py``), else None; and the ``(N,)``
        log-posterior used."""
        shape = (self.n_classifiers,) + (1,) * (y.dim() - 1)
        # (a copy: the switch's update writes into its buffer, and the fused NLL's backward reads this)
        log_post = self.switch.log_posterior.to(y.dtype, copy=True)
        if known_all(finite):  # the switch's posterior as it is (normalised by its update)
            return *LogMixture.apply(y, log_post.reshape(shape), None, hand_over), log_post
        neg_inf = torch.full((), -math.inf, dtype=y.dtype, device=y.device)
        log_post = torch.where(finite, log_post, neg_inf)
        log_post = log_post - torch.logsumexp(log_post, dim=0)
        return *LogMixture.apply(y, log_post.reshape(shape), finite.reshape(shape), hand_over), log_post

    def _check_finite(self, out: torch.Tensor) -> None:
        out = out.detach()
        if on_accelerator_path(out.device):
            self._nonfinite_seen |= ~torch.isfinite(out).all()
        # A finite sum proves every element finite in one read (the elementwise test is several
        # passes over the pre-classifier output); a non-finite one may be an overflow of huge
        # finite values, so the elementwise test decides.
        elif not math.isfinite(out.sum().item()) and not torch.isfinite(out).all():
            self._raise_nonfinite()

    def _check_log_probs(self, y: torch.Tensor, finite: torch.Tensor) -> None:
        """First forward of a classifier: each finite copy's output must be log-probabilities,
        normalised along the class dimension (dim 1 of a copy's output, as ``nn.NLLLoss`` reads
        it, or its last dimension)."""
        self._outputs_checked = True
        if y.dim() < 3:
            return
        y = y.detach().float()
        keep = finite.view(-1, *(1,) * (y.dim() - 2))
        bad = None
        for dim in {1, y.dim() - 1}:
            off = torch.where(keep, torch.logsumexp(y, dim=dim).abs(), 0.0).amax() > LOG_PROB_TOLERANCE
            bad = off if bad is None else bad & off
        if on_accelerator_path(y.device):
            self._not_log_probs |= bad
        elif bad:
            self._raise_not_log_probs()

    def _raise_nonfinite(self):
        raise FloatingPointError(
            "AlraoModel: the pre-classifier output contains NaN or inf; the shared network has "
            "diverged (feature learning rates too large?): lower max_lr"
        )

    @staticmethod
    def _raise_not_log_probs():
        raise ValueError(
            "AlraoModel(task='classification'): the classifier copies' outputs are not "
            "log-probabilities (exp does not sum to 1 over the classes); end the classifier "
            "with log_softmax and use nn.NLLLoss (not logits with nn.CrossEntropyLoss)"
        )

    def check(self) -> None:
        """Raise the errors that the accelerator path deferred (a diverged pre-classifier:
        ``FloatingPointError``; copies' outputs that are not log-probabilities: ``ValueError``),
        and clear them. Reads a device flag (one host synchronisation): called by
        :meth:`update_switch` every ``check_every`` updates; call it after an evaluation
        to score a diverged network the same way on every device."""
        if not (self._nonfinite_seen | self._not_log_probs):
            return
        not_log_probs = bool(self._not_log_probs)
        self._nonfinite_seen.zero_()
        self._not_log_probs.zero_()
        if not_log_probs:
            self._raise_not_log_probs()
        self._raise_nonfinite()

    def _replicate_for_data_parallel(self):
        # nn.DataParallel runs forward on replicas that it then discards, with the copies'
        # outputs that model.loss() and update_switch() need (one device needs no replica).
        raise TypeError(
            "AlraoModel cannot be replicated by nn.DataParallel over several GPUs (the copies' "
            "outputs would stay on discarded replicas): use torch.nn.parallel."
            "DistributedDataParallel with one process per GPU (torchrun), see the README"
        )

    def __getstate__(self):
        # The last batch's outputs hold an autograd graph, which cannot be
        # copied or pickled; a copy of the model starts without them.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state.update(last_copy_outputs=None, last_copy_losses=None, _last_finite=None, _last_means=None)
        state.update(_last_linear=None, _last_mixture=None, _last_probs=None, _last_log_post=None)
        # Nor is it linked to the original's optimizers (a WeakSet cannot be pickled either).
        state.update(_optimizers=weakref.WeakSet(), _stepped_since_forward=False, _pending_losses=None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_optimizers" not in self.__dict__:  # pickled before the optimizer link existed
            self._reset_optimizer_link()

    # --------------------------------------------------------------------- loss
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of the averaged model on this batch (the value to report).

        Its backward pass trains the pre-classifier through the averaged model
        and each copy on its own loss. Also records the per-copy losses in
        ``last_copy_losses`` for :meth:`update_switch`.
        """
        if self.last_copy_outputs is None:
            raise RuntimeError("AlraoModel.loss: call the model's forward on this batch first")
        if self.task == "regression":
            mixed, own = self._regression_losses(target)
        elif self._fused_nll(output, target):
            lin = self._last_linear
            # exp(y), which the fused backward writes into: given to the first loss on this output only
            probs, log_post, self._last_probs = self._last_probs, self._last_log_post, None
            loss, own = linear_copies_nll(*lin, output, probs, log_post, target, self.loss_fn.ignore_index)
            self.last_copy_losses = own
            return loss
        else:
            mixed = self.loss_fn(output, target)
            outputs = self.last_copy_outputs
            own = self._copy_losses(outputs.to(torch.promote_types(outputs.dtype, torch.float32)), target)
        if mixed.dim() != 0 or own.dim() != 1:
            raise ValueError("AlraoModel: the loss must reduce to a scalar (use reduction='mean')")
        self.last_copy_losses = own.detach()
        ok = self._last_finite & torch.isfinite(own)
        own = torch.where(ok, own, torch.zeros((), dtype=own.dtype, device=own.device)).sum()
        # Adds the copies' own losses to the graph without changing the value.
        return mixed + (own - own.detach())

    def _regression_losses(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mixture NLL, (N,) copies' NLLs)`` of the last forward's copies on ``target``, in nats
        per example (summed over the output dimensions, averaged over the rest).

        The mixture reads the copies' outputs on the pre-classifier's path and trains the
        pre-classifier (and a learned variance); each copy's own NLL reads them on the copies'
        path, with the variance held fixed, and trains that copy."""
        means, n = self._last_means, self.n_classifiers
        if target.shape != means.shape[1:]:
            raise ValueError(
                f"AlraoModel.loss: the regression target has shape {tuple(target.shape)}, the prediction "
                f"{tuple(means.shape[1:])}: they must be equal"
            )
        target = target.to(means.dtype)
        finite = self._last_finite
        mixed = -self._average(copy_log_likelihoods(self.loss_fn, means, target, finite), finite)[0].mean()
        outputs = self.last_copy_outputs.to(means.dtype)  # float32 at least, as the mixture (autocast)
        own = copy_log_likelihoods(self.loss_fn, outputs, target, finite, detach_variance=True)
        return mixed, -own.reshape(n, -1).mean(dim=1)

    def _plain_nll(self) -> bool:
        """Whether the loss is ``nn.NLLLoss`` with no class weights, averaged: the losses can
        then be read off each copy's log-probability of the target."""
        fn = self.loss_fn
        return type(fn) is nn.NLLLoss and fn.weight is None and fn.reduction == "mean"

    def _fused_nll(self, output: torch.Tensor, target: torch.Tensor) -> bool:
        """Whether :meth:`loss` takes the fused NLL of the built-in linear copies
        (``alrao/linear_copies.py``): a plain NLL of the very output the last training
        forward returned. Any other output (a copy, a slice) goes through ``loss_fn``."""
        lin = self._last_linear
        return (
            lin is not None
            and output is self._last_mixture
            and torch.is_grad_enabled()
            and self._plain_nll()
            and output.dim() == 2
            and target.shape == output.shape[:1]
        )

    def _copy_losses(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each copy's loss, shape ``(N,)``: one ``nll_loss`` for a plain ``nn.NLLLoss``
        (the common case), else one loss call per copy."""
        fn = self.loss_fn
        if self._plain_nll() and outputs.dim() == 3 and target.dim() == 1:
            if target.shape[0] != outputs.shape[1]:
                raise ValueError(
                    f"AlraoModel.loss: {target.shape[0]} targets for the {outputs.shape[1]} outputs of the last "
                    "forward: the copies' losses are taken on its whole batch (pass its output and targets)"
                )
            return copy_nlls(outputs, target, fn.ignore_index).sum(dim=1) / (target != fn.ignore_index).sum()
        return torch.stack([fn(y, target) for y in outputs.unbind(0)])

    def update_switch(self, process_group=None) -> None:
        """Update the switch posterior with the per-copy losses of the last :meth:`loss` call.

        Under ``torch.distributed`` the losses are first averaged over the ranks of
        ``process_group`` (default: the world), at this call on every rank, so every rank holds
        the same posterior: the single-process posterior of the global batch (see
        ``alrao/distributed.py``).
        With an Alrao optimizer built on this model, the update needs an optimizer step on this
        batch: after a step skipped by a ``GradScaler`` (inf/nan gradients) the batch's losses
        are dropped and the switch is left untouched; called before ``optimizer.step()``, the
        update is made by that step. Without one, the update is made at once.
        Every ``check_every`` calls, :meth:`check` reads the deferred checks' flags.
        """
        losses = self.last_copy_losses
        if losses is None:
            raise RuntimeError("AlraoModel.update_switch: call model.loss(output, target) on this batch first")
        losses = average_copy_losses(losses, process_group)
        # Host-side values, written to __dict__ directly: nn.Module.__setattr__ is a Python call
        # per write (looking for a parameter, buffer or module of the name), ~1 us each in a step.
        state = self.__dict__
        state["last_copy_losses"] = None
        state["_update_switch_calls"] += 1
        if len(self._optimizers) == 0 or self._stepped_since_forward:
            self._update_switch_now(losses)
        else:
            state["_pending_losses"] = losses  # made by the next optimizer step, dropped by the next forward
        state["_updates_since_check"] += 1
        if self._updates_since_check >= self.check_every:
            state["_updates_since_check"] = 0
            self.check()

    def _update_switch_now(self, losses: torch.Tensor) -> None:
        if self.task == "regression":
            self._update_prediction_weights(losses)
        self._modules["switch"].update(losses)  # self.switch: nn.Module.__getattr__, a Python call

    def _attach_optimizer(self, optimizer) -> None:
        """Called by an Alrao optimizer built on this model: it reports its steps."""
        self._optimizers.add(optimizer)

    def _optimizer_stepped(self) -> None:
        """Called by an attached optimizer after each step it takes (none when a GradScaler skips it)."""
        state = self.__dict__  # host-side values: plain writes, as in update_switch
        state["_stepped_since_forward"] = True
        state["_optimizer_steps"] += 1
        losses = self._pending_losses
        if losses is not None:
            state["_pending_losses"] = None
            self._update_switch_now(losses)
        if self._update_switch_calls == 0 and self._optimizer_steps == STEPS_BEFORE_NO_SWITCH_WARNING:
            warnings.warn(
                f"AlraoModel: {self._optimizer_steps} optimizer steps and model.update_switch() never "
                "called: the switch posterior stays uniform. Call model.update_switch() after each "
                "optimizer.step()",
                stacklevel=3,
            )

    @torch.no_grad()
    def _update_prediction_weights(self, losses: torch.Tensor) -> None:
        """The regression prediction's weights: the switch posterior times each copy's likelihood
        on this batch, before the switch's prior moves some mass to every copy again (about
        ``1 / (t N)`` each). A copy whose loss is huge keeps that prior mass in the switch
        posterior, which the mixture's likelihood shrugs off but a mean of huge outputs would not:
        here its weight is exactly zero until its losses are good again."""
        losses = losses.detach().to(self.switch.logw.dtype)
        finite = torch.isfinite(losses)
        losses = torch.where(finite, losses, torch.full_like(losses, math.inf))
        losses = losses - losses.min()  # invariant shift: keeps float32 exact for huge losses
        log_w = torch.logsumexp(self.switch.logw - losses, dim=0)
        log_w = log_w - torch.logsumexp(log_w, dim=0)
        self.log_prediction_weights.copy_(torch.where(finite.any(), log_w, self.log_prediction_weights))

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
