"""End-to-end tests of main_rnn.py, in process, on a few segments of the offline text corpus."""

import json
import math

import pytest
import torch

import data
import main_rnn

# A small LSTM on 3 segments of 8 tokens per split of the offline corpus.
# --no-cuda: the suite runs on the CPU, whatever the machine (exact resume is a CPU guarantee).
TINY = ["--dry_run", "--emsize", "8", "--nhid", "8", "--bptt", "8", "--batch_size", "4", "--no-cuda"]
ALRAO = ["--use_alrao", "--minLR", "-2", "--maxLR", "1", "--n_last_layers", "4"]


def strict_json(text):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def run(out_dir, *argv):
    return main_rnn.main(main_rnn.build_parser().parse_args([*TINY, "--out_dir", str(out_dir), *argv]))


def metrics(out_dir):
    """The epoch records, without their wall times (the only field allowed to differ between runs)."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in strict_json(line).items() if k != "epoch_time_s"} for line in lines]


def test_a_char_level_alrao_run_reports_bits_per_character(tmp_path):
    summary = run(tmp_path, "--char_prediction", *ALRAO, "--epochs", "2")
    records = metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2] and summary["status"] == "completed"
    for r in records:
        for split in ("train", "valid", "test"):
            assert r[f"{split}_bpc"] == pytest.approx(r[f"{split}_loss"] / math.log(2))
        assert r["classifier_lrs"] == pytest.approx([1e-2, 1e-1, 1.0, 10.0], rel=1e-6)
        assert sum(r["posterior"]) == pytest.approx(1.0, abs=1e-5) and len(r["copy_train_acc"]) == 4
    config = strict_json((tmp_path / "config.json").read_text())
    assert config["args"]["char_prediction"] is True
    # Alrao adds (N - 1) copies of the decoder: (N - 1) * ntoken * (nhid + 1) parameters.
    assert config["n_parameters"] - config["n_parameters_without_copies"] == 3 * config["ntoken"] * 9
    assert strict_json((tmp_path / "summary.json").read_text())["test_bpc"] == pytest.approx(summary["test_bpc"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--lr", "1", "--momentum", "0.5"],
        ["--optimizer", "Adam", "--clip", "0"],
        ["--optimizer", "Adam", *ALRAO],
    ],
    ids=["plain-SGD", "plain-Adam", "alrao-Adam"],
)
def test_word_level_dry_runs_report_perplexity(tmp_path, argv):
    summary = run(tmp_path, *argv, "--epochs", "1")
    (record,) = metrics(tmp_path)
    assert summary["status"] == "completed" and "train_bpc" not in record
    assert record["valid_ppl"] == pytest.approx(math.exp(record["valid_loss"]))
    assert ("posterior" in record) == ("--use_alrao" in argv)
    torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=True)


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    argv = ["--char_prediction", *ALRAO]
    run(tmp_path / "whole", *argv, "--epochs", "2")
    run(tmp_path / "parts", *argv, "--epochs", "1")
    run(tmp_path / "parts", "--resume", "--epochs", "2")
    assert metrics(tmp_path / "parts") == metrics(tmp_path / "whole")
    whole, parts = (
        torch.load(tmp_path / d / "checkpoint.pt", map_location="cpu", weights_only=True) for d in ("whole", "parts")
    )
    for key, value in whole["model"].items():
        assert torch.equal(value, parts["model"][key]), key


def test_resuming_with_other_arguments_is_an_error(tmp_path, capsys):
    run(tmp_path, "--epochs", "1")
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "--epochs", "2", "--resume", "--bptt", "16")
    assert exit_info.value.code == 2
    assert "--bptt 16 (run: 8)" in capsys.readouterr().err


def test_missing_data_exits_2_with_the_data_message(tmp_path, monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise data.DataError("ptb.train.txt not found in /nowhere: ...")

    monkeypatch.setattr(data, "get_corpus", missing)
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "--epochs", "1")
    assert exit_info.value.code == 2 and "main_rnn.py: error: ptb.train.txt not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--use_alrao", "--minLR", "2", "--maxLR", "-1"], "--minLR 2 is above --maxLR -1"),
        (["--epochs", "-5"], "argument --epochs: expected an integer >= 1, got -5"),
        (["--use_alrao", "--n_last_layers", "0"], "argument --n_last_layers: expected an integer >= 1, got 0"),
        (["--drop_out", "1"], "argument --drop_out: expected a number in [0, 1), got 1"),
        (["--bptt", "0"], "argument --bptt: expected an integer >= 1, got 0"),
        (["--minLR", "-3", "--maxLR", "2"], "--minLR -3 is used only with --use_alrao"),
        (["--num_workers", "2"], "unrecognized arguments: --num_workers 2"),  # the text needs no loader workers
        (["--dataset", "pydoc", "--data_path", "/no"], "--data_path /no is not used by --dataset pydoc"),
        (["--use_alrao", "--minLR", "1e-5", "--maxLR", "10"], "--minLR -5 means 1e-5"),
    ],
)
def test_invalid_arguments_exit_2_naming_the_value(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_rnn.build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def documented_command(start):
    """The arguments of the command of main_rnn.py's docstring (shown by --help) that starts with ``start``."""
    (line,) = [line.strip() for line in main_rnn.__doc__.splitlines() if line.strip().startswith(start)]
    return line.split()[2:]


def test_the_documented_paper_command_turns_alrao_on_with_its_setting(tmp_path):
    argv = documented_command("python main_rnn.py --char_prediction --use_alrao")
    args = main_rnn.build_parser().parse_args(argv)
    assert args.use_alrao and args.char_prediction and args.epochs == 300
    assert (args.minLR, args.maxLR, args.n_last_layers, args.bptt, args.optimizer) == (-3, 2, 6, 70, "SGD")
    assert (args.emsize, args.nhid, args.nlayers, args.drop_out, args.clip, args.batch_size, args.patience) == (
        100,
        100,
        2,
        0.2,
        0.25,
        20,
        20,
    )
    # The same command, on a few segments of the offline corpus, trains 6 copies at the paper's rates.
    main_rnn.main(
        main_rnn.build_parser().parse_args(
            [*argv, "--dry_run", "--epochs", "1", "--no-cuda", "--out_dir", str(tmp_path)]
        )
    )
    (record,) = metrics(tmp_path)
    assert record["classifier_lrs"] == pytest.approx([1e-3, 1e-2, 1e-1, 1, 10, 100], rel=1e-6)
    baseline = main_rnn.build_parser().parse_args(documented_command("python main_rnn.py --char_prediction --bptt"))
    assert not baseline.use_alrao and baseline.lr == 1 and baseline.bptt == 70


def test_defaults_are_the_papers_except_bptt_and_epochs_set_by_the_issue():
    defaults = main_rnn.build_parser().parse_args(["--use_alrao"])
    assert (defaults.minLR, defaults.maxLR, defaults.n_last_layers, defaults.bptt, defaults.epochs) == (
        -3,
        2,
        6,
        35,
        50,
    )
    assert main_rnn.build_parser().parse_args([]).dataset == "ptb"


def test_help_lists_every_flag_with_its_help_text(capsys):
    parser = main_rnn.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for action in parser._actions:
        assert action.help
        assert all(option in text for option in action.option_strings)
