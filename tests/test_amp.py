"""Mixed precision: autocast (copies in bf16, the mixture, copy losses and switch in float32),
a GradScaler's skipped step skipping the switch, and the order of step and update_switch."""

import gc

import pytest
import torch
from torch import nn

import alrao
import data


def digits_model(n_classes, seed=0):
    torch.manual_seed(seed)
    pre = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(192, 64), nn.ReLU())
    return alrao.AlraoModel("classification", nn.NLLLoss(), pre, 4, alrao.LinearClassifier, 64, n_classes)


def train_digits(amp: bool, steps: int = 300):
    train, _, _, n_classes = data.get_image_loaders("digits", None, 32, data_augm=False, device="cpu", seed=0)
    model = digits_model(n_classes)
    opt = alrao.AlraoSGD(model, 1e-3, 1.0, generator=torch.Generator().manual_seed(0))
    dtypes, losses = set(), []
    model.preclassifier[2].register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    while len(losses) < steps:
        for x, y in train:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                output = model(x)
                loss = model.loss(output, y)
            assert output.dtype == loss.dtype == model.last_copy_losses.dtype == torch.float32
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.update_switch()
            losses.append(loss.detach())
            if len(losses) == steps:
                break
    assert model.switch.logw.dtype == torch.float32
    return torch.stack(losses), model.posterior(), dtypes


def test_bf16_autocast_tracks_the_float32_run_on_digits():
    fp32, post32, dtypes32 = train_digits(amp=False)
    bf16, post16, dtypes16 = train_digits(amp=True)
    assert dtypes32 == {torch.float32} and dtypes16 == {torch.bfloat16}, "the pre-classifier ran in bf16"
    assert not torch.equal(fp32, bf16)
    for window in range(0, len(fp32), 100):  # mean loss per 100 steps (nats), within 25% (+0.01)
        a, b = fp32[window : window + 100].mean(), bf16[window : window + 100].mean()
        assert abs(float(a - b)) <= 0.25 * float(a) + 0.01, (window, float(a), float(b))
    assert float(fp32[-100:].mean()) < 0.1  # both runs learnt
    assert (post32 - post16).abs().max() < 0.05


def toy(seed=0):
    torch.manual_seed(seed)
    pre = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
    return alrao.AlraoModel("classification", nn.NLLLoss(), pre, 3, alrao.LinearClassifier, 6, 4)


def toy_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 5, generator=g), torch.randint(0, 4, (8,), generator=g)


def snapshot(model, opt):
    return (
        [p.detach().clone() for p in model.parameters()],
        {k: v.clone() for k, v in model.switch.state_dict().items()},
        [dict(s) for s in opt.state.values()],
    )


@pytest.mark.parametrize("optimizer", [alrao.AlraoSGD, alrao.AlraoAdam])
def test_a_step_skipped_by_the_grad_scaler_skips_the_switch(optimizer):
    model = toy()
    opt = optimizer(model, min_lr=1e-3, max_lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)

    def scaled_step(seed, poison=False):
        x, y = toy_batch(seed)
        loss = model.loss(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        if poison:
            next(model.preclassifier.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        model.update_switch()

    scaled_step(0)
    params, switch, _ = snapshot(model, opt)
    adam_steps = [s.get("step") for s in opt.state.values()]
    scaled_step(1, poison=True)
    assert scaler.get_scale() == 2.0**7, "the scaler found the inf and backed off"
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p, before), "the optimizer step was skipped"
    for name, value in model.switch.state_dict().items():
        assert torch.equal(value, switch[name]), f"the switch was left untouched ({name})"
    assert [s.get("step") for s in opt.state.values()] == adam_steps
    scaled_step(2)
    assert int(model.switch.t) == int(switch["t"]) + 1, "the next clean step updates the switch again"


def test_update_switch_before_step_is_made_by_the_step():
    """Both orders give the same switch: update_switch() then step(), or step() then update_switch()."""
    results = []
    for switch_first in (False, True):
        model = toy()
        opt = alrao.AlraoSGD(model, min_lr=1e-3, max_lr=1.0)
        for seed in range(3):
            x, y = toy_batch(seed)
            loss = model.loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            if switch_first:
                model.update_switch()
                assert int(model.switch.t) == 1 + seed, "waits for the step"
                opt.step()
            else:
                opt.step()
                model.update_switch()
            assert int(model.switch.t) == 2 + seed
        results.append(model.switch.log_posterior.clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_without_an_alrao_optimizer_the_switch_updates_at_once():
    model = toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = toy_batch(0)
    model.loss(model(x), y).backward()
    model.update_switch()
    assert int(model.switch.t) == 2
    opt.step()


def test_a_discarded_alrao_optimizer_does_not_hold_the_switch():
    model = toy()
    alrao.AlraoSGD(model, min_lr=1e-3, max_lr=1.0)  # built, then dropped
    gc.collect()
    x, y = toy_batch(0)
    model.loss(model(x), y).backward()
    model.update_switch()
    assert int(model.switch.t) == 2
