"""The switch: the recurrence of PAPER.md, concentration, catching up, non-finite losses."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import alrao
from alrao import Switch


def transcription(losses, theta=0.9999):
    """PAPER.md's recurrence, line by line, in float64 numpy."""
    n = losses.shape[1]
    logw = np.empty((2, n))
    logw[0] = math.log(theta) - math.log(n)
    logw[1] = math.log(1 - theta) - math.log(n)
    t = 1
    posteriors = []
    for L in losses:
        logw = logw - L
        pi_t = 1 / (t + 1)
        pool = logsumexp(logw[0]) + math.log(pi_t)
        logw[0] += math.log(1 - pi_t)
        logw = np.logaddexp(logw, np.array([[math.log(theta)], [math.log(1 - theta)]]) + pool - math.log(n))
        logw = logw - logsumexp(logw)
        posteriors.append(np.exp(logsumexp(logw, axis=0)))
        t += 1
    return np.array(posteriors)


def run(switch, losses):
    out = []
    for L in losses:
        switch.update(torch.as_tensor(L))
        out.append(switch.posterior().double().numpy())
    return np.array(out)


def test_matches_transcription():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.1, 3.0, size=(300, 6))
    sw = Switch(6).double()
    assert np.allclose(run(sw, losses), transcription(losses), atol=1e-10, rtol=1e-8)
    assert int(sw.t) == 301


def plain_update(sw, losses):
    """Switch.update in its plain form (torch.logsumexp, torch.where): the switch's code before it was
    written with fewer operations. Returns the new (logw, log_posterior), leaves ``sw`` alone."""
    losses = losses.detach().to(sw.logw.dtype).reshape(-1)
    finite = torch.isfinite(losses)
    losses = torch.where(finite, losses, torch.full_like(losses, math.inf))
    best = losses.amin()
    losses = losses - torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    logw = sw.logw - losses
    t = sw.t.to(logw.dtype)
    pool = torch.logsumexp(logw[0], dim=0) + -torch.log1p(t)
    logw = torch.cat([logw[:1] + -torch.log1p(t.reciprocal()), logw[1:]], dim=0)
    logw = torch.logaddexp(logw, sw._log_prior_switch + pool - math.log(sw.n_models))
    logw = logw - torch.logsumexp(logw.reshape(-1), dim=0)
    logw = torch.where(finite.any(), logw, sw.logw)
    return logw, torch.where(finite.any(), torch.logsumexp(logw, dim=0), sw.log_posterior)


def hard_losses(n, steps=80):
    """Non-finite losses, all of them (an update to skip), huge ones, of two dtypes and shapes, and
    the step at which t jumps to 2**40."""
    g = torch.Generator().manual_seed(n)
    for step in range(steps):
        losses = torch.rand(n, generator=g, dtype=torch.float64) * 10.0 ** (step % 5 * 8 - 8)
        draw = torch.rand(n, generator=g)
        losses[draw < 0.1] = math.inf
        losses[(draw >= 0.1) & (draw < 0.15)] = math.nan
        losses[(draw >= 0.15) & (draw < 0.17)] = -math.inf
        if step % 13 == 4:
            losses[:] = math.nan if step % 2 else math.inf
        losses = losses.float() if step % 2 else losses
        yield step, losses.reshape(1, n) if step % 3 == 0 else losses


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 6, 17])
def test_the_accelerator_path_update_gives_the_bits_of_the_plain_form(n, dtype):
    """The device form (few operations): the same bits as plain_update, on hard losses."""
    sw = Switch(n).to(dtype)
    for step, losses in hard_losses(n):
        if step == 60:
            sw.t.fill_(2**40)
        logw, log_posterior = plain_update(sw, losses)
        t = int(sw.t)
        with alrao.accelerator_path():
            sw.update(losses)
        assert torch.equal(sw.logw, logw) and torch.equal(sw.log_posterior, log_posterior), step
        assert sw.logw.dtype == sw.log_posterior.dtype == dtype and int(sw.t) == t + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 6, 17])
def test_the_host_path_update_is_the_plain_form_in_double_precision(n, dtype):
    """The host form (Python floats): plain_update in float64 from the same state and losses,
    rounded once to the state's dtype."""
    sw = Switch(n).to(dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-7, atol=1e-6)
    for step, losses in hard_losses(n):
        if step == 60:
            sw.t.fill_(2**40)
        reference = Switch(n).double()
        reference.load_state_dict(sw.state_dict())
        logw, log_posterior = plain_update(reference, losses.double())
        t = int(sw.t)
        sw.update(losses)
        torch.testing.assert_close(sw.logw, logw.to(dtype), **tol, msg=f"step {step}")
        torch.testing.assert_close(sw.log_posterior, log_posterior.to(dtype), **tol, msg=f"step {step}")
        assert sw.logw.dtype == sw.log_posterior.dtype == dtype and int(sw.t) == t + 1


def test_initial_posterior_uniform_and_state_in_buffers():
    sw = Switch(4, theta=0.999)
    assert torch.allclose(sw.posterior(), torch.full((4,), 0.25))
    assert set(sw.state_dict()) == {"logw", "log_posterior", "t"}


def test_concentrates_on_consistently_better_copy():
    losses = np.tile([1.0, 0.8, 1.2, 1.5], (200, 1))
    post = run(Switch(4), losses)
    # Only the prior probability of switching (pi_t = 1/(t+1)) stays on the others.
    assert post[-1, 1] > 0.98 and post[-1, 1] > post[100, 1] > post[10, 1]
    assert abs(post[-1].sum() - 1) < 1e-5


def test_catches_up_when_best_copy_changes():
    losses = np.concatenate([np.tile([0.5, 1.0, 1.0], (500, 1)), np.tile([1.0, 0.5, 1.0], (30, 1))])
    post = run(Switch(3), losses)
    assert post[499, 0] > 0.99
    assert post[-1, 1] > 0.9, "the switch should follow the new best copy within a few dozen steps"


def test_non_finite_loss_removes_copy_and_all_bad_is_skipped():
    losses = np.concatenate([np.full((100, 3), 0.6), [[0.5, np.inf, 0.7]]])
    sw = Switch(3).double()
    run(sw, losses[:-1])
    sw.update(torch.tensor([0.5, float("nan"), 0.7], dtype=torch.float64))
    post = sw.posterior()
    # All its weight is gone; what it has is the fresh switching mass pi_t / N.
    assert np.allclose(post.numpy(), transcription(losses)[-1], atol=1e-12)
    assert post[1] < 0.005 and torch.isfinite(post).all() and abs(post.sum() - 1) < 1e-9
    before = sw.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    sw.update(torch.tensor([float("inf"), float("nan"), float("inf")]))
    assert torch.equal(sw.logw, before["logw"]) and torch.equal(sw.log_posterior, before["log_posterior"])


def test_validation():
    with pytest.raises(ValueError, match="n_models"):
        Switch(0)
    with pytest.raises(ValueError, match="theta"):
        Switch(3, theta=1.0)
    with pytest.raises(ValueError, match="3 losses"):
        Switch(3).update(torch.zeros(2))


@pytest.mark.parametrize("scale", [1e-8, 1e-3, 1.0, 1e3, 1e6, 1e9, 1e15, 1e30])
def test_float32_posterior_is_exact_for_any_loss_scale(scale):
    """The recurrence is invariant to shifting every loss by one constant; the switch uses it,
    so float32 keeps its precision when all losses are huge (float32 1e9 - 1.4 == 1e9)."""
    rng = np.random.default_rng(1)
    losses = (scale * rng.uniform(1.0, 4.0, size=(40, 5))).astype(np.float32).astype(np.float64)
    post = run(Switch(5), losses)
    assert np.isfinite(post).all() and (post >= 0).all()
    assert np.allclose(post.sum(axis=1), 1.0, atol=1e-5)
    # The float64 recurrence of PAPER.md on the same losses, each shifted by its row's minimum
    # (the same recurrence: the shift cancels in the normalisation) ...
    assert np.allclose(post, transcription(losses - losses.min(axis=1, keepdims=True)), atol=2e-5)
    if scale <= 1e6:  # ... and unshifted, where float64 itself is still exact
        assert np.allclose(post, transcription(losses), atol=2e-5)


def test_the_issue_example_of_huge_losses():
    sw = Switch(4)
    sw.update(torch.tensor([1e9, 2e9, 3e9, 4e9]))
    expected = transcription(np.array([[1e9, 2e9, 3e9, 4e9]]))[0]
    assert np.allclose(sw.posterior().numpy(), expected, atol=1e-6)
    assert abs(float(sw.posterior().sum()) - 1) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_state_stays_float32_in_a_half_precision_model_and_t_does_not_overflow(dtype):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.switch = Switch(3)
    model.switch.update(torch.tensor([0.3, 0.2, 0.1]))
    before = {k: v.clone() for k, v in model.switch.state_dict().items()}
    model.to(dtype)
    assert model[0].weight.dtype == dtype
    state = model.switch.state_dict()
    assert state["logw"].dtype == torch.float32 and state["log_posterior"].dtype == torch.float32
    assert state["t"].dtype == torch.int64
    assert all(torch.equal(before[k], state[k]) for k in before), "the cast must not round the state"
    # Past float16's largest number (65,504) the update stays a distribution, equal to float64's.
    reference = Switch(3).double()
    reference.update(torch.tensor([0.3, 0.2, 0.1]))
    for sw in (model.switch, reference):
        sw.t.fill_(70_000)
        sw.update(torch.tensor([0.5, 0.4, 0.6], dtype=dtype))
    post = model.switch.posterior()
    assert torch.isfinite(post).all() and abs(float(post.sum()) - 1) < 1e-6
    torch.testing.assert_close(post.double(), reference.posterior(), atol=1e-6, rtol=0)
    assert int(model.switch.t) == 70_001
