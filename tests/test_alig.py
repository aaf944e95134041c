"""Tests of alrao.tools.AliG against steps computed by hand (Berrada et al. 2020)."""

import copy

import pytest
import torch

from alrao.tools import AliG

# The small problem: loss(w) = 0.5 * w^T A w with A = diag(1, 3), from w0 = (1, 1):
# loss(w0) = 2, g0 = A w0 = (1, 3), ||g0||^2 = 10, so the AliG step is 2 / 10 = 0.2.
A = torch.tensor([1.0, 3.0], dtype=torch.float64)


def quadratic(w):
    return 0.5 * (A * w * w).sum()


def make(max_lr, momentum=0.0, eps=0.0, **kw):
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    return w, AliG([w], max_lr=max_lr, momentum=momentum, eps=eps, **kw)


def closure_for(w, optimizer):
    def closure():
        optimizer.zero_grad()
        loss = quadratic(w)
        loss.backward()
        return loss

    return closure


def hand_step(w, buf, max_lr, momentum, eps=0.0, adjusted=False):
    """One AliG step in plain Python floats, from the paper's formulas."""
    g = [a * x for a, x in zip(A.tolist(), w)]
    loss = 0.5 * sum(a * x * x for a, x in zip(A.tolist(), w))
    step = min(max_lr, loss / (sum(x * x for x in g) + eps))
    if adjusted:
        buf = [momentum * b - gi for b, gi in zip(buf, g)]
        w = [x - step * gi + step * momentum * b for x, gi, b in zip(w, g, buf)]
    else:
        buf = [momentum * b - step * gi for b, gi in zip(buf, g)]
        w = [x - step * gi + momentum * b for x, gi, b in zip(w, g, buf)]
    return w, buf, step


@pytest.mark.parametrize(
    "max_lr, expected",
    [
        (1.0, [0.8, 0.4]),  # clip inactive: step 0.2, w1 = w0 - 0.2 * (1, 3)
        (0.1, [0.9, 0.7]),  # clip active: step 0.1
    ],
)
def test_one_step_without_momentum(max_lr, expected):
    w, opt = make(max_lr)
    opt.step(closure_for(w, opt))
    torch.testing.assert_close(w.detach(), torch.tensor(expected, dtype=torch.float64))
    assert opt.param_groups[0]["step_size"].item() == pytest.approx(min(max_lr, 0.2))


@pytest.mark.parametrize(
    "max_lr, expected",
    [
        # step 0.2: z1 = -0.2 * (1, 3); w1 = w0 - 0.2 * (1, 3) + 0.9 * z1 = (0.62, -0.14)
        (1.0, [0.62, -0.14]),
        # step 0.1: w1 = w0 - 0.19 * (1, 3)
        (0.1, [0.81, 0.43]),
    ],
)
def test_one_step_with_momentum(max_lr, expected):
    w, opt = make(max_lr, momentum=0.9)
    opt.step(closure_for(w, opt))
    torch.testing.assert_close(w.detach(), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(
        opt.state[w]["momentum_buffer"], -min(max_lr, 0.2) * torch.tensor([1.0, 3.0], dtype=torch.float64)
    )


@pytest.mark.parametrize("adjusted", [False, True])
@pytest.mark.parametrize("max_lr", [1.0, 0.3])
def test_three_steps_match_hand_computation(adjusted, max_lr):
    # Several steps, so that the momentum buffer and a changing step size both matter
    # (the adjusted and the standard momentum agree on the first step only).
    w, opt = make(max_lr, momentum=0.9, eps=1e-5, adjusted_momentum=adjusted)
    w_hand, buf = [1.0, 1.0], [0.0, 0.0]
    for _ in range(3):
        opt.step(closure_for(w, opt))
        w_hand, buf, step = hand_step(w_hand, buf, max_lr, 0.9, eps=1e-5, adjusted=adjusted)
        torch.testing.assert_close(w.detach(), torch.tensor(w_hand, dtype=torch.float64))
        assert opt.param_groups[0]["step_size"].item() == pytest.approx(step, rel=1e-12)


def test_loss_of_closure_or_precomputed_gradient_agree():
    # The authors' usage (backward first, closure only returns the value) and the
    # torch usage (the closure recomputes the gradient) give the same step.
    w1, opt1 = make(1.0, momentum=0.5)
    w2, opt2 = make(1.0, momentum=0.5)
    for as_value in (lambda t: t, lambda t: t.item()):  # a tensor, then a float
        opt1.step(closure_for(w1, opt1))
        opt2.zero_grad()
        loss = quadratic(w2)
        loss.backward()
        returned = opt2.step(lambda as_value=as_value, loss=loss: as_value(loss))
        assert float(torch.as_tensor(returned).detach()) == pytest.approx(loss.item())
    torch.testing.assert_close(w1.detach(), w2.detach())


def test_squared_norm_is_global_and_clip_per_group():
    # Two groups: the step size uses ||g||^2 of all parameters, each group clips at its max_lr.
    u = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    v = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = AliG([{"params": [u]}, {"params": [v], "max_lr": 0.1}], max_lr=1.0, eps=0.0)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (u * u).sum() + 1.5 * (v * v).sum()  # = quadratic((u, v))
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.param_groups[0]["step_size"].item() == pytest.approx(0.2)
    assert opt.param_groups[1]["step_size"].item() == pytest.approx(0.1)
    assert u.item() == pytest.approx(0.8)
    assert v.item() == pytest.approx(1.0 - 0.1 * 3.0)


def test_unclipped_when_max_lr_is_none_and_no_step_for_zero_gradient():
    w, opt = make(None)
    w.data.mul_(1e3)  # far away: the Polyak step is still 0.2
    opt.step(closure_for(w, opt))
    assert opt.param_groups[0]["step_size"].item() == pytest.approx(0.2)
    # At the minimum, eps keeps the step finite and the parameters stay put.
    z = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = AliG([z], max_lr=None)
    opt.step(closure_for(z, opt))
    assert torch.equal(z.detach(), torch.zeros(2, dtype=torch.float64))


def test_projection_is_called_at_construction_and_after_every_step():
    calls = []
    radius = 0.5

    def project():
        calls.append(1)
        with torch.no_grad():
            norm = w.norm()
            if norm > radius:
                w.mul_(radius / norm)

    w = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    opt = AliG([w], max_lr=0.01, projection_fn=project)
    assert len(calls) == 1
    assert w.norm().item() == pytest.approx(radius)
    for step in range(1, 4):
        # Start each step outside the ball (norm 1): a step of at most 0.01 * ||A w|| keeps
        # w outside, so only the projection after the step brings it back to the sphere.
        w.data.mul_(2.0)
        opt.step(closure_for(w, opt))
        assert len(calls) == 1 + step
        assert w.norm().item() == pytest.approx(radius)


def test_missing_closure_is_a_clear_error():
    w, opt = make(0.1)
    quadratic(w).backward()
    with pytest.raises(ValueError, match="closure returning the loss"):
        opt.step()
    with pytest.raises(ValueError, match="returned None"):
        opt.step(lambda: None)
    with pytest.raises(ValueError, match="scalar"):
        opt.step(lambda: torch.ones(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_lr=0.0), "max_lr"),
        (dict(max_lr=-1.0), "max_lr"),
        (dict(max_lr=float("inf")), "max_lr"),
        (dict(max_lr=0.1, momentum=-0.1), "momentum"),
        (dict(max_lr=0.1, momentum=1.0), "momentum"),
        (dict(max_lr=0.1, eps=-1e-5), "eps"),
        (dict(max_lr=0.1, projection_fn="not callable"), "projection_fn"),
        (dict(max_lr=0.1, adjusted_momentum=1), "adjusted_momentum"),
    ],
)
def test_invalid_arguments(kwargs, match):
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=match):
        AliG([w], **kwargs)


def test_invalid_group_override():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="momentum"):
        AliG([{"params": [w], "momentum": 2.0}], max_lr=0.1)


def test_state_dict_round_trip_resumes_identically():
    w1, opt1 = make(0.5, momentum=0.9)
    opt1.step(closure_for(w1, opt1))
    w2 = torch.nn.Parameter(w1.detach().clone())
    opt2 = AliG([w2], max_lr=1.0)
    opt2.load_state_dict(copy.deepcopy(opt1.state_dict()))
    assert opt2.param_groups[0]["momentum"] == 0.9
    for _ in range(2):
        opt1.step(closure_for(w1, opt1))
        opt2.step(closure_for(w2, opt2))
    torch.testing.assert_close(w1.detach(), w2.detach(), rtol=0, atol=0)


def test_parameter_without_gradient_and_float32():
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    frozen = torch.nn.Parameter(torch.tensor([5.0]))
    opt = AliG([w, frozen], max_lr=1.0, momentum=0.9, eps=0.0)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (A.float() * w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert frozen.grad is None and frozen.item() == 5.0 and frozen not in opt.state
    torch.testing.assert_close(w.detach(), torch.tensor([0.62, -0.14]))
    assert opt.param_groups[0]["step_size"].dtype == torch.float32
