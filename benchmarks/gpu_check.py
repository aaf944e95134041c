"""GPU acceptance in one command (issue 11, item 5): what only a GPU can show, in one table.

    python benchmarks/gpu_check.py                 # about 7 minutes at most on a machine with a GPU
    python benchmarks/gpu_check.py --budget_s 300  # a shorter check (fewer benchmark rows)

Parts, each in its own subprocess with its own time limit (a part that fails, hangs or runs out
of time is reported in the table and the others go on):

1. tests: the test files that touch CUDA (``tests/test_on_cuda.py`` runs the scripts on the
   GPU; the files of the CUDA branches forced on a CPU run too).
2. sync: ``torch.cuda.set_sync_debug_mode('error')`` around Alrao steps (AlraoSGD and AlraoAdam,
   float32 and bf16 autocast, a CNN and the char LSTM): any host synchronisation fails the row.
3. epoch: a 1-epoch ``main_cnn.py`` Alrao run on ``fake`` data (5,000 images; on CUDA the
   device-resident loader); its wall time.
4. ops: the kernels a plain, floor and Alrao step launch (``benchmarks/op_count.py``), for the
   small CNN and the char LSTM, and the kernels Alrao adds most: where a launch-bound step's
   overhead comes from, for whoever tunes the accelerator path next.
5. bench: the step-overhead benchmark's Alrao/SGD ratio on CUDA for the four paper CNNs and the
   char LSTM, float32 and bf16 autocast, eager then compiled (``model.compile()``), as far as
   the time budget goes (rows not reached say so). The design's GPU target: ratio <= 1.05.

Without a GPU it says so and exits 0. The exit status is 1 when a part failed, else 0.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CNNS = ("VGG19", "GoogLeNet", "MobileNetV2", "SENet18")
BENCH_SETTINGS = (*CNNS, "lstm-char")
TEST_PATTERNS = ("test_on_cuda.py", "test_*cuda*.py", "test_*accelerator*.py", "test_*device*.py", "test_*sync*.py")
BUDGET_S = 450  # the whole check: under the 8 minutes asked, with room for start-up
TARGET = 1.05  # DESIGN.md: an Alrao-SGD step at most 1.05x a plain SGD step on GPU
RESULT = "GPU_CHECK_RESULT "  # prefix of the JSON line a part prints for the table


# ----------------------------------------------------------------- the parts
def part_bench(setting: str, amp: str, compiled: bool, device: str, steps: int, warmup: int) -> dict:
    """Median ms of a plain-SGD step and an Alrao-SGD step of ``setting`` and their ratio."""
    import torch
    from torch import nn

    import alrao
    from benchmarks import step_overhead

    device = torch.device(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[amp]

    def build(use_alrao: bool):
        make, cls, cargs, n, inputs, target = step_overhead.setting(setting, device)
        torch.manual_seed(0)
        pre = make().to(device)
        if hasattr(pre, "init_hidden"):
            inputs = inputs + (pre.init_hidden(inputs[0].shape[1]),)
        loss_fn = nn.NLLLoss()
        if use_alrao:
            model = alrao.AlraoModel("classification", loss_fn, pre, n, cls, pre.num_features, *cargs).to(device)
            optimizer = alrao.AlraoSGD(model, 1e-5, 1.0)
        else:
            model = step_overhead.Plain(pre, cls(pre.num_features, *cargs)).to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        if compiled:
            model.compile()

        def step():
            step_overhead.train_step(model, optimizer, inputs, target, None if use_alrao else loss_fn, dtype)

        return step

    plain, with_alrao = build(False), build(True)
    times = step_overhead.measure([plain, with_alrao], steps, warmup, device)
    return {"plain_ms": 1e3 * times[0], "alrao_ms": 1e3 * times[1], "ratio": times[1] / times[0]}


def part_sync(device: str, steps: int) -> dict:
    """Alrao steps under ``set_sync_debug_mode('error')`` after a warm-up: the settings that ran clean."""
    import torch
    from torch import nn

    import alrao
    from benchmarks import step_overhead

    device = torch.device(device)
    checked = []
    for setting in ("cnn-small", "lstm-char"):
        for optimizer_cls in (alrao.AlraoSGD, alrao.AlraoAdam):
            for dtype in (None, torch.bfloat16):
                make, cls, cargs, n, inputs, target = step_overhead.setting(setting, device)
                pre = make().to(device)
                if hasattr(pre, "init_hidden"):
                    inputs = inputs + (pre.init_hidden(inputs[0].shape[1]),)
                model = alrao.AlraoModel("classification", nn.NLLLoss(), pre, n, cls, pre.num_features, *cargs)
                model = model.to(device)
                optimizer = optimizer_cls(model, 1e-5, 1.0)
                name = f"{setting}/{optimizer_cls.__name__}/{'bf16' if dtype else 'fp32'}"

                def step(model=model, optimizer=optimizer, inputs=inputs, target=target, dtype=dtype):
                    step_overhead.train_step(model, optimizer, inputs, target, dtype=dtype)

                try:
                    steps_without_sync(step, device, steps)
                except RuntimeError as error:
                    raise RuntimeError(f"{name}: {str(error).splitlines()[0]}") from None
                checked.append(name)
    return {"checked": checked}


def steps_without_sync(step, device, steps: int, warmup: int = 2) -> None:
    """``warmup`` steps (lazy state, the allocator), then ``steps`` steps each under
    ``torch.cuda.set_sync_debug_mode('error')`` on CUDA (a host synchronisation raises), the mode
    set back to default after each."""
    import torch

    for i in range(warmup + steps):
        checked = i >= warmup and device.type == "cuda"
        if checked:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            if checked:
                torch.cuda.set_sync_debug_mode("default")


def part_epoch(device: str, out_dir: str) -> dict:
    """A 1-epoch Alrao ``main_cnn.py`` run on fake data; its summary's wall time."""
    import main_cnn
    from experiment.run_folder import COMPLETED, CONFIG

    argv = ["--dataset", "fake", "--epochs", "1", "--use_alrao", "--model_name", "VGG19", "--out_dir", out_dir]
    if device == "cpu":  # the check of the check: seconds on a CPU
        argv += ["--no_cuda", "--dry_run", "--size_multiplier", "0.125", "--batch_size", "4"]
    summary = main_cnn.main(main_cnn.build_parser().parse_args(argv))
    if summary["status"] != COMPLETED:
        raise RuntimeError(f"the run ended {summary['status']}")
    config = json.loads((Path(out_dir) / CONFIG).read_text())
    return {"epoch_s": summary["wall_time_s"], "device": config["device"], "valid_loss": summary["valid_loss"]}


OPS_SETTINGS = ("cnn-small", "lstm-char")


def part_ops(device: str) -> dict:
    """Kernels per step (on a CPU: top-level aten operations of the accelerator path) of the plain,
    floor and Alrao steps, and the ones Alrao adds most, for :data:`OPS_SETTINGS`."""
    import torch

    from benchmarks import op_count

    result = {}
    for setting in OPS_SETTINGS:
        counts = op_count.count_setting(setting, torch.device(device), on_accelerator_path=True)
        result[setting] = {v: sum(counts[v].values()) for v in op_count.VARIANTS}
        result[setting]["most_added"] = op_count.most_added(counts["alrao"], counts["floor"], top=4)
    return result


def run_part(argv: list[str]) -> None:
    """Entry of a part's subprocess: run it, print its result as one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=("bench", "sync", "epoch", "ops"))
    parser.add_argument("--setting", default="VGG19")
    parser.add_argument("--amp", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out_dir", default=None)
    args = parser.parse_args(argv)
    if args.part == "bench":
        result = part_bench(args.setting, args.amp, args.compiled, args.device, args.steps, args.warmup)
    elif args.part == "sync":
        result = part_sync(args.device, args.steps)
    elif args.part == "ops":
        result = part_ops(args.device)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = part_epoch(args.device, args.out_dir or str(Path(tmp) / "run"))
    print(RESULT + json.dumps(result), flush=True)


# -------------------------------------------------------------- orchestration
def subprocess_part(argv: list[str], timeout_s: float) -> tuple[bool, dict | str, float]:
    """Run a part (``argv``: the command) with a time limit: ``(ok, result or error line, seconds)``."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, timeout_s), env={**os.environ}
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s:.0f} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return done.returncode == 0, json.loads(line[len(RESULT) :]), seconds
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "no output"
    if done.returncode == 0:  # a part without a result line (pytest): its last line says how it went
        return True, last, seconds
    return False, f"exit status {done.returncode}: {last}", seconds


def test_files() -> list[str]:
    found = {p for pattern in TEST_PATTERNS for p in (REPO / "tests").glob(pattern)}
    return [str(p.relative_to(REPO)) for p in sorted(found)]


def plan(device: str, quick: bool) -> list[tuple[str, str, list[str], float]]:
    """``(part, row, command, time limit s)`` in the order they run; the benchmark rows last."""
    me = [sys.executable, str(Path(__file__).resolve()), "--part"]
    rows = [
        ("tests", " ".join(test_files()), [sys.executable, "-m", "pytest", "-q", "-x", *test_files()], 150),
        ("sync", "Alrao steps, sync_debug_mode error", [*me, "sync", "--device", device, "--steps", "3"], 60),
        ("epoch", "main_cnn.py fake, 1 epoch, Alrao VGG19", [*me, "epoch", "--device", device], 90),
        ("ops", "kernels per step, fp32 eager", [*me, "ops", "--device", device], 60),
    ]
    steps = ["--steps", "2", "--warmup", "1"] if quick else ["--steps", "20", "--warmup", "5"]
    settings = ("cnn-small",) if quick else BENCH_SETTINGS
    for compiled in (False, True):  # every eager row first: they are quick; compiling is not
        for amp in ("fp32", "bf16"):
            for setting in settings:
                row = f"{setting} {amp} {'compiled' if compiled else 'eager'}"
                command = [*me, "bench", "--setting", setting, "--amp", amp, "--device", device, *steps]
                rows.append(("bench", row, command + (["--compiled"] if compiled else []), 150 if compiled else 60))
    return rows


def describe(part: str, ok: bool, result) -> str:
    if not ok:
        return f"FAILED: {result}"
    if part == "tests":
        return result if isinstance(result, str) else "passed"  # pytest's summary line
    if part == "sync":
        return f"no host sync in {len(result['checked'])} settings"
    if part == "epoch":
        return f"{result['epoch_s']:.1f} s on {result['device']}, valid loss {result['valid_loss']:.3f}"
    if part == "ops":
        counts = "; ".join(
            f"{s} plain {r['plain']:.0f}, floor {r['floor']:.0f}, Alrao {r['alrao']:.0f}" for s, r in result.items()
        )
        added = ", ".join(f"{name[:40]} +{n:g}" for name, n in result[OPS_SETTINGS[-1]]["most_added"])
        return f"{counts}; most added ({OPS_SETTINGS[-1]}): {added}"
    verdict = "meets" if result["ratio"] <= TARGET else "misses"
    return (
        f"plain {result['plain_ms']:.2f} ms, Alrao {result['alrao_ms']:.2f} ms, "
        f"ratio {result['ratio']:.3f} ({verdict} {TARGET})"
    )


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--part"]:
        run_part(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget_s", type=float, default=BUDGET_S, help="time for the whole check, in seconds")
    parser.add_argument(
        "--device",
        default="cuda",
        help="cuda; cpu runs the parts on the CPU, shrunk (to check the check itself without a GPU)",
    )
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no GPU (torch {torch.__version__} sees no CUDA device): nothing to check")
        return 0
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"gpu_check: {name}, torch {torch.__version__}, budget {args.budget_s:.0f} s", flush=True)
    deadline = time.monotonic() + args.budget_s
    table, failed = [], False
    for part, row, command, limit in plan(args.device, quick=args.device == "cpu"):
        left = deadline - time.monotonic()
        if left < 5:
            table.append((part, row, "not run: the time budget is spent", 0.0))
            continue
        ok, result, seconds = subprocess_part(command, min(limit, left))
        failed |= not ok
        table.append((part, row, describe(part, ok, result), seconds))
        print(f"  {part:<6} {row}: {table[-1][2]} ({seconds:.0f} s)", flush=True)
    print("\n| part | setting | result | s |\n|---|---|---|---:|")
    for part, row, text, seconds in table:
        print(f"| {part} | {row} | {text} | {seconds:.0f} |")
    print("bench: median step times, plain SGD and Alrao-SGD interleaved in one process (as step_overhead.py)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
