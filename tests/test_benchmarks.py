"""The speed benchmarks run (one step of each variant, CPU) and print their tables."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import op_count  # noqa: E402
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


def test_op_count_counts_the_top_level_aten_operations_of_a_step():
    x, w = torch.randn(4, 3), torch.randn(2, 3)

    def step():  # linear calls t and matmul (and mm): counted once, as aten::linear
        (x + 1).sum()
        torch.nn.functional.linear(x, w)

    counts = op_count.count_ops(step, torch.device("cpu"), steps=2, warmup=1)
    assert counts == {"aten::add": 1, "aten::sum": 1, "aten::linear": 1}


def test_op_count_counts_the_kernels_of_a_cuda_step_and_only_them():
    """The CUDA branch's selection, on made-up profiler events: a kernel and a memory copy count
    (the device's events); the CPU-side launch and the aten operations do not."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, device, parent=None):
        return SimpleNamespace(name=name, device_type=device, cpu_parent=parent)

    add = event("aten::add", DeviceType.CPU)
    events = [
        add,
        event("cudaLaunchKernel", DeviceType.CPU, add),
        event("elementwise_kernel<add>", DeviceType.CUDA),
        event("Memcpy HtoD", DeviceType.CUDA),
    ]
    assert op_count.counted_names(events, kernels=True) == ["elementwise_kernel<add>", "Memcpy HtoD"]
    assert op_count.counted_names(events, kernels=False) == ["aten::add"]


def test_op_count_names_what_alrao_adds_over_the_floor(capsys):
    op_count.main(["--settings", "lstm-char", "--steps", "1"])
    op_count.main(["--settings", "lstm-char", "--steps", "1", "--accelerator_path"])
    out = capsys.readouterr().out
    host, accelerator = (
        [float(v) for v in line.split()[1:4]] for line in out.splitlines() if line.startswith("lstm-char")
    )
    assert "path=host" in out and "path=accelerator" in out and out.count("most added: aten::") == 2
    assert host[0] <= host[1] < host[2] and accelerator[:2] == host[:2]  # the plain steps have no Alrao path
    assert accelerator[2] > host[2]  # no host read: masks and checks on the device, the switch too


def test_op_count_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        op_count.main(["--steps", "0"])
    assert exit_info.value.code == 2
