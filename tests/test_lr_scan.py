"""Tests of alrao.tools.lr_scan: exact restoration after each probe, and the closed form on a quadratic."""

import copy

import pytest
import torch
from torch import nn

from alrao.tools import AliG, LRScanResult, lr_scan, plot_lr_scan

LRS = [1e-3, 1e-2, 0.1, 0.5, 1.0]


# ---------------------------------------------------------------- quadratic, closed form
class Point(nn.Module):
    """A model whose output is its parameter w, whatever the input."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, _inputs):
        return self.w


def quadratic_setup():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(4, dtype=torch.float64)  # symmetric positive definite
    w_star = torch.randn(4, generator=gen, dtype=torch.float64)
    w0 = torch.randn(4, generator=gen, dtype=torch.float64)

    def loss_fn(w, target):
        d = w - target
        return 0.5 * d @ a @ d

    return a, w_star, w0, loss_fn


def test_sgd_scan_equals_closed_form_on_a_quadratic():
    a, w_star, w0, loss_fn = quadratic_setup()
    model = Point(w0)
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0)
    result = lr_scan(model, loss_fn, (None, w_star), optimizer, LRS)
    d = w0 - w_star
    assert result.loss_before == pytest.approx((0.5 * d @ a @ d).item(), rel=1e-12)
    for lr, loss in zip(LRS, result.losses):
        # w1 - w* = (I - lr A)(w0 - w*)
        d1 = d - lr * (a @ d)
        assert loss == pytest.approx((0.5 * d1 @ a @ d1).item(), rel=1e-10)
    assert optimizer.param_groups[0]["lr"] == 123.0
    assert torch.equal(model.w.detach(), w0)


def test_sgd_with_momentum_buffer_equals_closed_form():
    # With a momentum buffer b from an earlier step, one step is w1 = w0 - lr (mu b + g):
    # every probe must start from the same buffer.
    a, w_star, w0, loss_fn = quadratic_setup()
    model = Point(w0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn(model(None), w_star).backward()
    optimizer.step()
    b = optimizer.state[model.w]["momentum_buffer"].clone()
    w = model.w.detach().clone()
    result = lr_scan(model, loss_fn, (None, w_star), optimizer, LRS)
    d = w - w_star
    for lr, loss in zip(LRS, result.losses):
        d1 = d - lr * (0.9 * b + a @ d)
        assert loss == pytest.approx((0.5 * d1 @ a @ d1).item(), rel=1e-10)
    assert torch.equal(optimizer.state[model.w]["momentum_buffer"], b)


# ---------------------------------------------------------------- exact restoration
class Net(nn.Module):
    """BatchNorm and dropout: both change state or draw random numbers in train mode."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3), nn.LogSoftmax(dim=-1)
        )

    def forward(self, x):
        return self.body(x)


def net_setup(optimizer_class, **kw):
    torch.manual_seed(0)
    model = Net().train()
    optimizer = optimizer_class(model.parameters(), **kw)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    # Two real steps first, so that the optimizer has state and BatchNorm has statistics.
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.nll_loss(model(x), y).backward()
        optimizer.step()
    return model, optimizer, (x, y)


def state_of(model, optimizer):
    return (
        copy.deepcopy(model.state_dict()),
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        copy.deepcopy(optimizer.state_dict()),
    )


def assert_same_state(before, after):
    (sd0, g0, opt0), (sd1, g1, opt1) = before, after
    assert sd0.keys() == sd1.keys()
    for key in sd0:  # num_batches_tracked and running stats included
        assert torch.equal(sd0[key], sd1[key]), key
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert opt0["param_groups"] == opt1["param_groups"]
    assert opt0["state"].keys() == opt1["state"].keys()
    for index in opt0["state"]:
        for name, value in opt0["state"][index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt1["state"][index][name])), name


def manual_probe(model, optimizer, batch, lr, rng_state):
    """One step at lr on deep copies, from the given RNG state: what each probe must equal."""
    model, optimizer_copy = copy.deepcopy((model, optimizer))
    for group in optimizer_copy.param_groups:
        group["lr"] = lr
    torch.set_rng_state(rng_state)
    x, y = batch
    optimizer_copy.zero_grad()
    nn.functional.nll_loss(model(x), y).backward()
    optimizer_copy.step()
    with torch.no_grad():
        return nn.functional.nll_loss(model(x), y).item()


@pytest.mark.parametrize(
    "optimizer_class, kw",
    [
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
        (torch.optim.Adam, dict(lr=1e-3)),
    ],
)
def test_restoration_is_exact_in_train_mode(optimizer_class, kw):
    model, optimizer, batch = net_setup(optimizer_class, **kw)
    before = state_of(model, optimizer)
    rng = torch.get_rng_state()
    twin_model, twin_optimizer = copy.deepcopy((model, optimizer))

    result = lr_scan(model, nn.NLLLoss(), batch, optimizer, LRS)

    assert_same_state(before, state_of(model, optimizer))
    assert model.training
    # The caller's random stream is unchanged: same state, same next dropout draw.
    assert torch.equal(torch.get_rng_state(), rng)
    draw = nn.functional.dropout(torch.ones(1000), 0.5)
    torch.set_rng_state(rng)
    assert torch.equal(draw, nn.functional.dropout(torch.ones(1000), 0.5))
    # Each probe equals one step taken on a copy from the same starting point and RNG state.
    for lr, loss in zip(LRS, result.losses):
        assert loss == pytest.approx(manual_probe(model, optimizer, batch, lr, rng), rel=1e-6)
    # The optimizer still drives the same parameter objects: training on is unaffected.
    for m, opt in ((model, optimizer), (twin_model, twin_optimizer)):
        torch.set_rng_state(rng)
        opt.zero_grad()
        nn.functional.nll_loss(m(batch[0]), batch[1]).backward()
        opt.step()
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)


def test_dropout_draws_are_identical_in_every_probe():
    model, optimizer, batch = net_setup(torch.optim.SGD, lr=0.1)
    result = lr_scan(model, nn.NLLLoss(), batch, optimizer, [0.3, 0.3, 0.3])
    assert result.losses[0] == result.losses[1] == result.losses[2]
    # and the loss before the step uses the same draw as the gradient of each probe
    with torch.no_grad():
        rng = torch.get_rng_state()
        expected = nn.functional.nll_loss(model(batch[0]), batch[1]).item()
        torch.set_rng_state(rng)
    assert result.loss_before == pytest.approx(expected, rel=1e-6)


def test_probe_order_does_not_matter():
    model, optimizer, batch = net_setup(torch.optim.Adam, lr=1e-3)
    forward = lr_scan(model, nn.NLLLoss(), batch, optimizer, LRS)
    backward = lr_scan(model, nn.NLLLoss(), batch, optimizer, LRS[::-1])
    assert forward.losses == backward.losses[::-1]
    assert forward.loss_before == backward.loss_before


def test_restores_after_an_error_in_the_middle():
    model, optimizer, batch = net_setup(torch.optim.SGD, lr=0.1, momentum=0.9)
    before = state_of(model, optimizer)
    calls = []

    def loss_fn(output, target):
        calls.append(1)
        if len(calls) == 4:  # base loss, probe 1 (2 calls), then fail in probe 2
            raise RuntimeError("boom")
        return nn.functional.nll_loss(output, target)

    with pytest.raises(RuntimeError, match="boom"):
        lr_scan(model, loss_fn, batch, optimizer, LRS)
    assert_same_state(before, state_of(model, optimizer))


def test_buffer_reassigned_in_forward_gets_its_tensor_back():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)
            self.register_buffer("count", torch.zeros(()))

        def forward(self, x):
            self.count = self.count + 1  # re-assignment, not in place
            return self.lin(x).squeeze(-1)

    model = Counter()
    original = model.count
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lr_scan(model, nn.MSELoss(), (torch.randn(4, 2), torch.randn(4)), optimizer, [0.1, 1.0])
    assert model.count is original and model.count.item() == 0


def test_closure_mode_and_lr_key_for_alig():
    # A closure as loss_fn (batch=None), and AliG scanned through its max_lr.
    a, w_star, w0, loss_fn = quadratic_setup()
    model = Point(w0)
    optimizer = AliG(model.parameters(), max_lr=1.0, eps=0.0)
    result = lr_scan(model, lambda: loss_fn(model.w, w_star), None, optimizer, [1e-4, 1e-3, 1e3], lr_key="max_lr")
    d = w0 - w_star
    g = a @ d
    polyak = (0.5 * d @ a @ d / (g @ g)).item()
    for max_lr, loss in zip(result.lrs, result.losses):
        d1 = d - min(max_lr, polyak) * g
        assert loss == pytest.approx((0.5 * d1 @ a @ d1).item(), rel=1e-10)
    assert optimizer.param_groups[0]["max_lr"] == 1.0
    assert optimizer.param_groups[0]["step_size"] is None


def test_tensor_lr_stays_a_tensor():
    model, optimizer, batch = net_setup(torch.optim.Adam, lr=torch.tensor(1e-3))
    result = lr_scan(model, nn.NLLLoss(), batch, optimizer, [1e-3, 1e-2])
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)
    assert optimizer.param_groups[0]["lr"].item() == pytest.approx(1e-3)
    assert result.losses[0] != result.losses[1]


# ---------------------------------------------------------------- errors, result, plot
@pytest.mark.parametrize(
    "lrs, match",
    [
        ([], "empty"),
        ([0.1, 0.0], "0.0"),
        ([-1.0], "-1.0"),
        ([float("nan")], "nan"),
        (["0.1"], "'0.1'"),
        (0.1, "list"),
    ],
)
def test_invalid_lrs(lrs, match):
    model, optimizer, batch = net_setup(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=match):
        lr_scan(model, nn.NLLLoss(), batch, optimizer, lrs)


def test_missing_lr_key_and_bad_loss():
    model, optimizer, batch = net_setup(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="no 'max_lr'.*lr_key="):
        lr_scan(model, nn.NLLLoss(), batch, optimizer, [0.1], lr_key="max_lr")
    with pytest.raises(ValueError, match="scalar tensor"):
        lr_scan(model, nn.NLLLoss(reduction="none"), batch, optimizer, [0.1])
    with pytest.raises(ValueError, match="pair"):
        lr_scan(model, nn.NLLLoss(), (batch[0],), optimizer, [0.1])


def test_result_best_lr_and_json_dict():
    result = LRScanResult(lrs=(0.1, 1.0, 10.0), losses=(0.5, 0.2, float("inf")), loss_before=0.7)
    assert result.best_lr == 1.0
    assert result.to_dict() == {
        "lr_key": "lr",
        "lrs": [0.1, 1.0, 10.0],
        "losses": [0.5, 0.2, None],
        "loss_before": 0.7,
        "best_lr": 1.0,
    }
    assert LRScanResult(lrs=(1.0,), losses=(float("nan"),), loss_before=1.0).best_lr is None


def test_plot_saves_a_png(tmp_path):
    result = LRScanResult(lrs=(1e-3, 1e-1, 10.0), losses=(0.5, 0.2, float("nan")), loss_before=0.7)
    path = tmp_path / "scan.png"
    ax = plot_lr_scan(result, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [path]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["after one step", "before the step", "diverged (not finite)"]
    assert ax.get_lines()[1].get_ydata()[0] == 0.7


# ---------------------------------------------------------------- with the rest of alrao
def test_relative_rates_are_kept_and_frozen_modules_stay_frozen():
    from alrao.relative import relative_lr, relative_param_groups

    torch.manual_seed(0)
    net = nn.Sequential(
        relative_lr(nn.Linear(4, 4), 0.0), nn.Tanh(), relative_lr(nn.Linear(4, 4), 0.1), nn.Tanh(), nn.Linear(4, 1)
    )
    optimizer = torch.optim.SGD(relative_param_groups(net, lr=1.0))
    batch = (torch.randn(8, 4), torch.randn(8, 1))
    result = lr_scan(net, nn.MSELoss(), batch, optimizer, [0.05, 0.5])
    for lr, loss in zip(result.lrs, result.losses):
        copy_net = copy.deepcopy(net)
        sgd = torch.optim.SGD(
            [
                {"params": copy_net[0].parameters(), "lr": 0.0},
                {"params": copy_net[2].parameters(), "lr": 0.1 * lr},
                {"params": copy_net[4].parameters(), "lr": lr},
            ]
        )
        nn.functional.mse_loss(copy_net(batch[0]), batch[1]).backward()
        sgd.step()
        assert torch.equal(copy_net[0].weight, net[0].weight)  # frozen in the probe too
        with torch.no_grad():
            assert loss == pytest.approx(nn.functional.mse_loss(copy_net(batch[0]), batch[1]).item(), rel=1e-6)
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.1, 1.0]


def test_alrao_sgd_lr_is_a_multiplier_of_the_feature_rates():
    # With min_lr == max_lr == c every feature rate is c: probing the multiplier m
    # must equal probing plain SGD at m * c.
    from alrao.optim import AlraoSGD

    model, _, batch = net_setup(torch.optim.SGD, lr=0.1)
    factors = [0.1, 1.0, 10.0]
    alrao_scan = lr_scan(model, nn.NLLLoss(), batch, AlraoSGD(model, min_lr=0.01, max_lr=0.01), factors)
    sgd_scan = lr_scan(
        model, nn.NLLLoss(), batch, torch.optim.SGD(model.parameters(), lr=1.0), [0.01 * m for m in factors]
    )
    assert alrao_scan.losses == pytest.approx(sgd_scan.losses, rel=1e-5)


def test_alrao_model_scan_restores_the_switch():
    from alrao.layers import LinearClassifier
    from alrao.model import AlraoModel
    from alrao.optim import AlraoSGD

    torch.manual_seed(0)
    pre = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU())
    model = AlraoModel("classification", nn.NLLLoss(), pre, 3, LinearClassifier, 8, 3)
    optimizer = AlraoSGD(model, min_lr=1e-3, max_lr=1.0, momentum=0.9)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(2):  # a trained switch and momentum buffers
        optimizer.zero_grad()
        model.loss(model(x), y).backward()
        optimizer.step()
        model.update_switch()
    before = state_of(model, optimizer)
    result = lr_scan(model, model.loss, (x, y), optimizer, [0.1, 1.0, 10.0])
    assert_same_state(before, state_of(model, optimizer))
    assert len(result.losses) == 3 and result.best_lr is not None


# ---------------------------------------------------------------- the command line (lr_scan.py)
class TinyPre(nn.Module):
    """A small pre-classifier for fast command-line tests (the registry's networks are large)."""

    def __init__(self, size_multiplier=1):
        super().__init__()
        self.num_features = round(8 * size_multiplier)  # --size_multiplier is a float, as main_cnn.py's
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=4),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, self.num_features),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.body(x)


def run_cli(argv):
    import lr_scan as cli

    return cli.main(cli.build_parser().parse_args([*argv, "--no-cuda"]))  # the suite runs on the CPU


def test_cli_scans_a_registry_model_and_writes_png_and_json(tmp_path, capsys):
    import json

    out = tmp_path / "scan.png"
    result = run_cli(
        [
            "--model_name",
            "MobileNetV2",
            "--dataset",
            "fake",
            "--batch_size",
            "2",
            "--minLR",
            "-3",
            "--maxLR",
            "-1",
            "--n_points",
            "2",
            "--out",
            str(out),
            "--no-cuda",
        ]
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "scan.json").read_text())
    assert saved["lrs"] == pytest.approx([1e-3, 1e-1])
    assert saved["losses"] == list(result.losses) and saved["loss_before"] == result.loss_before
    assert saved["config"]["model_name"] == "MobileNetV2"
    assert "loss before the step" in capsys.readouterr().out


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_cli_is_reproducible_and_equals_the_library_scan(tmp_path, monkeypatch, optimizer):
    import alrao
    import data
    import models

    monkeypatch.setitem(models.MODELS, "Tiny", TinyPre)
    monkeypatch.setattr(models, "MODEL_NAMES", (*models.MODEL_NAMES, "Tiny"))  # the --model_name choices
    monkeypatch.setitem(models.NARROWEST_WIDTH, "Tiny", 4)  # the --size_multiplier check
    argv = [
        "--model_name",
        "Tiny",
        "--dataset",
        "fake",
        "--batch_size",
        "8",
        "--optimizer",
        optimizer,
        "--minLR",
        "-2",
        "--maxLR",
        "1",
        "--n_points",
        "4",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "a.png"),
    ]
    first, second = run_cli(argv), run_cli(argv)
    assert first == second
    # The same scan written by hand from the library.
    torch.manual_seed(3)
    pre = TinyPre()
    model = nn.Sequential(pre, alrao.LinearClassifier(pre.num_features, 10)).train()
    loader = data.get_image_loaders("fake", "unused", 8, data_augm=False, device=torch.device("cpu"), seed=3, limit=8)[
        0
    ]
    opt = getattr(torch.optim, optimizer)(model.parameters(), lr=1.0)
    expected = lr_scan(model, nn.NLLLoss(), next(iter(loader)), opt, [1e-2, 1e-1, 1.0, 10.0])
    assert first.losses == pytest.approx(expected.losses, rel=1e-6)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--minLR", "1", "--maxLR", "-1"], "must be smaller"),
        (["--n_points", "1", "--minLR", "-2", "--maxLR", "0"], "one rate"),
        (["--out", "scan.pdf"], "png"),
        (["--out", "no/such/folder/scan.png"], "does not exist"),
        (["--optimizer", "LBFGS"], "invalid choice"),
        (["--minLR", "1e-5", "--maxLR", "1"], "(--minLR -5 means 1e-5, --maxLR 1 means 10)"),
        (["--dataset", "fake", "--data_path", "/data"], "--data_path /data is not used by --dataset fake"),
        (["--model_name", "VGG19", "--size_multiplier", "0.01"], "--size_multiplier 0.01 is below 0.015625"),
    ],
)
def test_cli_bad_flags_are_argparse_errors(argv, match, capsys):
    import lr_scan as cli

    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_cli_flags_agree_with_main_cnn():
    """The flags lr_scan.py shares with main_cnn.py take the same values (one definition)."""
    import lr_scan as cli
    import main_cnn

    argv = ["--size_multiplier", "0.25", "--batch_size", "4", "--seed", "2", "--minLR", "-3", "--maxLR", "0"]
    scan = cli.build_parser().parse_args([*argv, "--no_cuda"])
    train = main_cnn.build_parser().parse_args([*argv, "--use_alrao", "--no-cuda"])  # the former spelling
    for flag in ("size_multiplier", "batch_size", "seed", "minLR", "maxLR", "model_name", "no_cuda"):
        assert getattr(scan, flag) == getattr(train, flag), flag
    assert scan.size_multiplier == 0.25 and scan.no_cuda and train.no_cuda


def test_cli_learning_rate_grid():
    import lr_scan as cli

    lrs = cli.learning_rates(-5, 1, 13)
    assert len(lrs) == 13 and lrs[0] == 1e-5 and lrs[-1] == 10.0
    assert lrs == pytest.approx([10.0 ** (-5 + 0.5 * i) for i in range(13)], rel=1e-12)
    assert cli.learning_rates(-2, -2, 1) == [0.01]
