"""Relative learning rates and weight decay per module, with torch optimizers and Alrao's."""

import pytest
import torch
from torch import nn

import alrao


def step_once(model, make_opt, x):
    opt = make_opt(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    opt.step()
    return {n: p.detach() - start[n] for n, p in model.named_parameters()}


def build(rel_second):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), alrao.relative_lr(nn.Linear(4, 2), rel_second))


X = torch.randn(5, 3)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda m: torch.optim.SGD(alrao.relative_param_groups(m, lr=0.1), lr=0.1),
        lambda m: alrao.AlraoSGD(m, 1e-3, 1.0, generator=torch.Generator().manual_seed(0)),
    ],
)
def test_relative_rate_scales_the_step_exactly(make_opt):
    full = step_once(build(1.0), make_opt, X)
    tenth = step_once(build(0.1), make_opt, X)
    frozen = step_once(build(0.0), make_opt, X)
    for name in ("1.weight", "1.bias"):
        torch.testing.assert_close(tenth[name], 0.1 * full[name])
        assert torch.count_nonzero(frozen[name]) == 0
    torch.testing.assert_close(tenth["0.weight"], full["0.weight"])


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.SGD])
def test_frozen_layer_does_not_move_with_momentum_and_decay(opt_cls):
    model = build(0.0)
    groups = alrao.relative_param_groups(model, lr=0.01, weight_decay=0.1)
    delta = step_once(model, lambda m: opt_cls(groups, lr=0.01), X)
    assert torch.count_nonzero(delta["1.weight"]) == 0 and torch.count_nonzero(delta["0.weight"]) > 0


def test_weight_decay_per_module_matches_hand_computation():
    torch.manual_seed(0)
    lin = alrao.relative_weight_decay(alrao.relative_weight_decay(nn.Linear(2, 2), 0.0, "bias"), 3.0, "weight")
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    lr, wd = 0.1, 0.01
    opt = torch.optim.SGD(alrao.relative_param_groups(lin, lr=lr, weight_decay=wd), lr=lr)
    x = torch.ones(1, 2)
    lin(x).sum().backward()
    opt.step()
    # d/dW sum(Wx + b) = 1 x^T; decay 3*wd on the weight, none on the bias
    torch.testing.assert_close(lin.weight.detach(), w0 - lr * (torch.ones(2, 2) + 3 * wd * w0))
    torch.testing.assert_close(lin.bias.detach(), b0 - lr * torch.ones(2))


def test_marks_reach_alrao_groups_and_chain():
    inner = nn.Linear(2, 2)
    block = alrao.relative_lr(nn.Sequential(inner, nn.ReLU()), 0.5)
    assert alrao.relative_lr(inner, 0.25, "bias") is inner
    factors = alrao.relative_factors(block)
    assert factors[inner.weight] == (0.5, 1.0) and factors[inner.bias] == (0.25, 1.0)
    opt = alrao.AlraoSGD(block, 1e-3, 1.0, weight_decay=0.2)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == [0.25, 0.5]


@pytest.mark.parametrize(
    "factor,which,match",
    [(-1.0, "all", ">= 0"), (float("nan"), "all", ">= 0"), (1.0, "gamma", "no parameter named 'gamma'")],
)
def test_bad_marks(factor, which, match):
    with pytest.raises(ValueError, match=match):
        alrao.relative_lr(nn.Linear(2, 2), factor, which)
