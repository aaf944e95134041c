"""Relative learning rates and weight decay per module (the idea of Lua Torch's ``nnlr``).

Mark parameters of a module with a factor on the base learning rate and on the
base weight decay, then build parameter groups::

    net = nn.Sequential(relative_lr(nn.Linear(10, 10), 0.1),      # 0.1x the base rate
                        relative_lr(nn.Linear(10, 10), 0.0),      # frozen
                        relative_weight_decay(nn.Linear(10, 2), 0.0, "bias"))
    torch.optim.SGD(relative_param_groups(net, lr=0.1, weight_decay=5e-4))

The marking functions return the module, so they nest inside constructors.
``alrao.AlraoSGD`` / ``AlraoAdam`` read the same marks: a relative rate
multiplies the feature learning rates of the marked parameters.
"""

from torch import nn

_ATTR = "_alrao_relative"


def _mark(module: nn.Module, which: str, key: str, factor: float) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    if not (isinstance(factor, (int, float)) and factor >= 0 and factor == factor and factor != float("inf")):
        raise ValueError(f"relative {key.replace('_', ' ')} must be a finite number >= 0, got {factor!r}")
    marked = 0
    for mod in module.modules():
        for name, _ in mod.named_parameters(recurse=False):
            if which == "all" or name == which:
                mod.__dict__.setdefault(_ATTR, {}).setdefault(name, {})[key] = float(factor)
                marked += 1
    if marked == 0:
        raise ValueError(
            f"{type(module).__name__} has no parameter named {which!r} "
            "(use 'all', 'weight', 'bias' or a parameter name)"
        )
    return module


def relative_lr(module: nn.Module, factor: float, which: str = "all") -> nn.Module:
    """Multiply the learning rate of ``module``'s parameters by ``factor`` (0 freezes them).

    ``which``: ``'all'`` (every parameter of the module and its children),
    or a parameter name such as ``'weight'`` or ``'bias'`` (in the module and
    its children). Returns ``module``.
    """
    return _mark(module, which, "lr", factor)


def relative_weight_decay(module: nn.Module, factor: float, which: str = "all") -> nn.Module:
    """Multiply the weight decay of ``module``'s parameters by ``factor``. Returns ``module``."""
    return _mark(module, which, "weight_decay", factor)


def relative_factors(module: nn.Module) -> dict[nn.Parameter, tuple[float, float]]:
    """``{parameter: (relative lr, relative weight decay)}`` for every parameter
    of ``module`` (1.0 where unmarked); a shared parameter is counted once."""
    factors: dict[nn.Parameter, tuple[float, float]] = {}
    for mod in module.modules():
        marks = mod.__dict__.get(_ATTR, {})
        for name, param in mod.named_parameters(recurse=False):
            if param not in factors:
                mark = marks.get(name, {})
                factors[param] = (mark.get("lr", 1.0), mark.get("weight_decay", 1.0))
    return factors


def relative_param_groups(module: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Parameter groups for any ``torch.optim`` optimizer: one group per
    (relative lr, relative weight decay) pair, with ``lr = lr * relative lr`` and
    ``weight_decay = weight_decay * relative weight decay``.

    Each group also keeps its factors under ``relative_lr`` and
    ``relative_weight_decay``.
    """
    groups: dict[tuple[float, float], dict] = {}
    for param, (rel_lr, rel_wd) in relative_factors(module).items():
        group = groups.setdefault(
            (rel_lr, rel_wd),
            {
                "params": [],
                "lr": lr * rel_lr,
                "weight_decay": weight_decay * rel_wd,
                "relative_lr": rel_lr,
                "relative_weight_decay": rel_wd,
            },
        )
        group["params"].append(param)
    return list(groups.values())


__all__ = ["relative_lr", "relative_weight_decay", "relative_factors", "relative_param_groups"]
