"""End-to-end tests of main_cnn.py, in process, on a few batches of generated images."""

import json
import math

import pytest
import torch

import data
import main_cnn

# The cheapest network of the registry on CPU (measured: VGG19 at width 1/8,
# ~50 ms per step of 4 images), 3 batches of 4 images per split.
# --no-cuda: the suite runs on the CPU, whatever the machine (exact resume is a CPU guarantee).
TINY = ["--dry_run", "--model_name", "VGG19", "--size_multiplier", "0.125", "--batch_size", "4", "--no-cuda"]
ALRAO = ["--use_alrao", "--minLR", "-4", "--maxLR", "0", "--n_last_layers", "3"]


def strict_json(text):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def run(out_dir, *argv):
    return main_cnn.main(main_cnn.build_parser().parse_args([*TINY, "--out_dir", str(out_dir), *argv]))


def metrics(out_dir):
    """The epoch records, without their wall times (the only field allowed to differ between runs)."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in strict_json(line).items() if k != "epoch_time_s"} for line in lines]


def final_model(out_dir):
    return torch.load(out_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch Alrao-SGD run (a dry run's most)."""
    out = tmp_path_factory.mktemp("reference")
    summary = run(out, *ALRAO, "--epochs", "2")
    return out, summary


def test_an_alrao_run_writes_its_files(reference):
    out, summary = reference
    config = strict_json((out / "config.json").read_text())
    assert config["script"] == "main_cnn.py" and config["args"]["use_alrao"] is True
    assert config["n_parameters"] - config["n_parameters_without_copies"] == 2 * (64 * 10 + 10)  # 2 extra copies
    records = metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["classifier_lrs"] == pytest.approx([1e-4, 1e-2, 1.0], rel=1e-6)
        assert sum(r["posterior"]) == pytest.approx(1.0, abs=1e-5)
        assert len(r["copy_train_loss"]) == len(r["copy_train_acc"]) == 3
        assert all(0 <= r[f"{s}_acc"] <= 1 for s in ("train", "valid", "test")) and r["diverged"] is False
    saved = strict_json((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary)) and saved["status"] == "completed"
    best = min(records, key=lambda r: r["valid_loss"])
    assert saved["best_epoch"] == best["epoch"] and saved["test_loss"] == best["test_loss"]
    assert torch.load(out / "best.pt", map_location="cpu", weights_only=True)["epoch"] == best["epoch"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--optimizer", "SGD", "--lr", "0.05", "--momentum", "0.9", "--weight_decay", "5e-4"],
        ["--optimizer", "Adam", "--no-data_augm"],
        ["--optimizer", "Adam", *ALRAO],
    ],
    ids=["plain-SGD", "plain-Adam", "alrao-Adam"],
)
def test_dry_runs_with_and_without_alrao(tmp_path, argv):
    summary = run(tmp_path, *argv, "--epochs", "1")
    assert summary["status"] == "completed" and math.isfinite(summary["test_loss"])
    (record,) = metrics(tmp_path)
    assert ("posterior" in record) == ("--use_alrao" in argv)
    if "--lr" in argv:
        assert record["lr"] == 0.05
    checkpoint = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["args"]["optimizer"] == argv[1]
    assert checkpoint["optimizer"]["param_groups"][0].get("momentum", 0.0) == (0.9 if "--momentum" in argv else 0.0)


def test_resumed_run_equals_the_uninterrupted_one(reference, tmp_path):
    run(tmp_path, *ALRAO, "--epochs", "1")
    run(tmp_path, *ALRAO, "--epochs", "2", "--resume")
    assert metrics(tmp_path) == metrics(reference[0])
    assert_same_state(final_model(tmp_path), final_model(reference[0]))


def test_ctrl_c_leaves_a_checkpoint_that_resumes_exactly(reference, tmp_path, monkeypatch, capsys):
    evaluate = main_cnn.evaluate
    calls = []

    def interrupted_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 3:  # the validation pass of epoch 2
            raise KeyboardInterrupt
        return evaluate(*args)

    monkeypatch.setattr(main_cnn, "evaluate", interrupted_in_epoch_2)
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, *ALRAO, "--epochs", "2")
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted during epoch 2" in err
    assert torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    assert strict_json((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(main_cnn, "evaluate", evaluate)
    hint = f"continue with --resume --out_dir {tmp_path}"
    assert hint in err
    main_cnn.main(main_cnn.build_parser().parse_args(hint.split()[2:]))  # the printed command, alone
    assert metrics(tmp_path) == metrics(reference[0])
    assert_same_state(final_model(tmp_path), final_model(reference[0]))


def test_a_diverging_plain_sgd_run_is_recorded_and_stops(tmp_path, capsys):
    summary = run(tmp_path, "--lr", "1e20", "--epochs", "5", "--no-data_augm")
    assert summary["status"] == "diverged" and summary["diverged"] is True
    records = metrics(tmp_path)
    assert records[-1]["diverged"] is True and records[-1]["train_loss"] is None
    assert len(records) < 5 and "diverged at epoch" in capsys.readouterr().out
    assert summary["best_epoch"] is None or summary["best_epoch"] < len(records)
    assert strict_json((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_resuming_with_other_arguments_is_an_error(reference, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(reference[0], *ALRAO, "--epochs", "3", "--resume", "--seed", "7")
    assert exit_info.value.code == 2
    assert "main_cnn.py: error: --resume: the command differs" in capsys.readouterr().err


def test_a_second_run_in_the_same_folder_is_an_error(reference, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(reference[0], *ALRAO, "--epochs", "3")
    assert exit_info.value.code == 2 and "already holds a run" in capsys.readouterr().err


def test_missing_data_exits_2_with_the_data_message(tmp_path, monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise data.DataError("CIFAR-10 not found in /nowhere: download it with ...")

    monkeypatch.setattr(data, "get_image_loaders", missing)
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "--epochs", "1")
    assert exit_info.value.code == 2
    assert "main_cnn.py: error: CIFAR-10 not found in /nowhere" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--model_name", "ResNet50"], "argument --model_name: invalid choice: 'ResNet50'"),
        (["--use_alrao", "--minLR", "2", "--maxLR", "-1"], "--minLR 2 is above --maxLR -1"),
        (["--epochs", "-1"], "argument --epochs: expected an integer >= 1, got -1"),
        (["--use_alrao", "--n_last_layers", "0"], "argument --n_last_layers: expected an integer >= 1, got 0"),
        (["--size_multiplier", "0"], "argument --size_multiplier: expected a number > 0, got 0"),
        (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
        (["--dataset", "digits", "--data_path", "/data"], "--data_path /data is not used by --dataset digits"),
        (["--use_alrao", "--minLR", "1e-5", "--maxLR", "10"], "are log10 of the rates (--minLR -5 means 1e-5"),
    ],
)
def test_invalid_arguments_exit_2_naming_the_value(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_cnn.build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def test_defaults_are_the_papers_protocol_and_the_documented_commands_parse():
    parser = main_cnn.build_parser()
    commands = [line.split()[2:] for line in main_cnn.__doc__.splitlines() if line.strip().startswith("python ")]
    alrao_command, baseline_command = (parser.parse_args(argv) for argv in commands)
    assert alrao_command.use_alrao and (alrao_command.minLR, alrao_command.maxLR) == (-5, 1)
    assert not baseline_command.use_alrao and baseline_command.lr == 0.001
    args = parser.parse_args([])
    assert (args.model_name, args.dataset, args.batch_size, args.epochs, args.optimizer) == (
        "GoogLeNet",
        "cifar10",
        32,
        50,
        "SGD",
    )
    assert (args.momentum, args.weight_decay, args.data_augm, args.early_stopping, args.patience) == (
        0.0,
        0.0,
        True,
        True,
        20,
    )
    alrao_args = parser.parse_args("--use_alrao --minLR -5 --maxLR 1 --n_last_layers 10 --model_name GoogLeNet".split())
    assert (alrao_args.minLR, alrao_args.maxLR, alrao_args.n_last_layers) == (-5, 1, 10)
    assert parser.parse_args(["--use_alrao"]).n_last_layers == 10
    assert parser.parse_args("--lr 0.001 --model_name GoogLeNet".split()).lr == 0.001


def test_help_lists_every_flag_with_its_help_text(capsys):
    parser = main_cnn.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for action in parser._actions:
        assert action.help
        assert all(option in text for option in action.option_strings)
    assert "VGG19,GoogLeNet,MobileNetV2,SENet18" in text


def test_loader_workers_on_a_gpu_are_refused_as_unused(tmp_path, monkeypatch, capsys):
    # the CUDA branch, forced on CPU: the batches are made on the device, with no DataLoader
    forced = (torch.device("cuda"), "cuda (forced)")
    monkeypatch.setattr(main_cnn.experiment.Ranks, "choose_device", lambda self, no_cuda: forced)
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "--num_workers", "2")
    assert exit_info.value.code == 2 and "--num_workers 2 is not used on cuda" in capsys.readouterr().err
