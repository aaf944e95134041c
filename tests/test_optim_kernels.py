"""The foreach path's formulation for torch's fused multi-tensor kernels (alrao/optim.py):
full-size rates where those kernels exist, forced here on the CPU; same arithmetic as the
compact rates, nothing added to the saved state."""

import copy

import pytest
import torch
from torch import nn

import alrao
from alrao import optim as optim_mod


def model(seed=0):
    torch.manual_seed(seed)
    pre = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.Tanh())
    return alrao.AlraoModel("classification", nn.NLLLoss(), pre, 3, alrao.LinearClassifier, 6, 3)


def batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def train(m, opt, data):
    for x, y in data:
        opt.zero_grad()
        m.loss(m(x), y).backward()
        opt.step()
        m.update_switch()


OPTIMIZERS = [
    lambda m: alrao.AlraoSGD(m, 1e-3, 1.0, generator=torch.Generator().manual_seed(3)),
    lambda m: alrao.AlraoSGD(
        m, 1e-3, 1.0, momentum=0.9, nesterov=True, weight_decay=1e-3, generator=torch.Generator().manual_seed(3)
    ),
    lambda m: alrao.AlraoAdam(m, 1e-4, 1e-1, amsgrad=True, generator=torch.Generator().manual_seed(3)),
]


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["sgd", "sgd-nesterov", "adam-amsgrad"])
def test_full_size_rates_give_the_compact_rates_updates(monkeypatch, make):
    data = batches()
    a, b = model(), model()
    opt_a = make(a)
    train(a, opt_a, data)
    monkeypatch.setattr(optim_mod, "_multi_tensor_kernels", lambda device: True)  # the accelerator branch
    opt_b = make(b)
    train(b, opt_b, data)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    dense = opt_b._dense_rates
    assert len(dense) == sum(1 for _ in b.parameters())
    for p, (compact, full) in dense.items():
        assert full.shape == p.shape and full.stride() == p.stride()
        assert torch.equal(full, compact.expand_as(p))
    assert not hasattr(opt_a, "_dense_rates") or not opt_a._dense_rates  # CPU: the compact rates
    saved = opt_b.state_dict()
    assert all(set(s) == set(opt_a.state_dict()["state"][i]) for i, s in saved["state"].items())


def test_full_size_rates_follow_the_compact_rates(monkeypatch):
    """A loaded state (new compact rates) rebuilds the full-size rates."""
    monkeypatch.setattr(optim_mod, "_multi_tensor_kernels", lambda device: True)
    data = batches(2)
    m = model()
    opt = alrao.AlraoSGD(m, 1e-3, 1.0, momentum=0.9, generator=torch.Generator().manual_seed(3))
    train(m, opt, data[:1])
    other = model(seed=5)
    opt_other = alrao.AlraoSGD(other, 1e-3, 1.0, momentum=0.9, generator=torch.Generator().manual_seed(9))
    train(other, opt_other, data[:1])  # full-size rates from its own (different) draw
    other.load_state_dict(m.state_dict())
    opt_other.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(m, opt, data[1:])
    train(other, opt_other, data[1:])
    for p, q in zip(m.parameters(), other.parameters()):
        assert torch.equal(p, q)
    for p, (compact, full) in opt_other._dense_rates.items():
        assert compact is opt_other.state[p]["feature_lr"] and torch.equal(full, compact.expand_as(p))
