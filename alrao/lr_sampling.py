"""The learning rates Alrao draws (paper, section 3.1): one per feature of the
pre-classifier, and the grid of the classifier copies' rates.

Per-feature learning rates ("Alrao for the pre-classifier"):

Each *feature* of the pre-classifier gets one learning rate, drawn once,
log-uniformly in ``[min_lr, max_lr]``; every incoming parameter of that feature
(its weight row, its bias, ...) uses that rate. What a feature is depends on
the layer type, so each layer type has a *rule*.

A rule is a function ``rule(module, draw) -> {param_name: rate tensor}``. It
covers the module's own (direct) parameters; ``draw(n)`` returns ``n`` fresh
log-uniform rates as a float64 tensor of shape ``(n,)``. Each rate tensor must
broadcast against its parameter: rates are stored compactly (``(out, 1, 1, 1)``
for a conv filter bank) rather than at the parameter's full size.

Custom layers get a rule with :func:`register_feature_rule`.

The classifier copies' rates are not drawn: copy ``j`` gets ``eta_j`` of a
log-spaced grid, :func:`classifier_lr_grid`.

The paper's ablation ("per weight instead of per feature") draws one
rate per *weight* instead: ``granularity='weight'`` gives every element of
every parameter its own rate, at the parameter's full size. It is much worse
when ``max_lr`` is large; it exists to reproduce that comparison.
"""

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

Draw = Callable[[int], torch.Tensor]

#: ``'feature'``: one rate per feature (the paper's Alrao); ``'weight'``: one per weight (its ablation).
GRANULARITIES = ("feature", "weight")
Rule = Callable[[nn.Module, Draw], dict[str, torch.Tensor]]

_RULES: dict[type, Rule] = {}


def register_feature_rule(module_type: type, rule: Rule) -> None:
    """Register ``rule`` for ``module_type`` (and its subclasses without a rule of their own).

    ``rule(module, draw)`` returns ``{name: rates}`` for the module's direct
    parameters; ``rates`` must broadcast against the parameter.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_feature_rule: module_type must be an nn.Module subclass, got {module_type!r}")
    if not callable(rule):
        raise TypeError(f"register_feature_rule: rule must be callable, got {rule!r}")
    _RULES[module_type] = rule


def _rule_for(module: nn.Module):
    for cls in type(module).__mro__:  # the most specific registered class wins
        if cls in _RULES:
            return _RULES[cls]
    return None


def _column(rates: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape ``(n,)`` -> ``(n, 1, ..., 1)`` with ``ndim`` dimensions."""
    return rates.reshape(rates.shape + (1,) * (ndim - 1))


def _per_output_unit(module, draw):
    """Linear and Conv{1,2,3}d: a feature is an output unit / channel (filter + bias)."""
    rates = draw(module.weight.shape[0])
    out = {"weight": _column(rates, module.weight.dim())}
    if module.bias is not None:
        out["bias"] = rates
    return out


def _conv_transpose(module, draw):
    """ConvTranspose: weight is ``(in, out/groups, *k)``; output channel ``g*out_g + j``
    is column ``j`` of the rows of group ``g``."""
    w = module.weight
    in_channels, out_g = w.shape[0], w.shape[1]
    groups = module.groups
    rates = draw(out_g * groups)
    per_row = rates.reshape(groups, 1, out_g).expand(groups, in_channels // groups, out_g)
    out = {"weight": per_row.reshape(in_channels, out_g, *([1] * (w.dim() - 2)))}
    if module.bias is not None:
        out["bias"] = rates
    return out


def _embedding(module, draw):
    """Embedding: a feature is an embedding dimension (the authors' choice)."""
    return {"weight": draw(module.weight.shape[1]).reshape(1, -1)}


def _recurrent(module, draw):
    """RNN/GRU/LSTM: a feature is a hidden unit of one layer and direction.

    All gate rows of that unit (input, forget, cell, output for an LSTM) share
    its rate, in ``weight_ih``, ``weight_hh``, ``bias_ih`` and ``bias_hh``. The
    authors' code drew each gate row independently; the paper does not.
    An LSTM projection (``weight_hr``) has one rate per projected unit.
    """
    n_gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
    out = {}
    for layer in range(module.num_layers):
        for suffix in ("", "_reverse")[: 2 if module.bidirectional else 1]:
            unit = draw(module.hidden_size).repeat(n_gates)
            for kind in ("ih", "hh"):
                out[f"weight_{kind}_l{layer}{suffix}"] = unit.reshape(-1, 1)
                if module.bias:
                    out[f"bias_{kind}_l{layer}{suffix}"] = unit
            if getattr(module, "proj_size", 0) > 0:
                out[f"weight_hr_l{layer}{suffix}"] = draw(module.proj_size).reshape(-1, 1)
    return out


def _per_channel_affine(module, draw):
    """BatchNorm / GroupNorm / InstanceNorm / LayerNorm: scale and shift of one
    channel (one normalised element for LayerNorm) share a rate."""
    param = module.weight if module.weight is not None else module.bias
    if param is None:
        return {}
    rates = draw(param.numel()).reshape(param.shape)
    return {name: rates for name in ("weight", "bias") if getattr(module, name, None) is not None}


for _cls in (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_feature_rule(_cls, _per_output_unit)
for _cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_feature_rule(_cls, _conv_transpose)
register_feature_rule(nn.Embedding, _embedding)
register_feature_rule(nn.RNNBase, _recurrent)
for _cls in (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm):
    register_feature_rule(_cls, _per_channel_affine)


def fallback_lrs(param: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Rates of a parameter no rule covers: one per slice along dim 0
    (the usual "output" axis), one per element for 0-d and 1-d parameters."""
    if param.dim() <= 1:
        return draw(max(param.numel(), 1)).reshape(param.shape)
    return _column(draw(param.shape[0]), param.dim())


def log_uniform_sampler(min_lr: float, max_lr: float, generator: torch.Generator | None = None) -> Draw:
    """``draw(n)``: ``n`` rates, log-uniform in ``[min_lr, max_lr]``, float64, CPU."""
    check_lr_interval(min_lr, max_lr)
    log_min, log_max = math.log(min_lr), math.log(max_lr)

    def draw(n: int) -> torch.Tensor:
        u = torch.rand(n, dtype=torch.float64, generator=generator)
        return torch.exp(log_min + u * (log_max - log_min))

    return draw


def check_lr_interval(min_lr: float, max_lr: float) -> None:
    """Raise ValueError unless ``0 < min_lr <= max_lr < inf``."""
    if not (isinstance(min_lr, (int, float)) and math.isfinite(min_lr) and min_lr > 0):
        raise ValueError(f"min_lr must be a finite learning rate > 0 (not its log10), got {min_lr!r}")
    if not (isinstance(max_lr, (int, float)) and math.isfinite(max_lr) and max_lr >= min_lr):
        raise ValueError(f"max_lr must be a finite learning rate >= min_lr={min_lr!r}, got {max_lr!r}")


def check_granularity(granularity: str) -> None:
    """Raise ValueError unless ``granularity`` is one of :data:`GRANULARITIES`."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def sample_feature_lrs(
    module: nn.Module,
    min_lr: float,
    max_lr: float,
    generator: torch.Generator | None = None,
    granularity: str = "feature",
) -> dict[nn.Parameter, torch.Tensor]:
    """One learning rate per feature of ``module``, log-uniform in ``[min_lr, max_lr]``.

    Args:
        module: the network whose parameters get feature learning rates
            (for Alrao, the pre-classifier).
        min_lr, max_lr: ends of the interval (learning rates, not their log10).
        generator: a CPU ``torch.Generator``; the same seed gives the same rates.
        granularity: ``'feature'`` (the paper's Alrao: the layer rules below) or
            ``'weight'`` (the paper's ablation: one rate per element of every
            parameter, stored at the parameter's full shape; no rule is used and
            nothing is warned about).

    Returns:
        ``{parameter: rates}`` for every parameter of ``module``; ``rates`` has
        the parameter's dtype and device and broadcasts against it. A parameter
        shared by several modules gets one rate tensor (from its first owner).
        Parameters of layer types without a rule get :func:`fallback_lrs`, with
        one warning naming them.
    """
    check_granularity(granularity)
    draw = log_uniform_sampler(min_lr, max_lr, generator)
    lrs: dict[nn.Parameter, torch.Tensor] = {}
    uncovered = []
    if granularity == "weight":
        for param in module.parameters():  # each shared parameter once
            rate = draw(param.numel()).reshape(param.shape)
            lrs[param] = rate.to(device=param.device, dtype=param.dtype if param.is_floating_point() else None)
        return lrs
    for mod_name, mod in module.named_modules():
        own = dict(mod.named_parameters(recurse=False))
        if not own:
            continue
        rule = _rule_for(mod)
        rates = rule(mod, draw) if rule is not None else {}
        for name, param in own.items():
            if param in lrs:
                continue
            if name in rates:
                rate = rates[name]
            else:
                rate = fallback_lrs(param, draw)
                uncovered.append(f"{mod_name}.{name}" if mod_name else name)
            rate = torch.as_tensor(rate)
            try:
                torch.broadcast_shapes(rate.shape, param.shape)
            except RuntimeError:
                raise ValueError(
                    f"the feature rule for {type(mod).__name__} gave rates of shape "
                    f"{tuple(rate.shape)} for {name!r} of shape {tuple(param.shape)}; "
                    "they must broadcast"
                ) from None
            lrs[param] = rate.to(device=param.device, dtype=param.dtype if param.is_floating_point() else None)
    if uncovered:
        warnings.warn(
            "alrao: no feature rule for "
            + ", ".join(uncovered)
            + "; using one learning rate per slice along dim 0 (per element for 0-d/1-d). "
            "Register a rule with alrao.register_feature_rule.",
            stacklevel=2,
        )
    return lrs


def classifier_lr_grid(min_lr: float, max_lr: float, n_classifiers: int) -> list[float]:
    """The copies' learning rates: ``log eta_j`` evenly spaced on ``[log min_lr, log max_lr]``,
    ``j = 0 .. n_classifiers - 1`` (paper, section 3.1). A single copy gets the log-midpoint.

    (An optimizer's ``classifier_lrs()`` method gives the rates its copies were built with.)"""
    if n_classifiers == 1:
        return [math.sqrt(min_lr * max_lr)]
    step = math.log(max_lr / min_lr) / (n_classifiers - 1)
    return [math.exp(math.log(min_lr) + j * step) for j in range(n_classifiers)]
