"""AlraoSGD / AlraoAdam: equal to torch at min_lr == max_lr, foreach == reference,
feature rates applied per feature, schedulers, state_dict round trips, validation."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import alrao


def net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    # no conv bias: before a BatchNorm its gradient is pure rounding noise, which Adam amplifies
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        nn.LayerNorm(5),
        nn.Linear(5, 3),
    ).to(dtype)


def data(n_steps=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n_steps)]


def train(model, opt, batches, scheduler=None):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x.to(next(model.parameters()).dtype)), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return model


SGD_OPTIONS = [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.5, dampening=0.3),
    dict(weight_decay=1e-2),
    dict(momentum=0.9, weight_decay=1e-2, nesterov=True),
    dict(momentum=0.9, maximize=True),
]
ADAM_OPTIONS = [
    dict(),
    dict(amsgrad=True),
    dict(weight_decay=1e-2),
    dict(betas=(0.5, 0.9), eps=1e-6, amsgrad=True, weight_decay=1e-3),
    dict(maximize=True),
]


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("options", SGD_OPTIONS)
def test_sgd_equals_torch_when_interval_is_a_point(options, foreach):
    lr = 0.05
    a, b = net(), net()
    train(a, torch.optim.SGD(a.parameters(), lr=lr, **options), data())
    train(b, alrao.AlraoSGD(b, lr, lr, foreach=foreach, **options), data())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("options", ADAM_OPTIONS)
def test_adam_equals_torch_when_interval_is_a_point(options, foreach):
    lr = 1e-2
    a, b = net(), net()
    train(a, torch.optim.Adam(a.parameters(), lr=lr, **options), data())
    train(b, alrao.AlraoAdam(b, lr, lr, foreach=foreach, **options), data())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def mixed_model():
    """Several groups (relative rates), a parameter without gradient, float32 and float64 parts."""
    torch.manual_seed(0)
    m = nn.ModuleDict(dict(a=nn.Linear(4, 4), b=nn.Linear(4, 4).double(), unused=nn.Linear(4, 2)))
    alrao.relative_lr(m["a"], 0.5)
    alrao.relative_weight_decay(m["b"], 2.0, "bias")
    return m


def train_mixed(m, opt, steps=4):
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x = torch.randn(5, 4, generator=g)
        loss = m["a"](x).pow(2).mean() + m["b"](x.double()).sin().mean().float()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize(
    "make",
    [
        lambda m, fe: alrao.AlraoSGD(
            m, 1e-3, 1.0, momentum=0.9, weight_decay=1e-2, foreach=fe, generator=torch.Generator().manual_seed(5)
        ),
        lambda m, fe: alrao.AlraoSGD(
            m, 1e-3, 1.0, momentum=0.9, nesterov=True, foreach=fe, generator=torch.Generator().manual_seed(5)
        ),
        lambda m, fe: alrao.AlraoAdam(
            m, 1e-4, 1e-1, amsgrad=True, weight_decay=1e-2, foreach=fe, generator=torch.Generator().manual_seed(5)
        ),
    ],
)
def test_foreach_equals_reference(make):
    a, b = mixed_model(), mixed_model()
    opt_a, opt_b = make(a, True), make(b, False)
    assert len(opt_a.param_groups) == 3
    train_mixed(a, opt_a)
    train_mixed(b, opt_b)
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.dtype == q.dtype
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert torch.equal(a["unused"].weight, mixed_model()["unused"].weight)


def test_each_feature_moves_at_its_own_rate():
    lin = nn.Linear(3, 4)
    opt = alrao.AlraoSGD(lin, 1e-3, 1.0)
    before = lin.weight.detach().clone(), lin.bias.detach().clone()
    lin.weight.grad = torch.ones_like(lin.weight)
    lin.bias.grad = torch.ones_like(lin.bias)
    opt.step()
    rates = opt.state[lin.weight]["feature_lr"].reshape(4)
    torch.testing.assert_close(before[0] - lin.weight, rates[:, None].expand(4, 3))
    torch.testing.assert_close(before[1] - lin.bias, rates)
    assert torch.equal(opt.state[lin.bias]["feature_lr"], rates)


def test_alrao_model_copies_get_log_spaced_rates():
    pre = nn.Linear(3, 4)
    m = alrao.AlraoModel("classification", nn.NLLLoss(), pre, 5, alrao.LinearClassifier, 4, 2)
    opt = alrao.AlraoSGD(m, 1e-4, 1.0)
    assert opt.classifier_lrs() == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    for _j, c in enumerate(m.classifiers):
        for p in c.parameters():
            assert opt.state[p]["feature_lr"].dim() == 0
    assert opt.state[pre.weight]["feature_lr"].shape == (4, 1)


def test_scheduler_scales_every_rate():
    lin = nn.Linear(3, 2)
    opt = alrao.AlraoSGD(lin, 1e-2, 1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    opt.step()  # no gradient yet: nothing moves
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    before = lin.weight.detach().clone()
    lin.weight.grad = torch.ones_like(lin.weight)
    opt.step()
    expected = 0.1 * opt.state[lin.weight]["feature_lr"].expand(2, 3)
    torch.testing.assert_close(before - lin.weight, expected)


@pytest.mark.parametrize(
    "cls,kwargs", [(alrao.AlraoSGD, dict(momentum=0.9, weight_decay=1e-3)), (alrao.AlraoAdam, dict(amsgrad=True))]
)
def test_resume_equals_uninterrupted(cls, kwargs):
    def build(seed):
        torch.manual_seed(seed)
        pre = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
        m = alrao.AlraoModel("classification", nn.NLLLoss(), pre, 3, alrao.LinearClassifier, 6, 3)
        return m, cls(m, 1e-3, 1.0, generator=torch.Generator().manual_seed(seed), **kwargs)

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(10)]

    def steps(m, opt, bs):
        for x, y in bs:
            loss = m.loss(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            m.update_switch()

    full, full_opt = build(0)
    steps(full, full_opt, batches)

    first, first_opt = build(0)
    steps(first, first_opt, batches[:4])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, map_location="cpu")
    resumed, resumed_opt = build(1)  # other weights and other feature rates, overwritten by the load
    resumed.load_state_dict(ckpt["model"])
    resumed_opt.load_state_dict(ckpt["optimizer"])
    steps(resumed, resumed_opt, batches[4:])
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    for name, buffer in full.named_buffers():
        assert torch.equal(buffer, dict(resumed.named_buffers())[name]), name
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(full_opt.state[p]["feature_lr"], resumed_opt.state[q]["feature_lr"])


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda m: alrao.AlraoSGD(m, 0.0, 1.0), "min_lr"),
        (lambda m: alrao.AlraoSGD(m, 1.0, 0.1), "max_lr"),
        (lambda m: alrao.AlraoSGD(m, 1e-3, 1.0, momentum=-1), "momentum"),
        (lambda m: alrao.AlraoSGD(m, 1e-3, 1.0, nesterov=True), "nesterov"),
        (lambda m: alrao.AlraoSGD(m, 1e-3, 1.0, weight_decay=-1), "weight_decay"),
        (lambda m: alrao.AlraoAdam(m, 1e-3, 1.0, betas=(0.9, 1.0)), "betas"),
        (lambda m: alrao.AlraoAdam(m, 1e-3, 1.0, eps=-1.0), "eps"),
        (lambda m: alrao.AlraoSGD(list(m.parameters()), 1e-3, 1.0), "nn.Module"),
    ],
)
def test_invalid_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make(nn.Linear(2, 2))


def test_closure_and_added_group():
    lin = nn.Linear(2, 1)
    opt = alrao.AlraoAdam(lin, 1e-3, 1e-1)
    extra = nn.Parameter(torch.zeros(3, 2))
    with pytest.warns(UserWarning, match="added without a module"):
        opt.add_param_group({"params": [extra]})
    assert opt.state[extra]["feature_lr"].shape == (3, 1)

    def closure():
        opt.zero_grad()
        loss = lin(torch.ones(1, 2)).sum() + extra.sum()
        loss.backward()
        return loss

    assert torch.isfinite(opt.step(closure))
    assert copy.deepcopy(opt.state_dict())["state"][0]["step"] == 1


def test_an_added_group_may_bring_its_feature_rates():
    lin = nn.Linear(2, 1)
    opt = alrao.AlraoSGD(lin, 1e-3, 1e-1)
    extra, rates = nn.Parameter(torch.zeros(3, 2)), torch.full((3, 1), 0.5)
    group = {"params": [extra], "feature_lrs": {extra: rates}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback rates, no warning
        opt.add_param_group(group)
    assert opt.state[extra]["feature_lr"] is rates and "feature_lrs" not in opt.param_groups[-1]


@pytest.mark.parametrize(
    "feature_lrs, match",
    [
        (lambda extra: {nn.Parameter(torch.zeros(1)): torch.ones(1)}, "not in the group"),
        (lambda extra: {extra: torch.ones(4)}, "must be a tensor that broadcasts against it"),
        (lambda extra: {extra: 0.5}, "must be a tensor that broadcasts against it"),
    ],
)
def test_an_added_groups_bad_feature_rates_are_one_error_and_add_nothing(feature_lrs, match):
    opt = alrao.AlraoSGD(nn.Linear(2, 1), 1e-3, 1e-1)
    extra = nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [extra], "feature_lrs": feature_lrs(extra)})
    assert len(opt.param_groups) == 1 and extra not in opt.state


OPTIMIZERS = pytest.mark.parametrize(
    "make",
    [
        lambda m, g: alrao.AlraoSGD(m, 1e-3, 1.0, momentum=0.9, generator=g),
        lambda m, g: alrao.AlraoAdam(m, 1e-3, 1.0, generator=g),
        lambda m, g: alrao.AlraoSGD(m, 1e-3, 1.0, foreach=False, generator=g),
    ],
    ids=["sgd", "adam", "sgd-reference"],
)


@OPTIMIZERS
def test_optimizer_built_before_a_dtype_change_equals_one_built_after(make):
    """Like torch's optimizers, either order works: the feature rates follow their parameter
    (device and dtype) at the first step."""
    before = net()
    opt_before = make(before, torch.Generator().manual_seed(0))
    before.double()
    after = net(dtype=torch.float64)
    opt_after = make(after, torch.Generator().manual_seed(0))
    batches = data(3)
    train(before, opt_before, batches)
    train(after, opt_after, batches)
    for p, q in zip(before.parameters(), after.parameters()):  # rates drawn in float32, then cast
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert all(rate.dtype == torch.float64 for rate in opt_before.feature_lrs().values())


class RateOnAnotherDevice:
    """A feature-rate tensor as left on the old device by ``model.to('cuda')`` after the
    optimizer was built (CPU has no second dense device; this stands in for it)."""

    device = torch.device("cuda", 1)

    def __init__(self, rate):
        self.rate, self.dtype, self.moves = rate, rate.dtype, []

    def to(self, device, dtype):
        self.moves.append(device)
        return self.rate.to(device=device, dtype=dtype)


@OPTIMIZERS
def test_optimizer_built_before_a_device_move_moves_the_rates_once(make):
    moved, reference = net(), net()
    opt, opt_ref = make(moved, torch.Generator().manual_seed(0)), make(reference, torch.Generator().manual_seed(0))
    stale = {}
    for p, state in opt.state.items():
        stale[p] = state["feature_lr"] = RateOnAnotherDevice(state["feature_lr"])
    batches = data(2)
    train(moved, opt, batches)
    train(reference, opt_ref, batches)
    for p, q in zip(moved.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    for p, rate in opt.feature_lrs().items():
        assert isinstance(rate, torch.Tensor) and rate.device == p.device
        assert stale[p].moves == [p.device], "moved once, at the first step"
