"""The speed benchmarks run (one step of each variant, CPU) and print their tables."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import optim_step  # noqa: E402
import step_overhead  # noqa: E402


def test_step_overhead_prints_plain_floor_and_alrao(capsys):
    step_overhead.main(["--settings", "lstm-char-user", "--steps", "1", "--warmup", "0", "--system_malloc"])
    out = capsys.readouterr().out
    assert "/floor" in out and "lstm-char-user" in out and "user class / built-in class" in out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optim_step_times_torch_and_alrao(capsys, optimizer):
    optim_step.main(["--models", "cnn-small", "--optimizer", optimizer, "--steps", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    for label in ("foreach", "fused", "foreach compact", "foreach full-size"):
        assert label in out
    assert ("AlraoSGD" if optimizer == "sgd" else "AlraoAdam") in out


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        optim_step.main(["--steps", "0"])
    assert exit_info.value.code == 2
