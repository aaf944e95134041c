"""Pre-classifiers of the paper: shapes, width multiplier, parameter counts, LSTM."""

import math

import pytest
import torch
from torch import nn

import alrao
import models

BASE_FEATURES = {"VGG19": 512, "GoogLeNet": 1024, "MobileNetV2": 1280, "SENet18": 512}


# Paper, appendix (PAPER.md "Parameter counts"): one 10-class linear classifier, then 10 copies.
PAPER_COUNTS = {"GoogLeNet": (6.166e6, 6.258e6), "VGG19": (20.041e6, 20.087e6), "MobileNetV2": (2.297e6, 2.412e6)}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def conv_widths(module):
    return [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_registry_lists_the_four_cnns():
    assert list(models.MODELS) == ["VGG19", "GoogLeNet", "MobileNetV2", "SENet18"]
    assert set(BASE_FEATURES) == set(models.MODELS)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_forward_backward_at_width_1_and_2(name):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    widths = {}
    for width in (1, 2):
        pre = models.build_preclassifier(name, size_multiplier=width)
        assert isinstance(pre.num_features, int)
        assert pre.num_features == BASE_FEATURES[name] * width
        out = pre(x)
        assert out.shape == (2, pre.num_features)
        out.square().mean().backward()
        grads = [p.grad for p in pre.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        widths[width] = conv_widths(pre)
    # The multiplier reaches every conv layer (the authors' code ignored it for VGG);
    # depth is unchanged. The SE squeeze of width 2 has twice the channels too.
    assert widths[2] == [2 * w for w in widths[1]]


@pytest.mark.parametrize("name", list(models.MODELS))
def test_fractional_width(name):
    pre = models.MODELS[name](0.25)
    assert pre.num_features == BASE_FEATURES[name] // 4
    with torch.no_grad():
        assert pre(torch.randn(2, 3, 32, 32)).shape == (2, pre.num_features)


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_parameter_counts_match_the_paper(name):
    pre = models.build_preclassifier(name)
    classifier = alrao.LinearClassifier(pre.num_features, 10)
    one, ten = PAPER_COUNTS[name]
    assert n_params(pre) + n_params(classifier) == pytest.approx(one, rel=5e-3)
    assert n_params(pre) + 10 * n_params(classifier) == pytest.approx(ten, rel=5e-3)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "3", True, None])
def test_bad_size_multiplier_is_refused(bad):
    with pytest.raises(ValueError, match="size_multiplier"):
        models.build_preclassifier("MobileNetV2", bad)


def test_unknown_model_name_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        models.build_preclassifier("ResNet18")
    message = str(info.value)
    assert "ResNet18" in message and all(name in message for name in models.MODELS)


# ------------------------------------------------------------------------ LSTM


@pytest.mark.parametrize(
    "ntoken, one, six",
    [
        (50, 0.172e6, 0.197e6),  # PTB characters
        (10000, 2.171e6, 7.221e6),
    ],
)  # PTB words
def test_lstm_parameter_counts_match_the_paper(ntoken, one, six):
    pre = models.RNNModel(ntoken, 100, 100, 2)
    decoder = alrao.LinearClassifierRNN(pre.num_features, ntoken)
    assert n_params(pre) + n_params(decoder) == pytest.approx(one, rel=5e-3)
    assert n_params(pre) + 6 * n_params(decoder) == pytest.approx(six, rel=5e-3)


def test_lstm_shapes_and_embedding_init():
    torch.manual_seed(0)
    pre = models.RNNModel(ntoken=30, ninp=8, nhid=12, nlayers=3, dropout=0.2)
    assert pre.num_features == 12
    assert pre.encoder.weight.abs().max() <= 0.1
    assert pre.rnn.dropout == 0.2 and pre.rnn.num_layers == 3
    h, c = pre.init_hidden(5)
    assert h.shape == c.shape == (3, 5, 12) and not h.any() and not c.any()
    output, (h, c) = pre(torch.randint(0, 30, (7, 5)), (h, c))
    assert output.shape == (7, 5, 12) and h.shape == c.shape == (3, 5, 12)
    output.sum().backward()
    assert pre.encoder.weight.grad is not None


def test_lstm_returns_the_new_hidden_state():
    """Two bptt chunks with the carried state equal one long chunk (the authors'
    code returned the initial state instead)."""
    torch.manual_seed(0)
    pre = models.RNNModel(ntoken=20, ninp=6, nhid=9, nlayers=2).eval()
    tokens = torch.randint(0, 20, (10, 3))
    whole, _ = pre(tokens, pre.init_hidden(3))
    first, hidden = pre(tokens[:4], pre.init_hidden(3))
    second, _ = pre(tokens[4:], hidden)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    assert not torch.allclose(second, pre(tokens[4:], pre.init_hidden(3))[0])


def test_other_recurrent_types_and_bad_arguments():
    gru = models.RNNModel(10, 4, 5, 1, rnn_type="GRU")
    hidden = gru.init_hidden(2)
    assert isinstance(hidden, torch.Tensor) and hidden.shape == (1, 2, 5)
    assert gru(torch.zeros(3, 2, dtype=torch.long), hidden)[0].shape == (3, 2, 5)
    with pytest.raises(ValueError, match="rnn_type 'QRNN'.*LSTM"):
        models.RNNModel(10, 4, 5, 1, rnn_type="QRNN")
    with pytest.raises(ValueError, match="nhid"):
        models.RNNModel(10, 4, 0, 1)
    with pytest.raises(ValueError, match="dropout"):
        models.RNNModel(10, 4, 5, 2, dropout=1.5)


def test_single_layer_lstm_does_not_warn(recwarn):
    models.RNNModel(10, 4, 5, 1, dropout=0.5)
    assert not [w for w in recwarn if "dropout" in str(w.message)]


# --------------------------------------------------------- with Alrao's model


def _alrao_model_or_skip():
    if not hasattr(alrao, "AlraoModel"):
        pytest.skip("alrao.AlraoModel is not available yet")
    return alrao.AlraoModel


def test_alrao_wraps_a_cnn_with_the_paper_parameter_count():
    AlraoModel = _alrao_model_or_skip()
    pre = models.build_preclassifier("MobileNetV2")
    model = AlraoModel("classification", nn.NLLLoss(), pre, 10, alrao.LinearClassifier, pre.num_features, 10)
    assert n_params(model) == pytest.approx(PAPER_COUNTS["MobileNetV2"][1], rel=5e-3)


def test_alrao_wraps_the_lstm():
    AlraoModel = _alrao_model_or_skip()
    pre = models.RNNModel(50, 100, 100, 2)
    model = AlraoModel("classification", nn.NLLLoss(), pre, 6, alrao.LinearClassifierRNN, 100, 50)
    assert n_params(model) == pytest.approx(0.197e6, rel=5e-3)
    log_probs, (h, c) = model(torch.randint(0, 50, (7, 4)), pre.init_hidden(4))
    assert log_probs.shape == (7 * 4, 50) and h.shape == (2, 4, 100)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(28), atol=1e-5)
    assert math.isfinite(log_probs.sum().item())
