"""The optimizer step alone: AlraoSGD / AlraoAdam against torch.optim.SGD / Adam
(for-loop, foreach, fused), on the parameters of a network with fixed gradients.

    python benchmarks/optim_step.py                                  # CPU, every model
    python benchmarks/optim_step.py --models VGG19 --optimizer adam
    python benchmarks/optim_step.py --device cuda

Alrao's rows: ``reference`` (per-parameter loop), ``foreach compact`` (the rates in
their compact (out, 1, ...) shape: a broadcast operand, which torch's foreach ops run
one tensor at a time) and ``foreach full-size`` (the rates expanded to each
parameter's shape, which torch's fused multi-tensor kernels take). The library uses
full-size rates where those kernels exist (CUDA) and the compact ones on a CPU,
where a foreach op is a loop over the tensors anyway; both are timed here on every
device. Each step is timed alone (synchronised on CUDA); variants interleave, and
the medians are printed with the ratio to torch's foreach step.
"""

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import alrao  # noqa: E402
import models  # noqa: E402
from alrao import optim as alrao_optim  # noqa: E402
from benchmarks import step_overhead  # noqa: E402

MODELS = ("cnn-small", "VGG19", "lstm-char")


def network(name):
    """An AlraoModel of the benchmark's network (its classifier copies included)."""
    torch.manual_seed(0)
    if name == "lstm-char":
        pre, cls, args, n = models.RNNModel(50, 100, 100, 2), alrao.LinearClassifierRNN, (100, 50), 6
    else:
        if name == "cnn-small":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from step_overhead import SmallCNN

            pre = SmallCNN()
        else:
            pre = models.MODELS[name]()
        cls, args, n = alrao.LinearClassifier, (pre.num_features, 10), 10
    return alrao.AlraoModel("classification", nn.NLLLoss(), pre, n, cls, *args)


def variants(model, kind, momentum):
    """{label: (optimizer, full-size rates?)}; every optimizer on its own copy of the parameters."""
    params = list(model.parameters())
    out = {}
    for mode in ("for-loop", "foreach", "fused"):
        kwargs = {"foreach": mode == "foreach", "fused": mode == "fused" or None}
        if kind == "sgd":
            out[f"torch SGD {mode}"] = (torch.optim.SGD(_clone(params), lr=1e-3, momentum=momentum, **kwargs), None)
        else:
            out[f"torch Adam {mode}"] = (torch.optim.Adam(_clone(params), lr=1e-3, **kwargs), None)
    for label, foreach, full in (
        ("reference", False, False),
        ("foreach compact", True, False),
        ("foreach full-size", True, True),
    ):
        m = copy.deepcopy(model)
        if kind == "sgd":
            opt = alrao.AlraoSGD(m, 1e-5, 1.0, momentum=momentum, foreach=foreach)
        else:
            opt = alrao.AlraoAdam(m, 1e-5, 1e-1, foreach=foreach)
        name = "AlraoSGD" if kind == "sgd" else "AlraoAdam"
        out[f"{name} {label}"] = (opt, full)
    return out


def _clone(params):
    return [nn.Parameter(p.detach().clone()) for p in params]


def fill_grads(opt, generator):
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.randn(p.shape, generator=generator).to(p.device) * 1e-3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per variant (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    step_overhead.add_timing_flags(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    clock = step_overhead.apply_timing_flags(parser, args, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"clock={args.clock} optimizer={args.optimizer} steps={args.steps} (median)"
    )
    real_rule = alrao_optim._multi_tensor_kernels
    for name in args.models:
        model = network(name).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        n_tensors = sum(1 for _ in model.parameters())
        runs = variants(model, args.optimizer, args.momentum)
        gen = torch.Generator().manual_seed(0)
        for opt, _ in runs.values():
            fill_grads(opt, gen)
        times = {label: [] for label in runs}
        for i in range(args.warmup + args.steps):
            for label, (opt, full) in runs.items():
                if full is not None:
                    alrao_optim._multi_tensor_kernels = (lambda d: True) if full else (lambda d: False)
                sync()
                start = clock()
                opt.step()
                sync()
                if i >= args.warmup:
                    times[label].append(clock() - start)
                alrao_optim._multi_tensor_kernels = real_rule
        base = statistics.median(times[f"torch {'SGD' if args.optimizer == 'sgd' else 'Adam'} foreach"])
        print(f"\n{name}: {n_tensors} tensors, {n_params / 1e6:.2f} M parameters")
        for label, t in times.items():
            med = statistics.median(t)
            print(f"  {label:<28} {1e3 * med:>9.3f} ms  {med / base:>6.2f}x torch foreach", flush=True)


if __name__ == "__main__":
    main()
