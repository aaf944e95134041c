"""Feature learning rates: one rate per feature, log-uniform, shared by all incoming parameters."""

import math
import warnings

import pytest
import torch
from scipy import stats
from torch import nn

import alrao
from alrao.lr_sampling import sample_feature_lrs

MIN_LR, MAX_LR = 1e-5, 10.0


def expanded(module, generator_seed=0):
    """{param name: rates broadcast to the parameter's full shape}."""
    gen = torch.Generator().manual_seed(generator_seed)
    lrs = sample_feature_lrs(module, MIN_LR, MAX_LR, generator=gen)
    return {name: lrs[p].expand_as(p) for name, p in module.named_parameters()}


def assert_in_range(rates):
    assert (rates >= MIN_LR * (1 - 1e-6)).all() and (rates <= MAX_LR * (1 + 1e-6)).all()


def per_feature(rates_by_feature):
    """Each entry: rates of one feature gathered from all its parameters -> one value."""
    values = []
    for r in rates_by_feature:
        assert torch.unique(r).numel() == 1, "a feature has more than one learning rate"
        values.append(r.flatten()[0])
    values = torch.stack(values)
    assert torch.unique(values).numel() == len(values), "two features share a rate"
    assert_in_range(values)
    return values


@pytest.mark.parametrize(
    "module", [nn.Linear(7, 5), nn.Conv1d(3, 6, 3), nn.Conv2d(3, 6, 3), nn.Conv3d(2, 4, 2), nn.Bilinear(3, 4, 5)]
)
def test_output_unit_rules(module):
    r = expanded(module)
    n = module.weight.shape[0]
    per_feature([torch.cat([r["weight"][i].flatten(), r["bias"][i : i + 1]]) for i in range(n)])


@pytest.mark.parametrize("cls,groups", [(nn.ConvTranspose1d, 1), (nn.ConvTranspose2d, 3), (nn.ConvTranspose3d, 3)])
def test_conv_transpose_output_channels(cls, groups):
    m = cls(6, 9, 2, groups=groups)
    r = expanded(m)
    w = r["weight"]  # (in, out/groups, *k)
    in_g, out_g = 6 // groups, 9 // groups
    features = []
    for o in range(9):
        g, j = divmod(o, out_g)
        features.append(torch.cat([w[g * in_g : (g + 1) * in_g, j].flatten(), r["bias"][o : o + 1]]))
    per_feature(features)


def test_embedding_dimension():
    r = expanded(nn.Embedding(11, 6))["weight"]
    per_feature([r[:, d] for d in range(6)])


@pytest.mark.parametrize("cls,gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_hidden_unit_shares_rate_across_gates(cls, gates, bidirectional):
    hidden = 5
    m = cls(3, hidden, num_layers=2, bidirectional=bidirectional)
    r = expanded(m)
    features = []
    for layer in range(2):
        for sfx in ["", "_reverse"][: 1 + bidirectional]:
            for h in range(hidden):
                rows = [g * hidden + h for g in range(gates)]
                parts = [
                    r[f"{kind}_{io}_l{layer}{sfx}"][rows].flatten()
                    for kind in ("weight", "bias")
                    for io in ("ih", "hh")
                ]
                features.append(torch.cat(parts))
    per_feature(features)


def test_lstm_projection_gets_rates():
    m = nn.LSTM(3, 6, proj_size=2)
    r = expanded(m)
    per_feature([r["weight_hr_l0"][i] for i in range(2)])


@pytest.mark.parametrize(
    "module", [nn.BatchNorm2d(5), nn.GroupNorm(1, 5), nn.LayerNorm(5), nn.InstanceNorm1d(5, affine=True)]
)
def test_norm_scale_and_shift_share_channel_rate(module):
    r = expanded(module)
    per_feature([torch.stack([r["weight"][c], r["bias"][c]]) for c in range(5)])


def test_log_uniform_ks():
    gen = torch.Generator().manual_seed(3)
    layer = nn.Linear(1, 4000)
    lrs = sample_feature_lrs(layer, MIN_LR, MAX_LR, generator=gen)[layer.bias]
    logs = torch.log(lrs.double()).numpy()
    lo, hi = math.log(MIN_LR), math.log(MAX_LR)
    assert stats.kstest(logs, stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue > 1e-3
    # and not uniform in the rates themselves
    assert stats.kstest(lrs.double().numpy(), stats.uniform(loc=MIN_LR, scale=MAX_LR - MIN_LR).cdf).pvalue < 1e-6


def test_generator_reproducible_and_compact():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))
    a = sample_feature_lrs(net, MIN_LR, MAX_LR, torch.Generator().manual_seed(1))
    b = sample_feature_lrs(net, MIN_LR, MAX_LR, torch.Generator().manual_seed(1))
    c = sample_feature_lrs(net, MIN_LR, MAX_LR, torch.Generator().manual_seed(2))
    for p in net.parameters():
        assert torch.equal(a[p], b[p]) and not torch.equal(a[p], c[p])
        assert a[p].dtype == p.dtype
    assert a[net[0].weight].shape == (8, 1, 1, 1)


def test_fallback_warns_once_naming_parameters():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4, 3))
            self.temp = nn.Parameter(torch.tensor(1.0))

    net = nn.Sequential(nn.Linear(2, 4), Scale())
    with pytest.warns(UserWarning, match=r"1\.gain, 1\.temp") as record:
        lrs = sample_feature_lrs(net, MIN_LR, MAX_LR)
    assert len(record) == 1
    assert lrs[net[1].gain].shape == (4, 1) and lrs[net[1].temp].shape == ()


def test_register_rule_for_custom_layer():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, 5))  # features along dim 1

    alrao.register_feature_rule(Gate, lambda mod, draw: {"w": draw(5).reshape(1, 5)})
    g = Gate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrs = sample_feature_lrs(g, MIN_LR, MAX_LR)
    assert lrs[g.w].shape == (1, 5)
    with pytest.raises(TypeError):
        alrao.register_feature_rule(int, lambda m, d: {})


def test_shared_parameter_gets_one_rate():
    a = nn.Linear(4, 4)
    net = nn.Sequential(a, nn.ReLU(), a)
    lrs = sample_feature_lrs(net, MIN_LR, MAX_LR)
    assert len(lrs) == 2


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.1), (1e-3, float("inf"))])
def test_invalid_interval(lo, hi):
    with pytest.raises(ValueError, match="lr"):
        sample_feature_lrs(nn.Linear(2, 2), lo, hi)


def test_per_weight_granularity_draws_one_rate_per_element():
    """The paper's ablation: every weight its own log-uniform rate, at the parameter's shape."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 5))
    lrs = sample_feature_lrs(net, 1e-5, 10.0, torch.Generator().manual_seed(0), granularity="weight")
    assert set(lrs) == set(net.parameters())
    for param, rate in lrs.items():
        assert rate.shape == param.shape and rate.dtype == param.dtype
        assert rate.min() >= 1e-5 * (1 - 1e-6) and rate.max() <= 10.0 * (1 + 1e-6)
    conv = lrs[net[0].weight]
    assert conv.reshape(8, -1).std(dim=1).min() > 0  # the rates of one filter differ
    again = sample_feature_lrs(net, 1e-5, 10.0, torch.Generator().manual_seed(0), granularity="weight")
    assert all(torch.equal(lrs[p], again[p]) for p in lrs)


def test_granularity_is_checked():
    with pytest.raises(ValueError, match="granularity must be one of"):
        sample_feature_lrs(nn.Linear(2, 2), 1e-3, 1.0, granularity="neuron")
    with pytest.raises(ValueError, match="granularity must be one of"):
        alrao.AlraoSGD(nn.Linear(2, 2), 1e-3, 1.0, granularity="neuron")


@pytest.mark.parametrize("n", [1, 2, 5])
def test_classifier_lr_grid_is_log_spaced_from_min_lr_to_max_lr(n):
    grid = alrao.classifier_lr_grid(1e-4, 1.0, n)
    expected = [1e-2] if n == 1 else [10 ** (-4 + 4 * j / (n - 1)) for j in range(n)]
    assert grid == pytest.approx(expected, rel=1e-12)


def test_classifier_lrs_the_function_is_a_deprecated_alias_of_classifier_lr_grid():
    from alrao.model import classifier_lrs as old_home

    for old in (alrao.classifier_lrs, old_home):
        with pytest.warns(DeprecationWarning, match="use alrao.classifier_lr_grid"):
            assert old(1e-3, 10.0, 4) == alrao.classifier_lr_grid(1e-3, 10.0, 4)
