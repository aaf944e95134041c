"""AlraoSGD and AlraoAdam: SGD and Adam with one learning rate per feature
(paper, section 3.1 and Algorithm 1).

Each parameter tensor ``p`` carries, in ``optimizer.state[p]['feature_lr']``,
its features' learning rates in a compact shape that broadcasts against ``p``
(``(out, 1)`` for a Linear weight, a 0-d tensor for a classifier copy). The
update is the ordinary torch update with the learning rate replaced by
``group['lr'] * feature_lr``: ``group['lr']`` is a multiplier (1 by default),
so every ``torch.optim.lr_scheduler`` scales all the rates unchanged.

With ``min_lr == max_lr == c`` both optimizers equal ``torch.optim.SGD`` /
``torch.optim.Adam`` at ``lr=c`` with the same options (to float rounding).

Either order works: an optimizer built before ``model.to(device)`` (or a dtype
change) moves the feature rates to their parameter's device and dtype at its
first step, as torch's optimizers create their state lazily.

Built on an :class:`alrao.AlraoModel`, the optimizer tells the model after
each step it takes (a Python call, no device read), so that a step skipped by
a ``torch.amp.GradScaler`` also skips the switch update (see ``alrao/model.py``).
"""

import math
import warnings
from collections import defaultdict

import torch
from torch import nn
from torch.optim import Optimizer

from .lr_sampling import (
    check_granularity,
    check_lr_interval,
    classifier_lr_grid,
    fallback_lrs,
    log_uniform_sampler,
    sample_feature_lrs,
)
from .model import AlraoModel
from .relative import relative_param_groups


def _check(name: str, value, ok: bool, valid: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}: {value!r} (must be {valid})")


class _FeatureLROptimizer(Optimizer):
    """Shared part of the Alrao optimizers: building the groups and the feature rates."""

    def __init__(
        self,
        model: nn.Module,
        min_lr: float,
        max_lr: float,
        defaults: dict,
        generator: torch.Generator | None,
        granularity: str = "feature",
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{type(self).__name__} takes the model (an nn.Module or alrao.AlraoModel), "
                f"not {type(model).__name__}: feature learning rates are defined by its layers"
            )
        check_lr_interval(min_lr, max_lr)
        check_granularity(granularity)
        self._generator = generator
        if isinstance(model, AlraoModel):
            # The copies keep one rate each whatever the granularity: the ablation is the pre-classifier's.
            rates = sample_feature_lrs(model.preclassifier, min_lr, max_lr, generator, granularity)
            if isinstance(model.loss_fn, nn.Module):  # a learned variance (alrao.GaussianNLL): trained like a feature
                rates.update(sample_feature_lrs(model.loss_fn, min_lr, max_lr, generator, granularity))
            self._copy_params = [next(c.parameters(), None) for c in model.classifiers]
            for eta, copy in zip(classifier_lr_grid(min_lr, max_lr, model.n_classifiers), model.classifiers):
                for p in copy.parameters():
                    rates.setdefault(p, torch.tensor(eta, dtype=p.dtype, device=p.device))
        else:
            rates = sample_feature_lrs(model, min_lr, max_lr, generator, granularity)
            self._copy_params = []
        defaults = dict(lr=1.0, min_lr=min_lr, max_lr=max_lr, granularity=granularity, **defaults)
        groups = relative_param_groups(model, lr=1.0, weight_decay=defaults["weight_decay"])
        for group in groups:  # each group carries its parameters' rates to add_param_group
            group["feature_lrs"] = {p: rates[p] for p in group["params"] if p in rates}
        super().__init__(groups, defaults)
        self._alrao_model = model if isinstance(model, AlraoModel) else None
        if self._alrao_model is not None:
            model._attach_optimizer(self)

    def _feature_lrs_of(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The feature rates of ``params``, moved (once, in the state) to each parameter's device
        and dtype if the model was moved after the optimizer was built."""
        rates = []
        for p in params:
            state = self.state[p]
            rate = state["feature_lr"]
            if rate.device != p.device or rate.dtype != p.dtype:
                rate = state["feature_lr"] = rate.to(device=p.device, dtype=p.dtype)
            rates.append(rate)
        return rates

    def _stepped(self) -> None:
        # Not reached when a GradScaler skips the step: it does not call step() then.
        model = getattr(self, "_alrao_model", None)  # absent on an unpickled optimizer
        if model is not None:
            model._optimizer_stepped()

    def add_param_group(self, param_group: dict) -> None:
        """Add a group. Its parameters' feature rates come from ``param_group['feature_lrs']``,
        ``{parameter: rates}``, taken out of the dict (the constructor hands over the rates drawn
        for the model's layers this way); a parameter without rates there (one that did not come
        with the model) gets fallback rates, one per slice along dim 0, with a warning."""
        given: dict = param_group.pop("feature_lrs", {})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_given_rates(given, group["params"])
        except ValueError:
            self.param_groups.pop()  # bad input adds nothing
            raise
        draw = None
        for p in group["params"]:
            if "feature_lr" in self.state[p]:
                continue
            if p in given:
                rate = given[p]
            else:
                draw = draw or log_uniform_sampler(group["min_lr"], group["max_lr"], self._generator)
                per_weight = group.get("granularity") == "weight"
                rate = (draw(p.numel()).reshape(p.shape) if per_weight else fallback_lrs(p, draw)).to(
                    device=p.device, dtype=p.dtype
                )
                warnings.warn(
                    f"{type(self).__name__}: parameter of shape {tuple(p.shape)} added without a "
                    "module; it gets one learning rate per slice along dim 0",
                    stacklevel=2,
                )
            self.state[p]["feature_lr"] = rate

    def feature_lrs(self) -> dict[torch.Tensor, torch.Tensor]:
        """``{parameter: feature learning rates}`` (compact shape, before the group multiplier)."""
        return {p: self.state[p]["feature_lr"] for g in self.param_groups for p in g["params"]}

    def classifier_lrs(self) -> list[float]:
        """Effective learning rate of each classifier copy (group multiplier included);
        empty for a plain module. Reads device values: call it outside the training step."""
        lrs = []
        for p in self._copy_params:
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
            lrs.append(float(self.state[p]["feature_lr"]) * group["lr"])
        return lrs

    def _groups_to_step(self):
        """Each parameter group that has gradients: ``(group, its parameters with a gradient,
        the feature rates of their updates)``."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                yield group, params, self._update_rates(params, group["foreach"])

    def _update_rates(self, params: list[torch.Tensor], foreach: bool) -> list[torch.Tensor]:
        """The feature rates that multiply the updates of ``params``.

        torch's multi-tensor (foreach) kernels take same-shaped operands only: one compact
        ``(out, 1, ...)`` or 0-d rate in a foreach op sends the whole op to one kernel per
        tensor. So where those kernels exist (:func:`_multi_tensor_kernels`), the foreach
        path gets the rates expanded to the parameters' shape and strides, made once and
        cached outside ``state`` (not saved; rebuilt when the compact rates are replaced,
        e.g. by ``load_state_dict``, or the parameter moves). That costs one more
        parameter-sized tensor per parameter. Elsewhere (CPU, whose foreach ops are a loop
        over the tensors anyway) and on the per-parameter path, the compact rates.
        """
        rates = self._feature_lrs_of(params)
        if not foreach:
            return rates
        cache = self.__dict__.setdefault("_dense_rates", {})
        out = []
        for p, rate in zip(params, rates):
            if not _multi_tensor_kernels(p.device):
                out.append(rate)
                continue
            hit = cache.get(p)
            # (a parameter moved to another device or dtype gets new compact rates: rebuilt too)
            if hit is None or hit[0] is not rate or hit[1].shape != p.shape or hit[1].stride() != p.stride():
                dense = torch.empty_like(p, memory_format=torch.preserve_format)
                hit = cache[p] = (rate, dense.copy_(rate.expand_as(p)))
            out.append(hit[1])
        return out

    @staticmethod
    def _by_device_and_dtype(params: list[torch.Tensor]) -> dict[tuple, list[int]]:
        buckets = defaultdict(list)
        for i, p in enumerate(params):
            buckets[(p.device, p.dtype)].append(i)
        return buckets


def _closure_loss(closure):
    """``closure()`` with gradients enabled (it re-evaluates the model), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _check_given_rates(given: dict, params: list[torch.Tensor]) -> None:
    """Raise ValueError unless ``given`` maps parameters of the group to tensors that broadcast against them."""
    in_group = {id(p) for p in params}
    for p, rate in given.items():
        if id(p) not in in_group:
            raise ValueError("add_param_group: param_group['feature_lrs'] names a parameter that is not in the group")
        try:
            torch.broadcast_shapes(rate.shape, p.shape)
        except (AttributeError, RuntimeError):
            raise ValueError(
                f"add_param_group: the feature rates of a parameter of shape {tuple(p.shape)} must be a tensor "
                f"that broadcasts against it, got {getattr(rate, 'shape', rate)!r}"
            ) from None


def _multi_tensor_kernels(device: torch.device) -> bool:
    """Whether torch runs a foreach op on ``device`` as fused multi-tensor kernels (CUDA and
    the other accelerators); on a CPU it is a loop over the tensors."""
    return device.type != "cpu"


class AlraoSGD(_FeatureLROptimizer):
    """SGD with Alrao's random learning rates.

    Args:
        model: an :class:`alrao.AlraoModel` (pre-classifier parameters get
            feature rates, copy ``j`` gets the rate ``eta_j``) or any module
            (feature rates on all its parameters).
        min_lr, max_lr: interval of the learning rates (not their log10).
        momentum, dampening, nesterov, weight_decay, maximize: as in
            ``torch.optim.SGD``, with torch's semantics; the learning rate
            multiplies the momentum buffer, feature by feature. (The authors'
            code used a non-standard momentum, an effective ``1 - m*sqrt(lr)``
            per feature; this is not it.)
        foreach: multi-tensor implementation (default) or per-parameter loop. On
            an accelerator it keeps the rates expanded to each parameter's shape
            (one more parameter-sized tensor per parameter, not saved), so that
            torch's fused multi-tensor kernels apply.
        generator: ``torch.Generator`` for the feature rates (reproducibility).
        granularity: ``'feature'`` (the paper's Alrao) or ``'weight'``: one rate per
            weight of the pre-classifier, the paper's ablation (see
            :func:`alrao.sample_feature_lrs`); the copies keep one rate each.

    Relative rates and weight decay marked with :func:`alrao.relative_lr` /
    :func:`alrao.relative_weight_decay` become group multipliers.
    """

    def __init__(
        self,
        model: nn.Module,
        min_lr: float,
        max_lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool = True,
        generator: torch.Generator | None = None,
        granularity: str = "feature",
    ):
        _check("momentum", momentum, momentum >= 0.0, ">= 0")
        _check("dampening", dampening, 0.0 <= dampening <= 1.0, "in [0, 1]")
        _check("weight_decay", weight_decay, weight_decay >= 0.0, ">= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0")
        defaults = dict(
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(model, min_lr, max_lr, defaults, generator, granularity)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = _closure_loss(closure)
        for group, params, lrs in self._groups_to_step():
            grads = [p.grad for p in params]
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            kwargs = dict(
                lr=group["lr"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
            )
            update = _sgd_foreach if group["foreach"] else _sgd_reference
            update(params, grads, bufs, lrs, **kwargs)
            if group["momentum"] != 0:
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
        self._stepped()
        return loss


def _sgd_reference(params, grads, bufs, lrs, *, lr, momentum, dampening, nesterov, weight_decay, maximize):
    """Per-parameter SGD step (the readable version; ``bufs`` is updated in place)."""
    for i, p in enumerate(params):
        d_p = -grads[i] if maximize else grads[i]
        if weight_decay != 0:
            d_p = d_p.add(p, alpha=weight_decay)
        if momentum != 0:
            if bufs[i] is None:
                bufs[i] = torch.clone(d_p).detach()
            else:
                bufs[i].mul_(momentum).add_(d_p, alpha=1 - dampening)
            d_p = d_p.add(bufs[i], alpha=momentum) if nesterov else bufs[i]
        p.addcmul_(d_p, lrs[i], value=-lr)


def _sgd_foreach(params, grads, bufs, lrs, *, lr, momentum, dampening, nesterov, weight_decay, maximize):
    """Multi-tensor SGD step: the same arithmetic as :func:`_sgd_reference`."""
    for idx in _FeatureLROptimizer._by_device_and_dtype(params).values():
        ps = [params[i] for i in idx]
        d_ps = [grads[i] for i in idx]
        if maximize:
            d_ps = torch._foreach_neg(d_ps)
        if weight_decay != 0:
            d_ps = torch._foreach_add(d_ps, ps, alpha=weight_decay)
        if momentum != 0:
            new = [j for j, i in enumerate(idx) if bufs[i] is None]
            old = [j for j, i in enumerate(idx) if bufs[i] is not None]
            for j in new:
                bufs[idx[j]] = torch.clone(d_ps[j]).detach()
            if old:
                old_bufs = [bufs[idx[j]] for j in old]
                torch._foreach_mul_(old_bufs, momentum)
                torch._foreach_add_(old_bufs, [d_ps[j] for j in old], alpha=1 - dampening)
            group_bufs = [bufs[i] for i in idx]
            d_ps = torch._foreach_add(d_ps, group_bufs, alpha=momentum) if nesterov else group_bufs
        torch._foreach_addcmul_(ps, d_ps, [lrs[i] for i in idx], value=-lr)


class AlraoAdam(_FeatureLROptimizer):
    """Adam with Alrao's random learning rates: the Adam step of each feature is
    scaled by that feature's learning rate (instead of one global ``lr``).

    Args:
        model, min_lr, max_lr, foreach, generator, granularity: as in :class:`AlraoSGD`.
        betas, eps, weight_decay, amsgrad, maximize: as in ``torch.optim.Adam``
            (weight decay is the L2 penalty added to the gradient, like torch's
            Adam; the authors' Alrao-Adam silently dropped it, and momentum).
    """

    def __init__(
        self,
        model: nn.Module,
        min_lr: float,
        max_lr: float,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool = True,
        generator: torch.Generator | None = None,
        granularity: str = "feature",
    ):
        _check("betas", betas, len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas), "two numbers in [0, 1)")
        _check("eps", eps, eps >= 0.0, ">= 0")
        _check("weight_decay", weight_decay, weight_decay >= 0.0, ">= 0")
        defaults = dict(
            betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize, foreach=foreach
        )
        super().__init__(model, min_lr, max_lr, defaults, generator, granularity)

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam update of every parameter that has a gradient."""
        loss = _closure_loss(closure)
        for group, params, rates in self._groups_to_step():
            for p in params:
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            states = [self.state[p] for p in params]
            update = _adam_foreach if group["foreach"] else _adam_reference
            update(
                params,
                [p.grad for p in params],
                states,
                rates,
                lr=group["lr"],
                betas=group["betas"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                amsgrad=group["amsgrad"],
                maximize=group["maximize"],
            )
        self._stepped()
        return loss


def _adam_reference(params, grads, states, rates, *, lr, betas, eps, weight_decay, amsgrad, maximize):
    """Per-parameter Adam step (``states`` already hold the incremented ``step``)."""
    beta1, beta2 = betas
    for p, grad, state, rate in zip(params, grads, states, rates):
        grad = -grad if maximize else grad
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** state["step"])
        if amsgrad:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        else:
            second = exp_avg_sq
        # the rate divides the denominator (rather than multiplying exp_avg): no extra tensor
        denom = (second.sqrt() / bias_correction2_sqrt).add_(eps).div_(rate)
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def _adam_foreach(params, grads, states, rates, *, lr, betas, eps, weight_decay, amsgrad, maximize):
    """Multi-tensor Adam step: the same arithmetic as :func:`_adam_reference`."""
    beta1, beta2 = betas
    for idx in _FeatureLROptimizer._by_device_and_dtype(params).values():
        ps = [params[i] for i in idx]
        st = [states[i] for i in idx]
        gs = [grads[i] for i in idx]
        if maximize:
            gs = torch._foreach_neg(gs)
        if weight_decay != 0:
            gs = torch._foreach_add(gs, ps, alpha=weight_decay)
        exp_avgs = [s["exp_avg"] for s in st]
        exp_avg_sqs = [s["exp_avg_sq"] for s in st]
        torch._foreach_lerp_(exp_avgs, gs, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, gs, gs, value=1 - beta2)
        if amsgrad:
            max_sqs = [s["max_exp_avg_sq"] for s in st]
            torch._foreach_maximum_(max_sqs, exp_avg_sqs)
            denom = torch._foreach_sqrt(max_sqs)
        else:
            denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [math.sqrt(1 - beta2 ** s["step"]) for s in st])
        torch._foreach_add_(denom, eps)
        torch._foreach_div_(denom, [rates[i] for i in idx])
        torch._foreach_addcdiv_(ps, exp_avgs, denom, [-lr / (1 - beta1 ** s["step"]) for s in st])
