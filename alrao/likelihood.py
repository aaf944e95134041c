"""Regression as a mixture of Gaussians (paper, section 3: the model's output is "the average of
the copies' predicted distributions"; the authors' code: a Gaussian likelihood per copy).

Copy ``j`` predicts the mean ``mu_j`` of a Gaussian ``N(mu_j, variance)`` over the targets. Its
own loss, which trains it and which the switch scores, is its negative log-likelihood; the averaged
model is the posterior-weighted mixture ``sum_j pi_j N(mu_j, variance)``, whose negative
log-likelihood trains the pre-classifier. Both are computed in log space, so a copy whose outputs
diverged to huge (finite) values has a mixture weight of exactly zero: it sends no gradient to the
pre-classifier, and no NaN either.
"""

import math

import torch
from torch import nn

from .lr_sampling import register_feature_rule


class GaussianNLL(nn.Module):
    """Negative log-likelihood of targets under ``N(prediction, variance)``, in nats per example,
    summed over the output dimensions (the last one) and averaged over the others.

    The loss of ``alrao.AlraoModel('regression', ...)``; usable on its own as the loss of a plain
    regression network.

    Args:
        variance: the Gaussian's variance (not its standard deviation), a number or one per
            output dimension (a sequence broadcasting against the last dimension). Default 1: the
            loss is then half the squared error plus ``0.5 * log(2 pi)`` per output dimension.
        learn_variance: learn it: ``log_variance`` becomes a parameter (initialised at
            ``log(variance)``). In an :class:`alrao.AlraoModel` it is trained, like the
            pre-classifier, by the mixture's loss, and the Alrao optimizers give each of its
            elements a random rate as they do to a feature.
    """

    def __init__(self, variance=1.0, learn_variance: bool = False):
        super().__init__()
        variance = torch.as_tensor(variance, dtype=torch.get_default_dtype())
        if variance.dim() > 1 or not (torch.isfinite(variance).all() and (variance > 0).all()):
            raise ValueError(
                f"GaussianNLL: variance must be a finite number > 0 or a 1-d sequence of them, got {variance.tolist()}"
            )
        if learn_variance:
            self.log_variance = nn.Parameter(variance.log())
        else:
            self.register_buffer("log_variance", variance.log())
        self.learn_variance = learn_variance

    @property
    def variance(self) -> torch.Tensor:
        return self.log_variance.exp()

    def log_likelihood(self, mean: torch.Tensor, target: torch.Tensor, detach_variance: bool = False) -> torch.Tensor:
        """``log N(target; mean, variance)`` summed over the last dimension, in nats; ``mean`` may
        have leading dimensions (the copies) that ``target`` lacks."""
        log_var = self.log_variance.detach() if detach_variance else self.log_variance
        log_var = log_var.to(mean.dtype)
        squared = (target - mean).square() * torch.exp(-log_var)
        return -0.5 * (squared + log_var + math.log(2 * math.pi)).sum(dim=-1)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -self.log_likelihood(prediction, target).mean()

    def extra_repr(self) -> str:
        return f"variance={self.variance.tolist()}, learn_variance={self.learn_variance}"


# A learned variance is a feature of its own: one random rate per output dimension.
register_feature_rule(
    GaussianNLL,
    lambda module, draw: {"log_variance": draw(max(module.log_variance.numel(), 1)).reshape(module.log_variance.shape)},
)


def copy_log_likelihoods(
    likelihood: GaussianNLL, means: torch.Tensor, target: torch.Tensor, finite: torch.Tensor, **kw
):
    """``(N, ...)`` log-likelihood of each example under each copy; a copy left out (``finite``
    false: NaN or inf outputs) gets ``-inf`` without a NaN in its gradient. An overflow of the
    squared error (a copy diverged to huge outputs) is floored at the dtype's lowest value, with a
    zero gradient."""
    keep = finite.view(-1, *(1,) * (means.dim() - 1))
    zero = torch.zeros((), dtype=means.dtype, device=means.device)
    ll = likelihood.log_likelihood(torch.where(keep, means, zero), target, **kw)
    ll = ll.clamp(min=torch.finfo(ll.dtype).min)
    return torch.where(
        keep.view(-1, *(1,) * (ll.dim() - 1)), ll, torch.full((), -math.inf, dtype=ll.dtype, device=ll.device)
    )


def mixture_mean(means: torch.Tensor, log_weights: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """``sum_j w_j mu_j`` over the copies left in (``finite``), the weights renormalised over them;
    a copy whose weight is zero contributes exactly zero, however large its outputs."""
    shape = (-1,) + (1,) * (means.dim() - 1)
    neg_inf = torch.full((), -math.inf, dtype=means.dtype, device=means.device)
    log_w = torch.where(finite, log_weights.to(means.dtype), neg_inf)
    weight = torch.softmax(log_w, dim=0).nan_to_num(0.0).reshape(shape)  # all left out: 0, not NaN
    zero = torch.zeros((), dtype=means.dtype, device=means.device)
    used = (weight > 0) & finite.reshape(shape)
    return torch.where(used, means, zero).mul(weight).sum(0)
