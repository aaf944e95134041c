"""Copies of a user's classifier class: stacked and vmapped (alrao/copies.py, generic path),
with the same values and routed gradients as one call per copy and as a naive reference;
the one-by-one fallback, with one warning, for what vmap cannot batch."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import alrao
from alrao import copies as copies_mod

N, D, K = 4, 6, 5


class UserLinear(nn.Module):
    """A user's Linear + log-softmax (not alrao.LinearClassifier)."""

    def __init__(self, d, k):
        super().__init__()
        self.proj = nn.Linear(d, k)

    def forward(self, x):
        return torch.log_softmax(self.proj(x), dim=-1)


class UserTwoLayer(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.hidden = nn.Linear(d, 7)
        self.out = nn.Linear(7, k)

    def forward(self, x):
        return F.log_softmax(self.out(torch.tanh(self.hidden(x))), dim=-1)


class UserBatchNorm(nn.Module):
    """BatchNorm in training mode: its running statistics cannot be updated under vmap."""

    def __init__(self, d, k):
        super().__init__()
        self.proj = nn.Linear(d, k)
        self.norm = nn.BatchNorm1d(k)

    def forward(self, x):
        return F.log_softmax(self.norm(self.proj(x)), dim=-1)


def make(cls, seed=0, n=N):
    torch.manual_seed(seed)
    pre = nn.Sequential(nn.Linear(3, D), nn.Tanh())
    m = alrao.AlraoModel("classification", nn.NLLLoss(), pre, n, cls, D, K)
    for _ in range(3):  # a non-uniform posterior
        m.switch.update(torch.rand(n) * 2)
    return m


def batch(seed=1, n=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randint(0, K, (n,), generator=g)


def one_by_one(monkeypatch):
    """Force the per-copy loop (the fallback) for every class."""
    monkeypatch.setattr(copies_mod, "_stacking_obstacle", lambda copies, named: "forced by the test")
    monkeypatch.setattr(copies_mod, "_UNBATCHABLE", {})
    monkeypatch.setattr(copies_mod, "_WARNED", set())


def step(m, x, y):
    """Loss, copy outputs and every gradient of one step."""
    m.zero_grad()
    out = m(x)
    loss = m.loss(out, y)
    loss.backward()
    return [out.detach(), loss.detach(), m.last_copy_outputs] + [p.grad.clone() for p in m.parameters()]


def naive(m, x, y):
    """The paper's two gradients written out: the pre-classifier from the averaged loss with the
    copies fixed; copy j from its own loss with the pre-classifier output fixed."""
    ref = copy.deepcopy(m)
    z = ref.preclassifier(x)
    log_post = ref.switch.log_posterior[:, None, None]
    mix = torch.logsumexp(torch.stack([c(z) for c in _frozen(ref.classifiers)]) + log_post, 0)
    pre = torch.autograd.grad(F.nll_loss(mix, y), list(ref.preclassifier.parameters()))
    own = [torch.autograd.grad(F.nll_loss(c(z.detach()), y), list(c.parameters())) for c in ref.classifiers]
    return mix.detach(), pre, own


def _frozen(classifiers):
    frozen = copy.deepcopy(classifiers)
    frozen.requires_grad_(False)
    return frozen


@pytest.mark.parametrize("cls,n", [(UserLinear, N), (UserTwoLayer, N), (UserTwoLayer, 1)])
def test_stacked_copies_equal_the_loop_and_the_naive_reference(monkeypatch, cls, n):
    x, y = batch()
    m = make(cls, n=n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stacked path: no fallback warning
        stacked = step(m, x, y)
    expected_mix, pre, own = naive(m, x, y)
    torch.testing.assert_close(stacked[0], expected_mix)
    for p, g in zip(m.preclassifier.parameters(), pre):
        torch.testing.assert_close(p.grad, g)
    for c, grads in zip(m.classifiers, own):
        for p, g in zip(c.parameters(), grads):
            torch.testing.assert_close(p.grad, g)
    one_by_one(monkeypatch)
    with pytest.warns(UserWarning, match="forced by the test"):
        looped = step(make(cls, n=n), x, y)
    for a, b in zip(stacked, looped):
        torch.testing.assert_close(a, b)


def test_a_diverged_copy_is_left_out_on_the_stacked_path(monkeypatch):
    x, y = batch()

    def run():
        m = make(UserTwoLayer)
        with torch.no_grad():
            m.classifiers[2].hidden.weight[0, 0] = float("nan")
        return step(m, x, y)

    stacked = run()
    assert all(torch.isfinite(g).all() for g in stacked[3:])
    monkeypatch.setattr(copies_mod, "known_all", lambda finite: False)  # the accelerator path
    for a, b in zip(stacked, run()):
        torch.testing.assert_close(a, b, equal_nan=True)
    one_by_one(monkeypatch)
    with pytest.warns(UserWarning):
        looped = run()
    for a, b in zip(stacked, looped):
        torch.testing.assert_close(a, b, equal_nan=True)


@pytest.mark.parametrize("n", [N, 1])
def test_without_grad_and_in_eval_mode_the_outputs_match(monkeypatch, n):
    x, _ = batch()
    m = make(UserBatchNorm, n=n).eval()  # eval mode: BatchNorm only reads its buffers, so it stacks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            stacked = m(x)
        with_grad = m(x).detach()
    one_by_one(monkeypatch)
    with pytest.warns(UserWarning), torch.no_grad():
        looped = m(x)
    torch.testing.assert_close(stacked, looped)
    torch.testing.assert_close(with_grad, looped)


def test_an_unbatchable_class_falls_back_with_one_warning(monkeypatch):
    """BatchNorm while training: the loop, with its running statistics updated in every copy,
    and the same values and gradients as the naive reference; one warning for the class."""
    x, y = batch()
    m = make(UserBatchNorm)
    before = copy.deepcopy(m)
    expected_mix, pre, own = naive(before, x, y)
    with pytest.warns(UserWarning, match="UserBatchNorm.*one by one.*BatchNorm") as caught:
        got = step(m, x, y)
    assert len(caught) == 1
    torch.testing.assert_close(got[0], expected_mix)
    for p, g in zip(m.preclassifier.parameters(), pre):
        torch.testing.assert_close(p.grad, g)
    for c, grads in zip(m.classifiers, own):
        for p, g in zip(c.parameters(), grads):
            torch.testing.assert_close(p.grad, g)
    for c, c0 in zip(m.classifiers, before.classifiers):
        assert int(c.norm.num_batches_tracked) == int(c0.norm.num_batches_tracked) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per class
        step(m, x, y)


def test_a_forward_that_reads_the_host_falls_back():
    class HostReading(UserLinear):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                x = x * 1.0
            return super().forward(x)

    x, y = batch()
    with pytest.warns(UserWarning, match="vmap cannot batch"):
        got = step(make(HostReading), x, y)
    expected_mix, _, _ = naive(make(HostReading), x, y)
    torch.testing.assert_close(got[0], expected_mix)


def test_the_optimizer_updates_each_copys_own_parameters():
    """The copies stay modules with their own parameters: state_dict keys unchanged, AlraoSGD
    moves each copy at its own rate, exactly as with the one-by-one path."""
    x, y = batch()
    m = make(UserTwoLayer)
    keys = set(m.state_dict())
    opt = alrao.AlraoSGD(m, 1e-3, 1.0)
    before = [p.detach().clone() for p in m.classifiers.parameters()]
    for _ in range(2):
        opt.zero_grad()
        m.loss(m(x), y).backward()
        opt.step()
        m.update_switch()
    assert set(m.state_dict()) == keys
    assert all(not torch.equal(a, b) for a, b in zip(before, m.classifiers.parameters()))


def test_a_user_class_with_dropout_gets_a_mask_per_copy():
    class Dropping(UserLinear):
        def __init__(self, d, k):
            super().__init__(d, k)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return super().forward(self.drop(x))

    m = make(Dropping)
    with torch.no_grad():  # identical copies: only their dropout masks can differ
        for c in m.classifiers[1:]:
            c.load_state_dict(m.classifiers[0].state_dict())
    x, y = batch(n=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.loss(m(x), y).backward()
    outs = m.last_copy_outputs
    assert not torch.equal(outs[0], outs[1])
