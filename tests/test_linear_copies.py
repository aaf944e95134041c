"""The built-in linear copies' fused NLL (alrao/linear_copies.py) against the general path.

``model.loss(output, target)`` takes the fused NLL when ``output`` is the very tensor the last
forward returned and the loss a plain ``nn.NLLLoss``; any other tensor (here ``output.clone()``,
the same values) goes through ``loss_fn`` and the general backward. Both must give the same loss,
copy losses and gradients, in every case the general path handles.
"""

import contextlib

import pytest
import torch
from torch import nn

import alrao
import alrao.linear_copies

N = 4


class Pre(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, width), nn.Tanh())

    def forward(self, x):
        return self.body(x)


class RecurrentPre(nn.Module):
    """(seq, batch, width) outputs and a hidden state, as the LSTM's pre-classifier."""

    def __init__(self, width):
        super().__init__()
        self.body = nn.Linear(5, width)

    def forward(self, x):
        return torch.tanh(self.body(x)), x.sum()


def make(width, classes, rnn=False, ignore_index=-100, seed=0):
    torch.manual_seed(seed)
    pre, cls = (RecurrentPre(width), alrao.LinearClassifierRNN) if rnn else (Pre(width), alrao.LinearClassifier)
    m = alrao.AlraoModel("classification", nn.NLLLoss(ignore_index=ignore_index), pre, N, cls, width, classes)
    for _ in range(3):  # a non-uniform posterior, so that the shares matter
        m.switch.update(torch.rand(N) * 2)
    return m


def run(m, x, y, fused, scale=1.0, amp=False, extra_on_output=False):
    """Loss, copy losses and every gradient of one backward; ``fused``: pass the forward's own
    output (else a clone of it, which takes the general path)."""
    m.zero_grad()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        out = m(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = m.loss(out if fused else out.clone(), y)
    total = scale * loss
    if extra_on_output:  # a term of the user's own on the output: the general backward as well
        total = total + out.exp().square().mean()
    total.backward()
    return [loss.detach(), m.last_copy_losses] + [
        torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in m.parameters()
    ]


def assert_same(a, b, **tol):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **tol)


CASES = pytest.mark.parametrize(
    "width,classes", [(6, 3), (3, 11)], ids=["narrow-output", "wide-output"]
)  # K <= d and K > d: the two ways _products applies the shares


@CASES
@pytest.mark.parametrize("rnn", [False, True], ids=["LinearClassifier", "LinearClassifierRNN"])
def test_the_fused_nll_equals_the_general_path(width, classes, rnn):
    m = make(width, classes, rnn)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 5, generator=g) if rnn else torch.randn(16, 5, generator=g)
    y = torch.randint(0, classes, (21 if rnn else 16,), generator=g)
    assert_same(run(m, x, y, fused=True), run(m, x, y, fused=False))
    assert_same(run(m, x, y, fused=True, scale=0.3), run(m, x, y, fused=False, scale=0.3))


def test_the_fused_nll_is_taken_only_for_the_forwards_own_output(monkeypatch):
    m = make(6, 3)
    calls = []
    real = alrao.linear_copies._LinearCopiesNLL.apply
    monkeypatch.setattr(alrao.linear_copies._LinearCopiesNLL, "apply", lambda *a: calls.append(1) or real(*a))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    out = m(x)
    m.loss(out, y)
    assert calls == [1]
    m.loss(out.clone(), y)
    with pytest.raises(ValueError, match="4 targets for the 8 outputs of the last forward"):
        m.loss(out[:4], y[:4])  # the copies' losses are the whole batch's (they used to read its first rows)
    m.loss_fn = nn.NLLLoss(weight=torch.ones(3))  # class weights: not the plain NLL
    m.loss(out, y)
    assert calls == [1]


@CASES
def test_ignored_targets(width, classes):
    m = make(width, classes, ignore_index=1)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, classes, (16,), generator=g)
    y[:5] = 1
    assert_same(run(m, x, y, fused=True), run(m, x, y, fused=False))


@pytest.mark.parametrize("path", ["host", "accelerator"])
def test_a_diverged_copy_sends_nothing(path):
    m = make(3, 11)
    with torch.no_grad():
        m.classifiers[2].fc.weight[0, 0] = float("nan")
    x, y = torch.randn(16, 5), torch.randint(0, 11, (16,))
    with alrao.accelerator_path(path == "accelerator"):
        fused, general = run(m, x, y, fused=True), run(m, x, y, fused=False)
    assert_same(fused, general, equal_nan=True)
    grads = fused[2:]
    assert all(torch.isfinite(g).all() for g in grads)
    assert all((p.grad == 0).all() for p in m.classifiers[2].parameters())


@CASES
def test_the_accelerator_path_and_autocast(width, classes):
    m = make(width, classes)
    x, y = torch.randn(16, 5), torch.randint(0, classes, (16,))
    with alrao.accelerator_path():
        assert_same(run(m, x, y, fused=True), run(m, x, y, fused=False))
        bf16 = dict(rtol=2e-2, atol=2e-3)  # the products in bfloat16, the rest in float32
        assert_same(run(m, x, y, fused=True, amp=True), run(m, x, y, fused=False, amp=True), **bf16)


def test_a_term_on_the_output_adds_its_own_gradient():
    m = make(6, 3)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    assert_same(run(m, x, y, fused=True, extra_on_output=True), run(m, x, y, fused=False, extra_on_output=True))


@pytest.mark.parametrize("classes", [7, 300], ids=["few-classes", "many-classes"])
@pytest.mark.parametrize("layout", ["copy-minor", "copy-major", "strided"])
def test_the_mixtures_weighted_sum_over_the_copies(layout, classes):
    """alrao/mixture.py sums over the copies by a batched product, by N multiply-adds or by a
    matrix-vector product, by layout and width: all equal, and in float32 under autocast."""
    from alrao.mixture import _weighted_sum

    g = torch.Generator().manual_seed(0)
    if layout == "copy-minor":  # the built-in linear copies' (T, N, K) memory
        p = torch.rand(9, N, classes, generator=g).transpose(0, 1)
    elif layout == "copy-major":
        p = torch.rand(N, 9, classes, generator=g)
    else:
        p = torch.rand(N, 9, 2 * classes, generator=g)[..., ::2]
    weight = torch.softmax(torch.randn(N, generator=g), dim=0)
    expected = (p.double() * weight.double().view(N, 1, 1)).sum(dim=0).float()
    torch.testing.assert_close(_weighted_sum(p, weight), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = _weighted_sum(p, weight)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, expected)


def test_a_second_backward_or_loss_gives_the_same_gradients():
    """The fused backward writes into the mixture's exp(y) (alrao/mixture.py): a second backward
    through the same graph (retain_graph=True), or a second loss on the same output, makes it again."""
    m = make(6, 3)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    out = m(x)
    assert m._last_probs is not None  # the host path made exp(y)
    loss = m.loss(out, y)
    grads = []
    for _ in range(2):
        m.zero_grad()
        loss.backward(retain_graph=True)
        grads.append([p.grad.clone() for p in m.parameters()])
    m.zero_grad()
    m.loss(out, y).backward()
    grads.append([p.grad.clone() for p in m.parameters()])
    for other in grads[1:]:
        assert_same(grads[0], other)
