"""The CLIs' accelerator options on a CPU (issue 11): --amp, --compile, and training loops that
read nothing on the host between two progress refreshes."""

import json
from contextlib import contextmanager

import pytest
import torch

import alrao
import experiment
import main_cnn
import main_rnn
import models
from experiment import runtime

CNN = ["--dry_run", "--model_name", "VGG19", "--size_multiplier", "0.125", "--batch_size", "4", "--no-cuda"]
RNN = ["--dry_run", "--emsize", "8", "--nhid", "8", "--bptt", "8", "--batch_size", "4", "--no-cuda"]
CNN_ALRAO = ["--use_alrao", "--minLR", "-4", "--maxLR", "0", "--n_last_layers", "3"]
RNN_ALRAO = ["--use_alrao", "--minLR", "-2", "--maxLR", "1", "--n_last_layers", "4"]


def run(script, out_dir, *argv):
    base = CNN if script is main_cnn else RNN
    return script.main(script.build_parser().parse_args([*base, "--out_dir", str(out_dir), *argv]))


def config(out_dir):
    return json.loads((out_dir / "config.json").read_text())["args"]


# -------------------------------------------------------------------- --amp
@pytest.mark.parametrize("script", [main_cnn, main_rnn])
def test_amp_bf16_trains_a_plain_sgd_run_and_is_recorded(tmp_path, script):
    summary = run(script, tmp_path, "--amp", "bf16")
    assert summary["status"] == "completed" and summary["train_loss"] is not None
    assert config(tmp_path)["amp"] == "bf16"


@pytest.mark.parametrize("script, alrao_flags", [(main_cnn, CNN_ALRAO), (main_rnn, RNN_ALRAO)])
def test_amp_bf16_trains_an_alrao_run(tmp_path, script, alrao_flags):
    """Needs the library's autocast support (AlraoModel's copies under bf16 autocast)."""
    summary = run(script, tmp_path, *alrao_flags, "--amp", "bf16")
    assert summary["status"] == "completed" and summary["train_loss"] is not None
    assert config(tmp_path)["amp"] == "bf16"


def test_amp_bf16_stays_close_to_float32(tmp_path):
    fp32 = run(main_rnn, tmp_path / "fp32", "--epochs", "2")
    bf16 = run(main_rnn, tmp_path / "bf16", "--epochs", "2", "--amp", "bf16")
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.02)
    assert bf16["valid_loss"] == pytest.approx(fp32["valid_loss"], rel=0.02)


@pytest.mark.parametrize("script", [main_cnn, main_rnn])
def test_amp_fp16_on_a_cpu_is_a_one_line_error_before_anything_is_written(tmp_path, script, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(script, tmp_path / "run", "--amp", "fp16")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--amp fp16 runs only on CUDA" in err and "--amp bf16" in err
    assert not (tmp_path / "run").exists()


def test_the_amp_flag_takes_only_its_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main_cnn.build_parser().parse_args(["--amp", "fp8"])
    assert exit_.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err
    assert main_cnn.build_parser().parse_args([]).amp == "off"


def test_the_fp16_gradient_scaler_branch_forced_on_a_cpu(tmp_path, monkeypatch):
    """The CUDA-only fp16 branch (scaled backward, scaler step) on a CPU. The CNN: oneDNN has no
    float16 LSTM on a CPU."""
    monkeypatch.setattr(runtime, "FP16_DEVICE_TYPES", ("cuda", "cpu"))
    summary = run(main_cnn, tmp_path, "--amp", "fp16")
    assert summary["status"] == "completed" and summary["train_loss"] is not None


def test_a_step_the_scaler_skips_changes_nothing_and_says_so(monkeypatch):
    monkeypatch.setattr(runtime, "FP16_DEVICE_TYPES", ("cuda", "cpu"))
    precision = experiment.Precision("fp16", torch.device("cpu"))
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = [p.detach().clone() for p in layer.parameters()]
    with precision.autocast():
        loss = layer(torch.ones(1, 3)).sum()
    precision.backward(loss)
    layer.weight.grad[0, 0] = float("inf")  # an overflow in float16
    assert precision.step(optimizer, lambda: loss) is False
    assert all(torch.equal(p, q) for p, q in zip(before, layer.parameters()))
    optimizer.zero_grad()
    with precision.autocast():
        loss = layer(torch.ones(1, 3)).sum()
    precision.backward(loss)
    assert precision.step(optimizer, lambda: loss) is True
    assert not torch.equal(before[0], layer.weight)


def test_gradients_are_clipped_at_their_true_scale_with_a_scaler(monkeypatch):
    """main_rnn.py clips after ``unscale_``: the scaled gradients (x 65,536) come back to their values."""
    monkeypatch.setattr(runtime, "FP16_DEVICE_TYPES", ("cuda", "cpu"))
    layer = torch.nn.Linear(3, 2)
    layer(torch.ones(1, 3)).sum().backward()
    expected = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    precision = experiment.Precision("fp16", torch.device("cpu"))
    precision.backward(layer(torch.ones(1, 3)).sum())
    assert torch.allclose(layer.weight.grad, expected[0] * precision.scaler.get_scale())
    precision.unscale_(torch.optim.SGD(layer.parameters(), lr=0.1))
    assert all(torch.allclose(p.grad, e) for p, e in zip(layer.parameters(), expected))


# ---------------------------------------------------------------- --compile
def test_compile_compiles_the_model_and_runs_end_to_end(tmp_path, monkeypatch):
    """An Alrao run with --compile. Dynamo's "eager" backend keeps the test fast: what is tested is
    that the model's forward is captured and run compiled, not inductor's code generation."""
    compiled = []
    real_compile = torch.nn.Module.compile

    def compile_(module, *args, **kwargs):
        compiled.append(module)
        real_compile(module, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    summary = run(main_rnn, tmp_path, *RNN_ALRAO, "--compile")
    assert summary["status"] == "completed" and summary["train_loss"] is not None
    (model,) = compiled
    assert isinstance(model, alrao.AlraoModel) and model._compiled_call_impl is not None
    assert config(tmp_path)["compile"] is True
    saved = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    assert not any(key.startswith("_orig_mod") for key in saved)  # checkpoints as without --compile


# ------------------------------------------------- no host read (item 4, CLI)
class HostRead(AssertionError):
    """A tensor was read on the host inside the training steps."""


# What reads a tensor on the host (a device synchronisation on an accelerator).
HOST_READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy", "nonzero")


@contextmanager
def host_reads_fail(monkeypatch):
    """Within this block the host reads of :data:`HOST_READS` raise :class:`HostRead`, except
    inside ``Meter.means`` (the progress refresh every ``REFRESH_EVERY`` steps); yields the
    list of refreshes that read."""
    allowed, refreshes = [False], []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def guarded(self, *args, _real=real, _name=name, **kwargs):
            if not allowed[0]:
                raise HostRead(f"Tensor.{_name} in a training step")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: (_ for _ in ()).throw(HostRead("synchronize")))
    real_means = experiment.Meter.means

    def means(self):
        allowed[0] = True
        try:
            refreshes.append(self.count)
            return real_means(self)
        finally:
            allowed[0] = False

    monkeypatch.setattr(experiment.Meter, "means", means)
    yield refreshes
    monkeypatch.undo()


def test_the_host_read_guard_catches_a_read(monkeypatch):
    with host_reads_fail(monkeypatch), pytest.raises(HostRead):
        torch.ones(2).sum().item()


def cli_args(script, *argv):
    return script.build_parser().parse_args([*(CNN if script is main_cnn else RNN), *argv])


STEPS = 2 * experiment.REFRESH_EVERY + 3  # two refreshes inside the epoch, one at its end
cpu = torch.device("cpu")


# Plain runs with SGD only: torch's own Adam reads its step counter, a CPU tensor by design.
@pytest.mark.parametrize(
    "optimizer, flags, amp",
    [
        ("SGD", [], "off"),
        ("SGD", [], "bf16"),
        ("SGD", CNN_ALRAO, "off"),
        ("Adam", CNN_ALRAO, "off"),
        ("SGD", CNN_ALRAO, "bf16"),
    ],
    ids=["plain", "plain-bf16", "alrao", "alrao-adam", "alrao-bf16"],
)
def test_the_cnn_loop_reads_the_host_only_at_progress_refreshes(monkeypatch, optimizer, flags, amp):
    torch.manual_seed(0)
    args = cli_args(main_cnn, *flags, "--optimizer", optimizer)
    pre = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    pre = torch.nn.Sequential(pre, torch.nn.Flatten())
    model = experiment.build_model(args, pre, alrao.LinearClassifier, 4, 10)
    optim = experiment.build_optimizer(model, args, torch.Generator().manual_seed(0))
    loader = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(STEPS)]
    with alrao.accelerator_path(), host_reads_fail(monkeypatch) as refreshes:
        result = main_cnn.train_epoch(model, loader, optim, 1, cpu, experiment.Precision(amp, cpu))
    assert refreshes == [40, 80, 92] and not result["diverged"]


@pytest.mark.parametrize(
    "optimizer, flags, amp",
    [
        ("SGD", [], "off"),
        ("SGD", [], "bf16"),
        ("SGD", RNN_ALRAO, "off"),
        ("Adam", RNN_ALRAO, "off"),
        ("SGD", RNN_ALRAO, "bf16"),
    ],
    ids=["plain", "plain-bf16", "alrao", "alrao-adam", "alrao-bf16"],
)
def test_the_rnn_loop_reads_the_host_only_at_progress_refreshes(monkeypatch, optimizer, flags, amp):
    """Gradient clipping included (--clip 0.25, the default): ``clip_grad_norm_`` must not read."""
    torch.manual_seed(0)
    args = cli_args(main_rnn, *flags, "--optimizer", optimizer)
    pre = models.RNNModel(20, 8, 8, 2, 0.2)
    model = experiment.build_model(args, pre, alrao.LinearClassifierRNN, 8, 20)
    optim = experiment.build_optimizer(model, args, torch.Generator().manual_seed(0))
    source = torch.randint(0, 20, (STEPS * args.bptt + 1, args.batch_size))
    with alrao.accelerator_path(), host_reads_fail(monkeypatch) as refreshes:
        result = main_rnn.train_epoch(model, source, optim, args, 1, experiment.Precision(amp, cpu))
    tokens = args.bptt * args.batch_size
    assert refreshes == [10 * tokens, 20 * tokens, STEPS * tokens] and not result["diverged"]
