"""The averaged model's log-probabilities (or log-likelihoods) from the copies', in log space:
``log sum_j posterior_j * exp(y_j)`` over the copies (paper, section 3.2: the switch average).

The copies' outputs are the largest tensors of a step (a word-level decoder: copies x tokens x
vocabulary), and on a CPU an exponential costs more than a pass over memory. So on the host path,
with every copy finite, the mixture is one exponential, ``p = exp(y)`` (no log-sum-exp shift:
kept when no sum underflows nor overflows, else the shifted form), and one weighted sum over the
copies; ``p`` is then handed on, for the backward and for the fused NLL of the built-in linear
copies (``alrao/linear_copies.py``), whose gradient starts from each copy's ``exp(y)``.
"""

import math

import torch

# Below this many classes, N fused multiply-adds sum over the copies faster than one batched
# matrix product of (1, N) by (N, K) per token on a CPU (measured with torch 2.14, one thread:
# 1,400 tokens x 6 copies, K=50: 0.14 ms against 0.71 ms; K=200: equal; K=10,000: 12 against 9 ms).
_MATMUL_FROM_CLASSES = 200


def _weighted_sum(p: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_j weight[j] * p[j]`` over dim 0 of ``p`` ``(N, ...)``, reading ``p`` once."""
    n, weight = p.shape[0], weight.to(p.dtype)
    with torch.autocast(p.device.type, enabled=False):  # in p's dtype (float32), not autocast's
        if p.dim() == 3 and p.transpose(0, 1).is_contiguous():  # copy-minor (T, N, K) memory: batched product
            if p.shape[-1] >= _MATMUL_FROM_CLASSES or p.device.type != "cpu":
                return torch.matmul(weight, p.transpose(0, 1))
        elif p.is_contiguous():  # copy-major (N, ...): one matrix-vector product
            return torch.matmul(weight, p.reshape(n, -1)).reshape(p.shape[1:])
    ps, weights = p.unbind(0), weight.unbind(0)
    total = ps[0] * weights[0]
    for p_j, w_j in zip(ps[1:], weights[1:]):
        total.addcmul_(p_j, w_j)
    return total


class LogMixture(torch.autograd.Function):
    """``(out, p)``: ``out = logsumexp_j(y_j + log_post_j)`` over the copies (dim 0), the
    diverged ones (``finite`` false) left out, and, if ``hand_over``, ``p = exp(y)`` where it was
    made (the host path's unshifted form; else None), not differentiable.

    ``hand_over``: the copies' loss has a fused backward that starts from ``exp(y)`` (the built-in
    linear copies, ``alrao/linear_copies.py``): ``p`` is handed over to it, which writes into it,
    and a gradient through ``out`` itself (then the rare case) makes ``exp(y)`` again. Otherwise
    ``p`` is kept for this function's backward.

    ``finite``: ``(N, 1, ...)`` mask of the copies kept, or None when every copy is known to be
    finite (:func:`alrao.device_path.known_all`). ``log_post``: ``(N, 1, ...)`` log-posterior,
    normalised over the finite copies. The gradient with respect to ``y_j`` is the incoming
    gradient times copy ``j``'s share of the averaged probability, ``post_j exp(y_j) / exp(out)``.
    """

    @staticmethod
    def forward(ctx, y, log_post, finite, hand_over=False):
        ctx.set_materialize_grads(False)
        masked = finite is not None
        if not masked:
            # Host path, every copy in: first without the log-sum-exp's shift, kept when no sum
            # overflowed nor came within 1 / eps of underflow (float32: 2**-103, log -71.4). A
            # term that underflowed is off by at most tiny * eps (2**-149, the subnormals'
            # spacing), so by N * eps**2 relative to its sum, far below rounding (eps).
            p = torch.exp(y)
            post = log_post.reshape(-1).exp()
            total = _weighted_sum(p, post)
            low, high = torch.aminmax(total)
            info = torch.finfo(total.dtype)
            if low.item() >= info.tiny / info.eps and high.item() < math.inf:
                ctx.save_for_backward(y if hand_over else p, post, total)
                ctx.made_again = hand_over
                if not hand_over:
                    return total.log(), None
                ctx.mark_non_differentiable(p)
                return total.log(), p
        weight = y + log_post
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
        ctx.save_for_backward(weight, None, None)
        return out, None

    @staticmethod
    def backward(ctx, grad, _):
        if grad is None:
            return None, None, None, None
        kept, post, total = ctx.saved_tensors
        if post is None:  # the shifted form kept the normalised shares
            return kept * grad, None, None, None
        shape = (-1,) + (1,) * (kept.dim() - 1)
        weight = torch.exp(kept) if ctx.made_again else kept  # kept: y, or exp(y)
        return torch.mul(weight, grad / total).mul_(post.view(shape)), None, None, None
