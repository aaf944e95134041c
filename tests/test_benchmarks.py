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


def test_step_overhead_times_each_phase_of_the_floor_and_alrao(capsys):
    step_overhead.main(["--settings", "cnn-small", "--phases", "--steps", "2", "--warmup", "0", "--system_malloc"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("cnn-small")]
    assert [row[1] for row in rows] == [*step_overhead.PHASES, "total"]
    floor, alrao = ([float(row[k]) for row in rows] for k in (2, 3))
    assert floor[-1] == pytest.approx(sum(floor[:-1]), abs=0.05) and alrao[-1] == pytest.approx(
        sum(alrao[:-1]), abs=0.05
    )
    assert alrao[1] > 0 and floor[-2] < 0.01 < alrao[-2]  # a loss in both; a switch update in Alrao's step only


def test_phases_are_cpu_only():
    with pytest.raises(SystemExit) as exit_info:
        step_overhead.main(["--phases", "--device", "cuda"])
    assert exit_info.value.code == 2


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
