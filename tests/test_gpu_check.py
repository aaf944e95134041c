"""benchmarks/gpu_check.py without a GPU: it says so and exits 0; its parts run on the CPU; a
part that fails or runs out of time is reported in the table and the others go on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

SCRIPT = Path(gpu_check.__file__)


def test_without_a_gpu_it_says_so_and_exits_0():
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("gpu_check: no GPU") and "nothing to check" in done.stdout


def test_the_benchmark_part_runs_on_a_cpu():
    result = gpu_check.part_bench("cnn-small", "fp32", False, "cpu", steps=1, warmup=0)
    assert result["plain_ms"] > 0 and result["alrao_ms"] > 0 and result["ratio"] > 0


def test_the_epoch_part_runs_on_a_cpu(tmp_path):
    result = gpu_check.part_epoch("cpu", str(tmp_path / "run"))
    assert result["device"].startswith("cpu") and result["epoch_s"] > 0


def test_the_ops_part_counts_the_accelerator_paths_operations_on_a_cpu():
    result = gpu_check.part_ops("cpu")
    assert set(result) == set(gpu_check.OPS_SETTINGS)
    for counts in result.values():
        assert 0 < counts["plain"] <= counts["floor"] < counts["alrao"] and counts["most_added"]
    assert "lstm-char plain" in gpu_check.describe("ops", True, result)


def test_every_step_after_the_warm_up_runs_under_the_sync_error_mode(monkeypatch):
    import torch

    mode, seen = ["default"], []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: mode.__setitem__(0, m))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    gpu_check.steps_without_sync(lambda: seen.append(mode[0]), torch.device("cuda"), steps=3)
    assert seen == ["default", "default", "error", "error", "error"] and mode == ["default"]
    seen.clear()
    gpu_check.steps_without_sync(lambda: seen.append(mode[0]), torch.device("cpu"), steps=3)
    assert seen == ["default"] * 5


def test_the_plan_has_every_part_and_every_benchmark_row():
    rows = gpu_check.plan("cuda", quick=False)
    assert [r[0] for r in rows[:4]] == ["tests", "sync", "epoch", "ops"]
    bench = [r[1] for r in rows if r[0] == "bench"]
    assert len(bench) == 5 * 2 * 2 and bench[0] == "VGG19 fp32 eager" and bench[-1] == "lstm-char bf16 compiled"
    assert "tests/test_on_cuda.py" in rows[0][2] and "tests/test_cuda_paths.py" in rows[0][2]


def test_a_failing_or_hanging_part_is_reported_and_the_others_go_on(monkeypatch, capsys):
    python = [sys.executable, "-c"]
    result = json.dumps({"epoch_s": 1.5, "device": "cpu", "valid_loss": 2.0})
    ok = f"import time; time.sleep(2); print({gpu_check.RESULT + result!r})"
    rows = [
        ("sync", "fails", [*python, "import sys; print('boom'); sys.exit(3)"], 30),
        ("tests", "hangs", [*python, "import time; time.sleep(60)"], 1),
        ("tests", "passes", [*python, "print('collected 3 items'); print('3 passed in 0.01s')"], 30),
        ("epoch", "works", [*python, ok], 30),
        ("bench", "too late", [*python, "import time; time.sleep(60)"], 60),
    ]
    monkeypatch.setattr(gpu_check, "plan", lambda device, quick: rows)
    assert gpu_check.main(["--device", "cpu", "--budget_s", "7"]) == 1
    table = capsys.readouterr().out.split("| part | setting | result | s |")[1]
    assert "| sync | fails | FAILED: exit status 3: boom |" in table
    assert "| tests | hangs | FAILED: timed out after 1 s |" in table
    assert "| tests | passes | 3 passed in 0.01s |" in table  # no result line: pytest's last line
    assert "| epoch | works | 1.5 s on cpu, valid loss 2.000 |" in table
    assert "| bench | too late | not run: the time budget is spent |" in table  # 7 s - 3 s: under 5 s left


@pytest.mark.parametrize("ratio, verdict", [(1.02, "meets 1.05"), (1.2, "misses 1.05")])
def test_benchmark_rows_say_whether_the_gpu_target_is_met(ratio, verdict):
    text = gpu_check.describe("bench", True, {"plain_ms": 10.0, "alrao_ms": 10.0 * ratio, "ratio": ratio})
    assert f"ratio {ratio:.3f} ({verdict})" in text
