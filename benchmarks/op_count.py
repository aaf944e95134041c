"""Operations per training step: the part of Alrao's cost that is a count, not arithmetic.

Each tensor operation has a fixed cost whatever its size: a few microseconds of dispatch on a CPU,
a kernel launch on a GPU. For a small network (the char LSTM) that fixed cost is much of what an
Alrao step adds over its floor (see README, "Speed"). This counts, over the steps of
``step_overhead.py``'s plain, floor and Alrao variants:

- on a CPU, the **top-level aten operations** of a step (those no other aten operation called:
  the ones the step's Python code, its autograd nodes and its optimizer ran);
- on CUDA, the **kernels** a step launched (and memory copies and sets), from the profiler's
  device events.

and names the operations Alrao runs more often than the floor.

    python benchmarks/op_count.py --settings lstm-char
    python benchmarks/op_count.py --settings lstm-char --accelerator_path   # a GPU's code, on a CPU
    python benchmarks/op_count.py --device cuda

``--accelerator_path`` runs the code a GPU runs (``alrao.accelerator_path()``: no host read,
masks always applied, the switch updated on the device), so its CPU count is what a GPU step
would launch, up to the kernels an aten operation makes there (a CPU foreach operation is one
aten operation over a loop; on a GPU, a few fused kernels).
"""

import argparse
import collections
import contextlib
import sys
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import alrao  # noqa: E402
from benchmarks import step_overhead  # noqa: E402

VARIANTS = ("plain", "floor", "alrao")


def _called_by_aten(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def count_ops(step, device: torch.device, steps: int = 3, warmup: int = 3) -> collections.Counter:
    """Per step of ``step()`` (mean over ``steps`` after ``warmup`` untimed ones): the top-level
    aten operations by name on a CPU, the kernels (and memory copies and sets) by name on CUDA."""
    for _ in range(warmup):  # lazy state: optimizer buffers, the allocator, cuDNN's choices
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    counts = collections.Counter(counted_names(prof.events(), kernels=cuda))
    return collections.Counter({name: n / steps for name, n in counts.items()})


def counted_names(events, kernels: bool) -> list[str]:
    """The names of the profiler ``events`` that count: the device's (kernels, memory copies and
    sets) if ``kernels``, else the top-level aten operations."""
    if kernels:
        return [e.name for e in events if e.device_type == DeviceType.CUDA]
    return [e.name for e in events if e.name.startswith("aten::") and not _called_by_aten(e)]


def count_setting(name: str, device: torch.device, on_accelerator_path: bool = False, steps: int = 3) -> dict:
    """``{variant: Counter}`` for the plain, floor and Alrao steps of ``name`` (a setting of
    step_overhead.py)."""
    path = alrao.accelerator_path() if on_accelerator_path else contextlib.nullcontext()
    with path:
        return {v: count_ops(step_overhead.build(name, device, v), device, steps) for v in VARIANTS}


def most_added(alrao_ops: collections.Counter, floor_ops: collections.Counter, top: int = 8) -> list:
    """The ``top`` operations Alrao runs more often than the floor: ``[(name, extra per step)]``."""
    extra = {name: alrao_ops[name] - floor_ops.get(name, 0) for name in alrao_ops}
    return sorted(((n, e) for n, e in extra.items() if e > 0), key=lambda item: (-item[1], item[0]))[:top]


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["cnn-small", "lstm-char"], choices=step_overhead.SETTINGS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per variant (default 3)")
    parser.add_argument(
        "--accelerator_path",
        action="store_true",
        help="run the code a GPU runs (alrao.accelerator_path()), on any device",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    what = "kernels" if device.type == "cuda" else "top-level aten operations"
    path = "accelerator" if args.accelerator_path or device.type != "cpu" else "host"
    print(f"device={device} torch={torch.__version__} path={path}: {what} per step (mean of {args.steps} steps)")
    print(f"{'setting':<14} {'plain':>7} {'floor':>7} {'alrao':>7} {'alrao-floor':>11}")
    for name in args.settings:
        counts = count_setting(name, device, args.accelerator_path, args.steps)
        plain, floor, with_alrao = (sum(counts[v].values()) for v in VARIANTS)
        print(f"{name:<14} {plain:>7.0f} {floor:>7.0f} {with_alrao:>7.0f} {with_alrao - floor:>+11.0f}", flush=True)
        added = most_added(counts["alrao"], counts["floor"])
        print("    most added: " + ", ".join(f"{_short(n)} +{e:g}" for n, e in added), flush=True)


if __name__ == "__main__":
    main()
