"""The copies of a built-in linear classifier (``alrao.layers``), evaluated as one layer, and
their negative log-likelihoods with a fused backward.

Layout: the ``N`` copies of a ``Linear(d, K)`` are one ``Linear(d, N x K)`` (one matrix
product), whose output ``(T, N x K)`` is viewed as ``(T, N, K)``, copy-minor. Every pass over
the copies' outputs (the largest tensors of a step: a word-level decoder's are copies x tokens x
vocabulary) runs on that layout, and the backward's products are the plain layer's two, one
matrix product each. The model sees the outputs as ``(N, T, K)`` (a transposed view).

Two autograd functions read the same forward (:func:`linear_forward`):

- :class:`_LinearCopies` is the general one: its two outputs (the same values) route a
  gradient arriving through the first (the averaged model) to ``z``, one arriving through the
  second (the copies' own losses) to the copies' parameters (paper, section 3.2);
- :class:`_LinearCopiesNLL` is the same routing for the case of every classification step with
  ``nn.NLLLoss``: the averaged model's NLL and each copy's, from their log-probabilities of the
  targets only. Its backward knows the gradients' structure: through a log-softmax, copy ``j``'s
  own NLL sends ``softmax_j - onehot(target)`` (per token, divided by the token count), and the
  averaged model's NLL sends that same tensor times ``w[t, j]``, copy ``j``'s share of the
  averaged probability of the target at token ``t``. So one tensor, ``exp(y) - onehot``, made in
  one pass, feeds both products; the general path's mixture backward, its two log-softmax
  backwards and the gathers' scatters are never made.

A copy whose output is not finite (too large a learning rate) sends no gradient anywhere.
"""

from typing import NamedTuple

import torch

from .device_path import known_all


class LinearHead(NamedTuple):
    """What the copies' evaluation needs to know of a built-in classifier layer."""

    linear: str  # the attribute holding its nn.Linear
    log_softmax: bool  # whether a log-softmax follows the linear layer
    flatten: bool  # whether its input (seq, batch, d) is flattened to (seq * batch, d)


class LinearForward(NamedTuple):
    """The copies' forward, as both autograd functions read it."""

    y: torch.Tensor  # (T, N, K) outputs (log-probabilities after a log-softmax), float32 at least
    finite: torch.Tensor  # (N,) whether each copy's outputs are all finite
    weight: torch.Tensor  # (N, K, d) stacked weights in the product's dtype; their input is layer_input(z)


def linear_forward(z, weights, biases, head: LinearHead, low) -> LinearForward:
    """All copies at once (no autograd graph: the functions below add it).

    ``low``: under ``torch.autocast``, its dtype: the matrix product runs in it and the
    outputs (log-softmax included) come out in float32, the copies' parameters keeping their
    own dtype. ``None``: the tensors' own dtypes.

    A copy counts as finite when the sum of its outputs is: one reduction instead of an
    elementwise test (a NaN or inf anywhere makes the sum non-finite; so do finite outputs
    large enough to overflow it, which only a diverged copy produces)."""
    with torch.no_grad():
        x = layer_input(z, head, low)
        n, k = len(weights), weights[0].shape[0]
        weight, bias = torch.stack(weights), torch.stack(biases)  # (N, K, d), (N, K)
        if low is not None:
            weight, bias = weight.to(low), bias.to(low)
        a = torch.addmm(bias.view(n * k), x, weight.view(n * k, -1).t()).view(-1, n, k)
        if low is not None:
            a = a.float()
        y = torch.log_softmax(a, dim=-1) if head.log_softmax else a
        finite = torch.isfinite(y.view(-1, n * k).sum(dim=0).view(n, k).sum(dim=1))
    return LinearForward(y, finite, weight)


def layer_input(z: torch.Tensor, head: LinearHead, low) -> torch.Tensor:
    """The copies' input ``(T, d)`` as multiplied (in ``low``, the autocast dtype, if not None)."""
    x = z.reshape(-1, z.shape[-1]) if head.flatten else z
    return x if low is None else x.to(low)


def by_copy(t: torch.Tensor) -> torch.Tensor:
    """``(T, N, ...)`` viewed as ``(N, T, ...)``, the model's order."""
    return t.transpose(0, 1)


def _masks(finite: torch.Tensor):
    """``(masked, keep)``: whether diverged copies must be masked (not known all finite), and
    the ``(1, N, 1)`` mask of the copies kept."""
    return not known_all(finite), finite.view(1, -1, 1)


def _zero(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=t.dtype, device=t.device)


def _products(pre, mix_scale, weight, keep, masked, ctx):
    """``grad_z`` from the pre-activation gradient ``pre`` ``(T, N, K)``, each copy's rows
    scaled by ``mix_scale`` ``(T, N)`` (None: 1): ``sum_j (mix_scale[:, j] * pre[:, j]) @ W_j``.

    The scale is applied where it is cheaper: on ``pre`` when a copy's output is at most as wide
    as its input (K <= d), else on the ``(N, T, d)`` products (a word-level decoder, K >> d)."""
    t, n, k = pre.shape
    # A diverged copy's weights may hold NaN or inf: 0 * NaN would leak into z.
    weight = torch.where(keep.view(n, 1, 1), weight, _zero(weight)) if masked else weight
    if mix_scale is None or k <= weight.shape[-1]:
        if mix_scale is not None:
            pre = pre * mix_scale.unsqueeze(2)
        # (under autocast the products run in the forward's low dtype, like autocast's own backward)
        grad = pre.reshape(t, n * k).to(weight.dtype) @ weight.view(n * k, -1)
    else:
        per_copy = torch.bmm(by_copy(pre).to(weight.dtype), weight)  # (N, T, d)
        grad = (per_copy.to(mix_scale.dtype) * by_copy(mix_scale).unsqueeze(2)).sum(dim=0)
    return grad.reshape(ctx.z_shape).to(ctx.z_dtype)


def _param_grads(pre, x, row_scale, copy_scale, param_dtype, needs):
    """The copies' ``[grad W_1, grad b_1, ...]`` from the pre-activation gradient ``pre``
    ``(T, N, K)`` and their input ``x`` ``(T, d)``, ``pre``'s rows scaled by ``row_scale`` ``(T,)``
    and each copy's by ``copy_scale`` ``(N,)`` (None: 1): two products, as a plain layer's."""
    t, n, k = pre.shape
    flat = pre.reshape(t, n * k)
    # (scaled in float32, then rounded to the product's dtype once, as autocast rounds its operands)
    x = x if row_scale is None else (x * row_scale.unsqueeze(1)).to(x.dtype)
    grad_weight = (flat.t().to(x.dtype) @ x).view(n, k, -1).to(param_dtype)  # (N, K, d)
    with torch.autocast(flat.device.type, enabled=False):  # (a backward run inside autocast)
        grad_bias = (flat.sum(dim=0) if row_scale is None else row_scale.to(flat.dtype) @ flat).view(n, k)
    grad_bias = grad_bias.to(param_dtype)
    # (skipped when known to be ones, on the host path: each copy's loss weighs 1 in a plain backward)
    if copy_scale is not None and not known_all(copy_scale == 1):
        grad_weight = grad_weight * copy_scale.view(n, 1, 1).to(param_dtype)
        grad_bias = grad_bias * copy_scale.view(n, 1).to(param_dtype)
    grads = [g for pair in zip(grad_weight.unbind(0), grad_bias.unbind(0)) for g in pair]
    return [g if need else None for g, need in zip(grads, needs)]


# torch 2.11 (older releases untried, so treated alike): the backward that inductor compiles
# fails ("TypeError: expected Tensor()") when it gets no gradient for a graph output that is a
# view of a tensor made in the graph. The copies' own outputs are such a view, and get no
# gradient when the fused NLL trains the copies (it reads ``y``, not them). Under torch.compile
# those versions get them as a copy instead (one more write of the outputs); torch 2.12, 2.13
# and 2.14 compile the view.
_OWN_OUTPUTS_COPIED_WHEN_COMPILED = torch.__version__ < "2.12"


class _LinearCopies(torch.autograd.Function):
    """``(y_mix, y_own)``: the copies' outputs ``(N, T, K)`` twice; a gradient through
    ``y_mix`` goes to ``z``, one through ``y_own`` to the copies' parameters."""

    @staticmethod
    def forward(ctx, head, low, y, finite, weight, z, *params):
        ctx.set_materialize_grads(False)
        # (x is made again from z here: a Function traced by torch.compile takes no tensor twice)
        ctx.save_for_backward(y, finite, layer_input(z.detach(), head, low), weight)
        ctx.head, ctx.z_shape, ctx.z_dtype, ctx.param_dtype = head, z.shape, z.dtype, params[0].dtype
        own = by_copy(y.detach())
        if _OWN_OUTPUTS_COPIED_WHEN_COMPILED and torch.compiler.is_compiling():
            own = own.clone()
        return by_copy(y), own

    @staticmethod
    def backward(ctx, grad_mix, grad_own):
        y, finite, x, weight = ctx.saved_tensors
        masked, keep = _masks(finite)

        def pre_activation(grad):
            # through the log-softmax, grad - exp(y) * sum(grad), by torch's fused kernel; then
            # zero for diverged copies (NaN from their y)
            grad = by_copy(grad).contiguous()
            if ctx.head.log_softmax:
                grad = torch._log_softmax_backward_data(grad, y, -1, y.dtype)
            return torch.where(keep, grad, _zero(grad)) if masked else grad

        grad_z = None
        if grad_mix is not None and ctx.needs_input_grad[5]:
            grad_z = _products(pre_activation(grad_mix), None, weight, keep, masked, ctx)
        grads = [None] * (len(ctx.needs_input_grad) - 6)
        if grad_own is not None:
            grads = _param_grads(pre_activation(grad_own), x, None, None, ctx.param_dtype, ctx.needs_input_grad[6:])
        return (None,) * 5 + (grad_z, *grads)


def linear_copies(head: LinearHead, low, fwd: LinearForward, z, params):
    """``(y_mix, y_own)`` of :class:`_LinearCopies` (``low``: as in :func:`linear_forward`)."""
    return _LinearCopies.apply(head, low, fwd.y, fwd.finite, fwd.weight, z, *params)


class _LinearCopiesNLL(torch.autograd.Function):
    """``(loss, own)``: the averaged model's NLL (from its log-probabilities ``mixture``
    ``(T, K)``) and the copies' ``(N,)`` (not differentiable), over the tokens whose target is
    not ``ignore_index``. The backward of ``loss`` is the paper's two gradients (as
    ``AlraoModel.loss``'s general path sends them): the averaged model's NLL to ``z``, and each
    copy's own NLL (with the same weight, zero if not finite) to its parameters (see the module's
    docstring). ``log_post``: ``(N,)``, the log-posterior the mixture was made with."""

    @staticmethod
    def forward(ctx, head, low, ignore_index, mixture, probs, log_post, target, y, finite, weight, z, *params):
        ctx.set_materialize_grads(False)
        dtype = torch.promote_types(y.dtype, torch.float32)  # the losses: float32 at least
        valid = target != ignore_index
        row_scale = valid.to(dtype) / valid.sum()  # (T,) each token's weight in the mean over valid ones
        # -log p(target) of each copy (T, N) and of the averaged model (T,), 0 at ignored tokens
        neg_picked = copy_nlls(by_copy(y), target, ignore_index).t().to(dtype)
        neg_mixed = torch.nn.functional.nll_loss(mixture, target, ignore_index=ignore_index, reduction="none")
        with torch.autocast(y.device.type, enabled=False):  # the losses in float32 at least
            own, mixed = row_scale @ neg_picked, row_scale @ neg_mixed.to(dtype)
        # a copy whose loss is not finite trains on nothing (as in AlraoModel.loss's general path)
        trained = finite & torch.isfinite(own)
        index = torch.where(valid, target, 0)  # (the backward's one-hot: any class at ignored tokens)
        ctx.save_for_backward(y, finite, weight, index, row_scale, neg_picked, neg_mixed, log_post, trained)
        ctx.x = layer_input(z.detach(), head, low)  # (not saved: z itself may be the input)
        ctx.probs = probs  # taken over by the first backward (not saved: it writes into it)
        ctx.z_shape, ctx.z_dtype, ctx.param_dtype = z.shape, z.dtype, params[0].dtype
        ctx.mark_non_differentiable(own)
        return mixed, own

    @staticmethod
    def backward(ctx, grad_mixed, _):
        y, finite, weight, index, row_scale, neg_picked, neg_mixed, log_post, trained = ctx.saved_tensors
        x, probs = ctx.x, ctx.probs
        ctx.probs = None  # a second backward (retain_graph=True) makes exp(y) again
        masked, keep = _masks(finite)
        t, n, _ = y.shape
        # exp(y) - onehot(target): the gradient of each copy's NLL at its pre-activation, written
        # into the mixture's exp(y) if it made one (on a CPU an exponential costs more than a pass
        # over memory, and a new tensor of this size more than reusing one)
        pre = torch.exp(y) if probs is None else by_copy(probs)
        minus_one = torch.full((), -1.0, dtype=pre.dtype, device=pre.device)
        pre.scatter_add_(2, index.view(t, 1, 1).expand(t, n, 1), minus_one.expand(t, n, 1))
        if masked:
            pre.masked_fill_(~keep, 0.0)
        grad_z = None
        if grad_mixed is not None and ctx.needs_input_grad[10]:
            # copy j's share of the averaged probability of the target at token t, (T, N)
            dtype = neg_picked.dtype
            log_share = (neg_mixed.to(dtype).unsqueeze(1) - neg_picked).add_(log_post.to(dtype))
            if masked:
                log_share = log_share.masked_fill(~keep.view(1, n), -torch.inf)
            share = log_share.exp_()
            if masked:  # a token where every copy is left out: no gradient (not NaN)
                share = share.nan_to_num_(0.0)
            grad_z = _products(pre, share.mul_((row_scale * grad_mixed).unsqueeze(1)), weight, keep, masked, ctx)
        grads = [None] * (len(ctx.needs_input_grad) - 11)
        if grad_mixed is not None:  # each copy's own loss weighs as the returned loss
            copy_scale = torch.where(trained, grad_mixed, _zero(grad_mixed))
            grads = _param_grads(pre, x, row_scale, copy_scale, ctx.param_dtype, ctx.needs_input_grad[11:])
        return (None,) * 10 + (grad_z, *grads)


def copy_nlls(log_probs: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``(N, T)``: each copy's ``-log p_j(target_t)`` from its log-probabilities ``(N, T, K)``, 0 where
    the target is ``ignore_index``, by one ``nll_loss``. Read in the tensor's memory order, copy-minor
    (the built-in layers' ``(T, N, K)``) or copy-major, without copying it."""
    n, t, k = log_probs.shape
    nll = torch.nn.functional.nll_loss
    if log_probs.transpose(0, 1).is_contiguous():  # copy-minor memory
        rows = nll(
            log_probs.transpose(0, 1).reshape(t * n, k),
            target.repeat_interleave(n),
            reduction="none",
            ignore_index=ignore_index,
        )
        return by_copy(rows.view(t, n))
    rows = nll(log_probs.reshape(n * t, k), target.repeat(n), reduction="none", ignore_index=ignore_index)
    return rows.view(n, t)


def linear_copies_nll(head, low, fwd: LinearForward, z, params, mixture, probs, log_post, target, ignore_index):
    """``(loss, own)`` of :class:`_LinearCopiesNLL` (``head``, ``low``, ``fwd``, ``z``, ``params``:
    as for :func:`linear_copies`; ``probs``: ``exp(y)`` if the mixture made it, or None)."""
    return _LinearCopiesNLL.apply(
        head, low, ignore_index, mixture.detach(), probs, log_post, target, fwd.y, fwd.finite, fwd.weight, z, *params
    )
