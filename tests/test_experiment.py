"""Tests of the plumbing shared by the experiment scripts (package ``experiment``)."""

import ast
import importlib.util
import io
import json
import math
import os
import pickle
import platform
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_script import DEFAULTS
from torch import nn

import alrao
import experiment
from experiment import run_folder

ROOT = Path(__file__).resolve().parents[1]


def make_parser():
    parser = experiment.ArgumentParser(prog="script.py")
    groups = experiment.add_common_arguments(parser, DEFAULTS)
    groups["model"].add_argument("--width", type=experiment.positive_int, default=3, help="a model flag")
    return parser


def parse(*argv):
    return make_parser().parse_args(list(argv))


def tiny_model(args, n_in=4, n_classes=3):
    torch.manual_seed(0)
    pre = nn.Sequential(nn.Linear(n_in, 6), nn.ReLU())
    return experiment.build_model(args, pre, alrao.LinearClassifier, 6, n_classes)


def strict_json(text):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


# ----------------------------------------------------------------------- files
def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    experiment.write_json(path, {"x": 1})
    experiment.write_json(path, {"x": 2})
    assert strict_json(path.read_text()) == {"x": 2}
    experiment.atomic_torch_save({"t": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", map_location="cpu", weights_only=True)["t"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "c.pt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "c.pt"
    experiment.atomic_torch_save({"epoch": 1}, path)
    with pytest.raises((AttributeError, pickle.PicklingError)):  # a local lambda does not pickle
        experiment.atomic_torch_save({"epoch": 2, "bad": lambda: 0}, path)  # lambdas do not pickle
    assert torch.load(path, map_location="cpu", weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_json_is_strict_non_finite_numbers_become_null(tmp_path):
    path = tmp_path / "m.jsonl"
    experiment.write_jsonl(path, [{"loss": math.nan, "acc": 0.5}, {"loss": math.inf, "p": torch.tensor([0.25, 0.75])}])
    lines = [strict_json(line) for line in path.read_text().splitlines()]
    assert lines == [{"loss": None, "acc": 0.5}, {"loss": None, "p": [0.25, 0.75]}]


# -------------------------------------------------------------- early stopping
def test_early_stopping_counts_epochs_without_strict_improvement():
    stopper = experiment.EarlyStopping(patience=2)
    improved = [stopper.step(e, loss) for e, loss in enumerate([3.0, 2.0, 2.0, math.nan], start=1)]
    assert improved == [True, True, False, False]
    assert stopper.best_epoch == 2 and stopper.best_loss == 2.0 and stopper.should_stop
    copy = experiment.EarlyStopping(patience=2)
    copy.load_state_dict(stopper.state_dict())
    assert copy.state_dict() == stopper.state_dict()


def test_early_stopping_without_patience_never_stops_but_tracks_the_best():
    stopper = experiment.EarlyStopping(patience=None)
    for epoch in range(1, 50):
        stopper.step(epoch, 1.0 + epoch)
    assert not stopper.should_stop and stopper.best_epoch == 1
    with pytest.raises(ValueError, match="patience"):
        experiment.EarlyStopping(patience=0)


# ----------------------------------------------------------------------- flags
def test_defaults_are_resolved_from_the_other_flags():
    plain = parse()
    assert (plain.dataset, plain.lr, plain.minLR, plain.n_last_layers) == ("real", 0.01, None, None)
    assert parse("--optimizer", "Adam").lr == 1e-3
    assert (parse("--dry_run").dataset, parse("--dry_run").epochs) == ("fake", 1)
    assert parse("--dry_run", "--dataset", "real").dataset == "real"
    alr = parse("--use_alrao")
    assert (alr.lr, alr.minLR, alr.maxLR, alr.n_last_layers) == (None, -5, 1, 4)
    assert parse("--use_alrao", "--minLR", "-2", "--maxLR", "-2").minLR == -2  # one rate: plain SGD
    assert (plain.lr_granularity, alr.lr_granularity) == (None, "feature")
    assert (plain.epochs, plain.patience, plain.early_stopping, plain.momentum, plain.seed) == (50, 20, True, 0.0, 0)
    stopless = parse("--no-early_stopping")
    assert stopless.early_stopping is False and stopless.patience is None


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--use_alrao", "--minLR", "2", "--maxLR", "-1"], "--minLR 2 is above --maxLR -1"),
        (["--use_alrao", "--n_last_layers", "0"], "argument --n_last_layers: expected an integer >= 1, got 0"),
        (["--epochs", "-3"], "argument --epochs: expected an integer >= 1, got -3"),
        (["--epochs", "2.5"], "expected an integer >= 1, got '2.5'"),
        (["--use_alrao", "--minLR", "nan"], "argument --minLR: expected a log10 learning rate in [-300, 300], got nan"),
        (["--lr", "-0.1"], "argument --lr: expected a number > 0, got -0.1"),
        (["--minLR", "-3"], "--minLR -3 is used only with --use_alrao"),
        (["--n_last_layers", "6"], "--n_last_layers 6 is used only with --use_alrao"),
        (["--lr_granularity", "weight"], "--lr_granularity weight is used only with --use_alrao"),
        (["--use_alrao", "--lr_granularity", "neuron"], "invalid choice: 'neuron'"),
        (["--use_alrao", "--lr", "0.1"], "--lr 0.1 is the plain optimizer's learning rate"),
        (["--optimizer", "Adam", "--momentum", "0.9"], "--momentum 0.9 is not used by --optimizer Adam"),
        (["--optimizer", "RMSprop"], "invalid choice: 'RMSprop'"),
        (["--dataset", "cifar100"], "invalid choice: 'cifar100'"),
        (["--resume"], "--resume needs --out_dir"),
        (["--no-early_stopping", "--patience", "5"], "--patience 5 is used only with early stopping"),
    ],
)
def test_invalid_command_lines_exit_2_naming_the_value(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and err.startswith("usage: script.py")


def test_help_lists_every_flag_with_its_help_text(capsys):
    parser = make_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        assert action.help, action.option_strings
        for option in action.option_strings:
            assert option in text
    for group in experiment.flags.GROUPS:
        assert f"{group}:" in text
    assert "(default: -5)" in text and "(default: 0.01 for SGD, 0.001 for Adam)" in text


# ------------------------------------------------------------------ optimizers
def test_plain_optimizers_honour_momentum_and_weight_decay():
    args = parse("--lr", "0.5", "--momentum", "0.9", "--weight_decay", "1e-4")
    optimizer = experiment.build_optimizer(tiny_model(args), args)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.5, 0.9, 1e-4)
    args = parse("--optimizer", "Adam", "--weight_decay", "1e-3")
    optimizer = experiment.build_optimizer(tiny_model(args), args)
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["weight_decay"] == 1e-3


@pytest.mark.parametrize("name, cls", [("SGD", alrao.AlraoSGD), ("Adam", alrao.AlraoAdam)])
def test_alrao_optimizers_take_log10_flags_and_a_seeded_generator(name, cls):
    args = parse("--use_alrao", "--optimizer", name, "--minLR", "-4", "--maxLR", "-1")
    model = tiny_model(args)
    first = experiment.build_optimizer(model, args, experiment.derived_generator(3, "feature_lrs"))
    assert type(first) is cls
    assert first.classifier_lrs() == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    again = experiment.build_optimizer(model, args, experiment.derived_generator(3, "feature_lrs"))
    other = experiment.build_optimizer(model, args, experiment.derived_generator(4, "feature_lrs"))
    weight = model.preclassifier[0].weight
    rates = first.feature_lrs()[weight]
    assert torch.equal(rates, again.feature_lrs()[weight])
    assert not torch.equal(rates, other.feature_lrs()[weight])
    assert ((rates >= 1e-4 * (1 - 1e-6)) & (rates <= 1e-1 * (1 + 1e-6))).all()


def test_every_optimizer_of_the_table_builds_plain_and_alrao():
    for name, spec in experiment.OPTIMIZERS.items():
        if spec.package is not None and importlib.util.find_spec(spec.package[0]) is None:
            continue  # an optional baseline, not installed (tests/test_baselines.py checks the error)
        args = parse("--optimizer", name)
        group = experiment.build_optimizer(tiny_model(args), args).param_groups[0]
        assert group.get("lr", group.get("max_lr")) == spec.default_lr  # AliG's --lr is its max_lr
        if spec.alrao is not None:
            args = parse("--optimizer", name, "--use_alrao")
            assert len(experiment.build_optimizer(tiny_model(args), args).classifier_lrs()) == 4


def test_the_registry_is_the_one_list_of_optimizers():
    """--optimizer, reproduce.py's baselines and the one-process rule of the distributed runs all
    read experiment.optimizers.OPTIMIZERS; reading it loads no torch (--help reads it)."""
    from experiment import distributed, optimizers
    from experiment.flags import OPTIMIZER_CHOICES
    from reproduce_lib.experiments import BASELINES

    assert (
        list(OPTIMIZER_CHOICES)
        == list(experiment.OPTIMIZERS)
        == make_parser()._option_string_actions["--optimizer"].choices
    )
    assert BASELINES == tuple(name for name, spec in experiment.OPTIMIZERS.items() if spec.alrao is None)
    assert distributed.LOCAL_LOSS_OPTIMIZERS == {"AliG"}
    assert experiment.MissingPackage is optimizers.MissingPackage is experiment.baselines.MissingPackage
    code = "import sys, experiment.optimizers; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_optimizer_hooks_name_the_network_they_return():
    """``evaluation_network()`` is what the loops and the run call; ``eval()``, its former name,
    still answers the same network (a subclass overrides the new name only)."""
    model = nn.Linear(2, 2)
    hooks = experiment.OptimizerHooks(model)
    assert hooks.evaluation_network() is model and hooks.eval() is model
    assert (hooks.record(), hooks.state_dict()) == ({}, {})

    class Averaged(experiment.OptimizerHooks):
        def evaluation_network(self):
            return averaged

    averaged = nn.Linear(2, 2)
    assert Averaged(model).eval() is averaged


# --------------------------------------------------------------------- runtime
def test_seeding_and_the_feature_rate_stream_are_reproducible_and_independent():
    experiment.seed_everything(5)
    first = (random.random(), np.random.rand(), torch.rand(3))
    experiment.seed_everything(5)
    assert first[:2] == (random.random(), np.random.rand()) and torch.equal(first[2], torch.rand(3))
    experiment.seed_everything(5)
    global_draw = torch.rand(8)
    stream_draw = torch.rand(8, generator=experiment.derived_generator(5, "feature_lrs"))
    assert not torch.equal(global_draw, stream_draw)
    assert torch.equal(stream_draw, torch.rand(8, generator=experiment.derived_generator(5, "feature_lrs")))


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    device = torch.device("cpu")
    experiment.seed_everything(1)
    experiment.atomic_torch_save(experiment.rng_state(device), tmp_path / "rng.pt")
    draws = (random.random(), np.random.rand(), torch.rand(2))
    random.random(), np.random.rand(), torch.rand(5)
    experiment.set_rng_state(torch.load(tmp_path / "rng.pt", map_location="cpu", weights_only=True), device)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_choose_device_honours_no_cuda():
    device, text = experiment.choose_device(no_cuda=True)
    assert device.type == "cpu" and "--no_cuda" in text


# ---------------------------------------------------------------- model, meter
def test_plain_model_passes_extra_outputs_through_and_counts_parameters():
    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x, state):
            return self.fc(x), state + 1

    plain = experiment.PlainModel(nn.NLLLoss(), WithState(), alrao.LinearClassifier(6, 3))
    y, state = plain(torch.randn(2, 4), torch.zeros(()))
    assert y.shape == (2, 3) and state == 1
    assert torch.allclose(y.exp().sum(1), torch.ones(2))
    counts = experiment.count_parameters(plain)
    assert counts == {"n_parameters": 30 + 21, "n_parameters_without_copies": 30 + 21}
    args = parse("--use_alrao")
    counts = experiment.count_parameters(tiny_model(args))
    assert counts == {"n_parameters": 30 + 4 * 21, "n_parameters_without_copies": 30 + 21}


def test_meter_equals_the_direct_computation():
    torch.manual_seed(0)
    meter = experiment.Meter()
    batches = [(torch.randn(3, 5, 4).log_softmax(-1), torch.randint(0, 4, (5,))) for _ in range(3)]
    batches.append((torch.randn(3, 2, 4).log_softmax(-1), torch.randint(0, 4, (2,))))  # a smaller last batch
    for copies, y in batches:
        mixed = copies.logsumexp(0) - math.log(3)
        copy_losses = torch.stack([nn.functional.nll_loss(c, y) for c in copies])
        meter.add(nn.functional.nll_loss(mixed, y), mixed, y, copy_losses, copies)
    all_copies = torch.cat([c for c, _ in batches], 1)
    y = torch.cat([y for _, y in batches])
    mixed = all_copies.logsumexp(0) - math.log(3)
    means = meter.means()
    assert means["loss"] == pytest.approx(nn.functional.nll_loss(mixed, y).item())
    assert means["acc"] == pytest.approx((mixed.argmax(1) == y).double().mean().item())
    assert means["copy_loss"] == pytest.approx([nn.functional.nll_loss(c, y).item() for c in all_copies])
    assert means["copy_acc"] == pytest.approx([(c.argmax(1) == y).double().mean().item() for c in all_copies])
    assert math.isnan(experiment.Meter().means()["loss"])


@pytest.mark.parametrize("flags", [["--lr", "0.1"], ["--use_alrao"]], ids=["plain", "alrao"])
def test_train_steps_is_one_loop_for_plain_and_alrao_models(flags):
    """The same loop trains both models: a plain one has no copies to report and no switch."""
    args = parse(*flags)
    model = tiny_model(args)
    optimizer = experiment.build_optimizer(model, args, torch.Generator().manual_seed(0))
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(experiment.REFRESH_EVERY + 2)]

    def step(batch):
        x, y = batch
        output = model(x)
        loss = model.loss(output, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss, output, y, True

    means = experiment.train_steps(model, batches, 1, step)
    assert not means["diverged"] and math.isfinite(means["loss"])
    assert ("copy_loss" in means) == args.use_alrao
    if args.use_alrao:
        assert int(model.switch.t) == 1 + len(batches)  # one switch update per step (t counts from 1)
    else:
        assert model.last_copy_losses is None and model.update_switch() is None and model.check() is None


def test_train_steps_stops_at_the_refresh_that_sees_a_diverged_loss():
    model = tiny_model(parse("--lr", "0.1"))
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(3 * experiment.REFRESH_EVERY)]
    taken = []

    def step(batch):
        x, y = batch
        taken.append(batch)
        output = model(x)
        return torch.tensor(math.nan), output, y, True

    means = experiment.train_steps(model, batches, 1, step)
    assert means["diverged"] and len(taken) == experiment.REFRESH_EVERY


def test_epoch_record_of_plain_and_alrao_runs():
    args = parse("--lr", "0.1")
    model = tiny_model(args)
    optimizer = experiment.build_optimizer(model, args)
    splits = {"train": {"loss": 2.0, "acc": 0.5}, "valid": {"loss": 1.0, "acc": 0.25}, "test": None}
    record = experiment.epoch_record(model, optimizer, splits, diverged=False, loss_unit="bpc")
    assert record["valid_bpc"] == pytest.approx(1 / math.log(2)) and record["lr"] == 0.1
    assert math.isnan(record["test_loss"]) and math.isnan(record["test_bpc"])
    assert "posterior" not in record and record["diverged"] is False
    ppl = experiment.epoch_record(model, optimizer, splits, diverged=False, loss_unit="ppl")
    assert ppl["train_ppl"] == pytest.approx(math.exp(2.0)) and math.isnan(ppl["test_ppl"])

    args = parse("--use_alrao")
    model = tiny_model(args)
    optimizer = experiment.build_optimizer(model, args)
    splits["train"] = {**splits["train"], "copy_loss": [1.0] * 4, "copy_acc": [0.5] * 4}
    record = experiment.epoch_record(model, optimizer, splits, diverged=False)
    assert record["posterior"] == pytest.approx([0.25] * 4) and len(record["classifier_lrs"]) == 4
    assert record["copy_train_loss"] == [1.0] * 4 and "lr" not in record
    assert len(experiment.format_copies({**record, "epoch": 1})) == 4


def test_summary_reports_the_best_validation_epoch():
    history = [
        {"epoch": 1, "valid_loss": 2.0, "test_loss": 2.1, "diverged": False, "epoch_time_s": 1.0},
        {"epoch": 2, "valid_loss": 1.5, "test_loss": 1.7, "diverged": False, "epoch_time_s": 1.0},
        {"epoch": 3, "valid_loss": 1.5, "test_loss": 1.0, "diverged": False, "epoch_time_s": 1.0},
        {"epoch": 4, "valid_loss": math.nan, "test_loss": math.nan, "diverged": True, "epoch_time_s": 1.0},
    ]
    summary = experiment.summarize(history, "diverged")
    assert summary == {
        "status": "diverged",
        "epochs_completed": 4,
        "diverged": True,
        "best_epoch": 2,
        "valid_loss": 1.5,
        "test_loss": 1.7,
        "wall_time_s": 4.0,
    }
    assert experiment.summarize(history[3:], "diverged")["test_loss"] is None


# ------------------------------------------------------------------------- Run
def run_epochs(run, losses):
    """Drive a Run with a fixed validation-loss sequence (nan: the training diverged)."""
    for epoch in run.epochs():
        loss = losses[epoch - 1]
        run.end_epoch({"train_loss": loss, "valid_loss": loss, "test_loss": loss, "diverged": math.isnan(loss)})
    return run.finish()


def start_run(tmp_path, *argv):
    args = parse("--out_dir", str(tmp_path / "run"), *argv)
    run = experiment.Run(args, "script.py", "test", torch.device("cpu"))
    model = tiny_model(args)
    run.start(model, experiment.build_optimizer(model, args), n_parameters=51)
    return run


def test_a_run_writes_its_files_and_stops_early(tmp_path, capsys):
    run = start_run(tmp_path, "--patience", "2", "--epochs", "10")
    summary = run_epochs(run, [3.0, 2.0, 2.5, 2.2, 1.0])
    out = tmp_path / "run"
    assert summary["status"] == "early_stopped" and summary["best_epoch"] == 2 and summary["epochs_completed"] == 4
    assert summary["n_parameters"] == 51
    assert strict_json((out / "summary.json").read_text()) == experiment.to_json(summary)
    config = strict_json((out / "config.json").read_text())
    assert config["script"] == "script.py" and config["args"]["patience"] == 2 and config["n_parameters"] == 51
    metrics = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4] and all(m["epoch_time_s"] >= 0 for m in metrics)
    checkpoint = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 4 and checkpoint["status"] == "early_stopped"
    assert torch.load(out / "best.pt", map_location="cpu", weights_only=True)["epoch"] == 2
    assert "early stopping" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(run_folder.RUN_FILES + (run_folder.LOCK,))


def test_a_diverged_run_is_recorded_and_stops(tmp_path):
    run = start_run(tmp_path, "--epochs", "5")
    summary = run_epochs(run, [2.0, math.nan, 1.0])
    assert (summary["status"], summary["diverged"], summary["epochs_completed"], summary["best_epoch"]) == (
        "diverged",
        True,
        2,
        1,
    )
    last = strict_json((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["diverged"] is True and last["train_loss"] is None


def test_the_out_dir_of_a_run_is_never_silently_reused(tmp_path, capsys):
    start_run(tmp_path, "--epochs", "1")
    with pytest.raises(experiment.UsageError, match="already holds a run .*pass --resume"):
        start_run(tmp_path, "--epochs", "1")
    with pytest.raises(experiment.UsageError, match="no checkpoint"):
        start_run(tmp_path / "elsewhere", "--resume")
    with pytest.raises(SystemExit):
        start_run(tmp_path, "--resume", "--lr", "0.5", "--seed", "3", "--epochs", "7")
    assert re.search(
        r"--lr 0.5 \(run: 0.01\), --seed 3 \(run: 0\); `--resume --out_dir .*` alone continues it, and only "
        "--compile, --data_path, --epochs, --no_cuda, --num_workers may change",
        capsys.readouterr().err,
    )
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_text("not a checkpoint")
    with pytest.raises(experiment.UsageError, match="cannot read"):
        experiment.Run(parse("--out_dir", str(tmp_path / "bad"), "--resume"), "script.py", "t", torch.device("cpu"))


@pytest.mark.skipif(run_folder.fcntl is None, reason="no flock on this platform")
def test_a_folder_being_trained_is_not_trained_by_a_second_process(tmp_path):
    first = start_run(tmp_path, "--epochs", "4")
    with pytest.raises(experiment.UsageError, match="being trained by another process"):
        start_run(tmp_path, "--epochs", "4", "--resume")  # e.g. a sweep started again beside an orphaned run
    run_epochs(first, [3.0, 2.0, 1.0, 0.5])  # finishing releases the folder
    resumed = start_run(tmp_path, "--epochs", "6", "--resume")
    assert resumed.epoch == 4


def test_resume_continues_the_history_and_the_generators(tmp_path):
    losses = [3.0, 2.0, 2.5, 1.0]
    run = start_run(tmp_path, "--epochs", "2")
    run_epochs(run, losses)
    expected_draw = torch.rand(3)  # the global generator right after epoch 2
    resumed = start_run(tmp_path, "--epochs", "4", "--resume")
    assert resumed.epoch == 2 and torch.equal(torch.rand(3), expected_draw)
    summary = run_epochs(resumed, losses)
    assert summary["epochs_completed"] == 4 and summary["best_epoch"] == 4 and summary["status"] == "completed"
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [strict_json(m)["epoch"] for m in metrics] == [1, 2, 3, 4]


def test_sigterm_is_handled_as_ctrl_c_with_the_status_143(tmp_path, capsys):
    run = start_run(tmp_path, "--epochs", "5")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        with run:
            for epoch in run.epochs():
                if epoch == 2:
                    os.kill(os.getpid(), signal.SIGTERM)  # as Slurm does at a time limit
                run.end_epoch({"valid_loss": 1.0 / epoch, "diverged": False})
    assert exit_info.value.code == 143 and "interrupted during epoch 2" in capsys.readouterr().err
    assert strict_json((tmp_path / "run" / "summary.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the run's only while it runs


def test_ctrl_c_keeps_the_last_checkpoint_and_says_how_to_resume(tmp_path, capsys):
    run = start_run(tmp_path, "--epochs", "5")
    with pytest.raises(SystemExit) as exit_info:
        with run:
            for epoch in run.epochs():
                if epoch == 3:
                    raise KeyboardInterrupt
                run.end_epoch({"valid_loss": 1.0 / epoch, "diverged": False})
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted during epoch 3" in err and f"--resume --out_dir {tmp_path / 'run'}" in err
    assert torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"] == 2
    summary = strict_json((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 2
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


def test_the_scripts_can_keep_freed_memory_on_linux():
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert experiment.keep_freed_memory() is on_glibc


RUN_FOLDER_READERS = ("reproduce.py", "reproduce_lib", "tools", "benchmarks")


def test_what_reads_run_folders_takes_their_format_from_run_folder():
    """reproduce.py, reproduce_lib/, tools/ and benchmarks/ import no run-folder name from
    experiment.run (its internals) and spell no run file name out: experiment.run_folder is the
    contract (run_folder.py's docstring documents it)."""
    names = {*run_folder.RUN_FILES, run_folder.LOCK}
    paths = [ROOT / "reproduce.py", *(p for d in RUN_FOLDER_READERS[1:] for p in sorted((ROOT / d).glob("*.py")))]
    problems = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("experiment.run", "experiment.distributed"):
                problems.append(f"{path.name}:{node.lineno} imports from {node.module}")
            if isinstance(node, ast.Constant) and node.value in names:
                problems.append(f"{path.name}:{node.lineno} spells {node.value!r} out")
    assert problems == []
    statuses = (run_folder.RUNNING, run_folder.COMPLETED, run_folder.EARLY_STOPPED, run_folder.DIVERGED)
    flags = [experiment.flags.flag_name(k) for k in sorted(run_folder.RESUMABLE_FLAGS)]
    for name in (*names, *statuses, run_folder.INTERRUPTED, *flags):
        assert name in run_folder.__doc__, name


# ------------------------------------------------------------- resume and misuse (issues 14.8, 15.2, 15.4)
def test_a_run_trained_before_a_flag_existed_still_resumes(tmp_path):
    """A flag added after a run was trained (here --width, dropped from the saved flags) is absent
    from its config.json and checkpoint: its default keeps the earlier behaviour."""
    run_epochs(start_run(tmp_path, "--epochs", "2"), [3.0, 2.0])
    folder = tmp_path / "run"
    config = strict_json((folder / "config.json").read_text())
    del config["args"]["width"]
    experiment.write_json(folder / "config.json", config)
    checkpoint = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
    del checkpoint["args"]["width"]
    experiment.atomic_torch_save(checkpoint, folder / "checkpoint.pt", checksum=True)
    args = parse("--resume", "--out_dir", str(folder), "--epochs", "3")
    assert args.width == 3  # the default
    resumed = experiment.Run(args, "script.py", "test", torch.device("cpu"))
    model = tiny_model(args)
    resumed.start(model, experiment.build_optimizer(model, args))
    assert run_epochs(resumed, [3.0, 2.0, 1.0])["epochs_completed"] == 3


def test_resume_alone_continues_with_the_recorded_flags_and_records_changes(tmp_path):
    run = start_run(tmp_path, "--lr", "0.5", "--seed", "3", "--epochs", "2", "--width", "5")
    run_epochs(run, [3.0, 2.0])
    args = parse("--resume", "--out_dir", str(tmp_path / "run"))
    assert (args.lr, args.seed, args.epochs, args.width) == (0.5, 3, 2, 5)
    assert args.given == {"resume", "out_dir"}
    args = parse("--resume", "--out_dir", str(tmp_path / "run"), "--epochs", "4", "--seed", "3")
    assert (args.lr, args.epochs) == (0.5, 4) and args.resumed_changes == {"epochs": [2, 4]}
    resumed = experiment.Run(args, "script.py", "test", torch.device("cpu"))
    model = tiny_model(args)
    resumed.start(model, experiment.build_optimizer(model, args))
    run_epochs(resumed, [3.0, 2.0, 1.5, 1.0])
    config = strict_json((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["epochs"] == 4 and config["args"]["lr"] == 0.5
    assert config["resumes"] == [{"after_epoch": 2, "changes": {"epochs": [2, 4]}}]


def test_resume_with_fewer_epochs_than_trained_is_refused_and_the_config_stays_true(tmp_path):
    run_epochs(start_run(tmp_path, "--epochs", "4"), [3.0, 2.0, 1.5, 1.0])
    before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(experiment.UsageError, match="already trained 4 epochs .give --epochs 4 or more"):
        start_run(tmp_path, "--resume", "--epochs", "2")
    assert (tmp_path / "run" / "config.json").read_text() == before


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--minLR", "1e-5", "--maxLR", "1"], "--minLR 1e-05 would mean a learning rate of 10**1e-05 = 1: "),
        (["--minLR", "-5", "--maxLR", "10"], "--maxLR 10 would mean learning rates up to 1e10 (valid: at most 3"),
        (["--minLR", "-5", "--maxLR", "0.5"], "--maxLR 0.5 would mean a learning rate of 10**0.5"),
    ],
)
def test_learning_rates_given_where_log10_is_expected_are_refused(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--use_alrao", *argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and named in err and "(--minLR -5 means 1e-5, --maxLR 1 means 10)" in err
    assert parse("--use_alrao", "--minLR", "-7", "--maxLR", "3").maxLR == 3  # the extreme valid ends
    assert parse("--use_alrao", "--minLR", "0", "--maxLR", "1").minLR == 0


def test_a_data_path_that_the_data_set_does_not_read_is_refused(capsys):
    defaults = experiment.ScriptDefaults(**{**vars(DEFAULTS), "offline_datasets": ("fake",)})
    parser = experiment.ArgumentParser(prog="script.py")
    experiment.add_common_arguments(parser, defaults)
    assert parser.parse_args(["--dataset", "real", "--data_path", "x"]).data_path == "x"
    assert parser.parse_args(["--dataset", "fake"]).data_path == "datasets"
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "fake", "--data_path", "/nonexistent"])
    assert "--data_path /nonexistent is not used by --dataset fake" in capsys.readouterr().err


def test_a_dry_run_is_short_whatever_epochs_and_batch_size_say():
    args = parse("--dry_run", "--epochs", "300", "--batch_size", "64")
    assert (args.epochs, args.batch_size) == (2, 8)
    line = experiment.dry_run_line(args, 2)
    assert line.startswith("dry run: 2 batches of 8 per split, 2 epochs of training, validation, test")
    assert "--epochs 300 is cut to 2" in line and "--batch_size 64 is cut to 8" in line
    assert (parse("--dry_run").epochs, parse("--epochs", "300").epochs) == (1, 300)


def test_progress_writes_plain_lines_off_a_terminal():
    stream = io.StringIO()
    progress = experiment.Progress(range(3), desc="epoch 1", every_s=0.0, stream=stream)
    for i in progress:
        progress.set_postfix({"loss": f"{i}.0"})
    progress.close()
    assert stream.getvalue().splitlines() == [
        "epoch 1: batch 1/3 (loss 0.0)",
        "epoch 1: batch 2/3 (loss 1.0)",
        "epoch 1: batch 3/3 (loss 2.0)",
    ]
    assert "\r" not in stream.getvalue()


def test_an_interrupt_in_the_first_epoch_says_so(tmp_path, capsys):
    run = start_run(tmp_path, "--epochs", "5")
    with pytest.raises(SystemExit) as exit_info:
        with run:
            for _ in run.epochs():
                raise KeyboardInterrupt
    out = capsys.readouterr().out
    assert exit_info.value.code == 130 and "interrupted before the first epoch" in out
    assert "no epoch with a finite validation loss" not in out
    summary = strict_json((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["epochs_completed"]) == ("interrupted", 0)


def test_lr_granularity_reaches_the_alrao_optimizer():
    """``--lr_granularity weight``: one rate per weight of the pre-classifier (full shape), the
    copies unchanged; the flag's choices are the library's."""
    import alrao.lr_sampling
    from experiment.flags import GRANULARITIES

    assert GRANULARITIES == alrao.lr_sampling.GRANULARITIES
    pre = nn.Sequential(nn.Linear(3, 4))
    model = alrao.AlraoModel("classification", nn.NLLLoss(), pre, 2, alrao.LinearClassifier, 4, 2)
    for optimizer in ("SGD", "Adam"):
        args = parse("--use_alrao", "--optimizer", optimizer, "--lr_granularity", "weight")
        built = experiment.build_optimizer(model, args, torch.Generator().manual_seed(0))
        rates = built.feature_lrs()
        assert rates[model.preclassifier[0].weight].shape == (4, 3)
        assert rates[model.classifiers[0].fc.weight].dim() == 0
        feature = experiment.build_optimizer(model, parse("--use_alrao", "--optimizer", optimizer))
        assert feature.feature_lrs()[model.preclassifier[0].weight].shape == (4, 1)
