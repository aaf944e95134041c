"""Regression as a mixture of Gaussians: the model against a naive float64 re-implementation."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import alrao

N, D_IN, D_OUT = 3, 4, 2
LOG_2PI = math.log(2 * math.pi)


def make(likelihood=None, posterior=(0.2, 0.3, 0.5), cls=alrao.LinearRegressor):
    torch.manual_seed(0)
    pre = nn.Sequential(nn.Linear(5, D_IN), nn.Tanh())
    model = alrao.AlraoModel("regression", likelihood, pre, N, cls, D_IN, D_OUT)
    model.switch.log_posterior.copy_(torch.tensor(posterior).log())
    return model


def data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), 2 * torch.randn(n, D_OUT, generator=g)


def naive_gaussian_ll(mean, target, variance):
    """log N(target; mean, variance), summed over the output dimension (float64)."""
    return (-0.5 * ((target - mean) ** 2 / variance + math.log(variance) + LOG_2PI)).sum(-1)


def naive_losses(model, x, y, variance=1.0):
    """``(mixture NLL, copies' NLLs, pre-classifier gradients, copies' gradients)`` in float64,
    by plain autograd: the mixture trains the pre-classifier, each copy its own NLL."""
    m = copy.deepcopy(model).double()
    x, y = x.double(), y.double()
    pre = list(m.preclassifier.parameters())
    z = m.preclassifier(x)
    means = [c(z) for c in m.classifiers]
    post = m.switch.log_posterior.exp()
    lls = torch.stack([naive_gaussian_ll(mu, y, variance) for mu in means])  # (N, batch)
    mixture = -torch.log((post[:, None] * lls.exp()).sum(0)).mean()
    pre_grads = torch.autograd.grad(mixture, pre)
    own, own_grads = [], []
    for c in m.classifiers:
        nll = -naive_gaussian_ll(c(z.detach()), y, variance).mean()
        own.append(nll.item())
        own_grads.append(torch.autograd.grad(nll, list(c.parameters())))
    return mixture.item(), torch.tensor(own, dtype=torch.float64), pre_grads, own_grads


def step(model, x, y):
    out = model(x)
    loss = model.loss(out, y)
    model.zero_grad()
    loss.backward()
    return out, loss


class Generic(alrao.LinearRegressor):  # goes through the one-call-per-copy path of alrao/copies.py
    def forward(self, x):
        return super().forward(x)


@pytest.mark.parametrize("cls", [alrao.LinearRegressor, Generic], ids=["batched", "generic"])
def test_loss_and_gradients_are_the_mixture_likelihoods(cls):
    model = make(cls=cls)
    x, y = data()
    mixture, own, pre_grads, own_grads = naive_losses(model, x, y)
    _, loss = step(model, x, y)
    assert loss.item() == pytest.approx(mixture, rel=1e-5)
    torch.testing.assert_close(model.last_copy_losses.double(), own, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.preclassifier.parameters(), pre_grads):
        torch.testing.assert_close(p.grad.double(), g, rtol=1e-4, atol=1e-5)
    for c, grads in zip(model.classifiers, own_grads):
        for p, g in zip(c.parameters(), grads):
            torch.testing.assert_close(p.grad.double(), g, rtol=1e-4, atol=1e-5)


def test_the_mixture_nll_is_not_the_nll_of_the_weighted_mean():
    """The issue's point, on three 1-d copies with posterior (.2, .3, .5) and unit variance: the
    model's loss is the mixture's NLL, not the NLL of the posterior-weighted mean."""
    pre = nn.Identity()
    model = alrao.AlraoModel("regression", None, pre, N, alrao.LinearRegressor, 1, 1)
    with torch.no_grad():
        for c, mu in zip(model.classifiers, (1.0, 5.0, 9.0)):
            c.fc.weight.zero_()
            c.fc.bias.fill_(mu)
    model.switch.log_posterior.copy_(torch.tensor([0.2, 0.3, 0.5]).log())
    x, y = torch.zeros(1, 1), torch.zeros(1, 1)
    mus, post = torch.tensor([1.0, 5.0, 9.0], dtype=torch.float64), torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    weighted_mean_nll = 0.5 * float(post @ mus) ** 2 + 0.5 * LOG_2PI
    mixture_nll = -math.log(float(post @ torch.exp(-0.5 * mus**2))) + 0.5 * LOG_2PI
    loss = model.loss(model(x), y)
    assert loss.item() == pytest.approx(mixture_nll, rel=1e-6)
    assert abs(mixture_nll - weighted_mean_nll) > 1  # 2.01 vs 20.14 nats here
    assert model.last_copy_losses.tolist() == pytest.approx([0.5 * m**2 + 0.5 * LOG_2PI for m in (1, 25**0.5, 9)])


def test_the_prediction_is_the_mixture_mean_and_the_switch_reads_the_copies_nlls():
    model = make()
    x, y = data()
    z = model.preclassifier(x).detach()
    means = torch.stack([c(z) for c in model.classifiers]).detach()
    with torch.no_grad():
        torch.testing.assert_close(model(x), means.mean(0))  # uniform weights before any batch
    step(model, x, y)
    reference = alrao.Switch(N)
    reference.load_state_dict(model.switch.state_dict())
    logw, own = model.switch.logw.clone(), model.last_copy_losses.clone()
    model.update_switch()
    reference.update(own)
    torch.testing.assert_close(model.switch.logw, reference.logw)
    # the prediction's weights: the posterior times this batch's likelihood, before the switching prior
    weights = torch.softmax(torch.logsumexp(logw.double() - own.double(), dim=0), dim=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), (weights[:, None, None] * means.double()).sum(0))


def test_a_copy_diverged_to_huge_outputs_leaves_the_prediction_and_gradients_sane():
    """Huge but finite outputs: the copy gets no mixture weight, so no pre-classifier gradient
    and no share of the prediction; the others train as if it were not there."""
    model = make()
    with torch.no_grad():
        model.classifiers[2].fc.bias.fill_(1e30)  # (y - mu)^2 overflows float32
        model.classifiers[1].fc.bias.fill_(1e15)  # huge, no overflow
    x, y = data()
    reference = make()  # the same model without copies 1 and 2: a posterior of 1 on copy 0
    reference.switch.log_posterior.copy_(torch.tensor([0.0, -math.inf, -math.inf]))
    _, ref_loss = step(reference, x, y)
    for _ in range(3):
        posterior = model.posterior()[0].item()
        out, loss = step(model, x, y)
        assert torch.isfinite(out).all() and torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.update_switch()
    assert loss.item() == pytest.approx(ref_loss.item() - math.log(posterior), rel=1e-5)
    for p, q in zip(model.preclassifier.parameters(), reference.preclassifier.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert model.posterior()[1:].min() > 0.05  # the switch's prior moves mass back to them (early, much) ...
    assert model.log_prediction_weights.exp()[1:].max() == 0  # ... the prediction none
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.classifiers[0](model.preclassifier(x)))


def test_a_learned_variance_is_trained_by_the_mixture_and_gets_a_feature_rate():
    likelihood = alrao.GaussianNLL(variance=0.5, learn_variance=True)
    model = make(likelihood)
    x, y = data()
    mixture, own, _, _ = naive_losses(model, x, y, variance=0.5)
    _, loss = step(model, x, y)
    assert loss.item() == pytest.approx(mixture, rel=1e-5)
    torch.testing.assert_close(model.last_copy_losses.double(), own, rtol=1e-5, atol=1e-5)
    # d mixture / d log variance, by finite differences of the naive float64 mixture
    eps = 1e-4
    plus = naive_losses(model, x, y, variance=0.5 * math.exp(eps))[0]
    minus = naive_losses(model, x, y, variance=0.5 * math.exp(-eps))[0]
    assert likelihood.log_variance.grad.item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no feature rule" warning
        optimizer = alrao.AlraoSGD(model, 1e-5, 1.0)
    rate = optimizer.feature_lrs()[likelihood.log_variance]
    assert rate.shape == () and 1e-5 <= rate.item() <= 1.0


def test_the_regression_loss_must_be_a_gaussian_likelihood():
    with pytest.raises(TypeError, match="loss must be alrao.GaussianNLL.*got MSELoss"):
        alrao.AlraoModel("regression", nn.MSELoss(), nn.Linear(5, D_IN), N, alrao.LinearRegressor, D_IN, D_OUT)
    with pytest.raises(ValueError, match="variance must be a finite number > 0"):
        alrao.GaussianNLL(variance=0.0)
    model = make()
    x, y = data()
    with pytest.raises(ValueError, match=r"target has shape \(8,\), the prediction \(8, 2\)"):
        model.loss(model(x), y[:, 0])


def test_gaussian_nll_on_its_own_is_half_the_squared_error_plus_a_constant():
    prediction, target = torch.randn(7, 3), torch.randn(7, 3)
    expected = 0.5 * ((prediction - target) ** 2).sum(1).mean() + 1.5 * LOG_2PI
    torch.testing.assert_close(alrao.GaussianNLL()(prediction, target), expected)


def test_evaluation_without_gradients_and_the_prediction_weights_in_the_state_dict():
    model = make()
    x, y = data()
    step(model, x, y)
    model.update_switch()
    model.eval()
    with torch.no_grad():
        prediction = model(x)
        loss = model.loss(prediction, y)
    assert torch.isfinite(loss) and model.last_copy_losses.shape == (N,)
    restored = make()
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.log_prediction_weights, model.log_prediction_weights)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), prediction)
