"""Cost of one Alrao training step relative to plain SGD (DESIGN.md, "Performance design").

A step is forward, loss, backward, optimizer step (and, for Alrao, the switch
update). Alrao: AlraoModel (N classifier copies) + AlraoSGD. Plain: the same
pre-classifier + one classifier + torch.optim.SGD. Both run on the same batch,
interleaved in one process (A, B, A, B, ...), and the medians are compared.

    python benchmarks/step_overhead.py                      # every setting, CPU
    python benchmarks/step_overhead.py --settings lstm-char --steps 50
    python benchmarks/step_overhead.py --device cuda
    python benchmarks/step_overhead.py --settings lstm-char --phases   # where the difference lies

The "floor" column is the plain step of the same network whose decoder does the
copies' arithmetic: one Linear with N x K outputs, a log-softmax over each of
its N slices and N NLL losses, with torch.optim.SGD. N copies of a decoder are
N decoders' work, so for the LSTMs (where the decoder is a large part of the
step) the floor, not the plain step, is what Alrao can be held to.

``lstm-char-user`` is the char LSTM with the copies of a classifier class of the
user's own (Linear + log-softmax, not ``alrao.LinearClassifierRNN``), which goes
through the generic path (copies stacked and vmapped); its note compares it with
the built-in class's step and with the same class's copies called one by one
(the fallback).

For the word-level LSTM the copies of the 10k-word decoder are most of the
arithmetic, so the script also prints the share of the Alrao step spent in
the copies (the step minus a step of the pre-classifier alone).
"""

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import alrao  # noqa: E402
import experiment  # noqa: E402
import models  # noqa: E402

CNNS = ("VGG19", "GoogLeNet", "MobileNetV2", "SENet18")
SETTINGS = ("cnn-small",) + CNNS + ("lstm-char", "lstm-char-user", "lstm-word")


class SmallCNN(nn.Module):
    """A CIFAR-sized CNN cheap enough to time on any CPU."""

    num_features = 256

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 256, 3, padding=1),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x):
        return self.net(x)


class UserDecoder(nn.Module):
    """A classifier class of the user's own (the char LSTM's decoder, written without alrao.layers)."""

    def __init__(self, nhid, ntoken):
        super().__init__()
        self.linear = nn.Linear(nhid, ntoken)

    def forward(self, x):
        return torch.log_softmax(self.linear(x.reshape(-1, x.shape[-1])), dim=-1)


class FloorHead(nn.Module):
    """The copies' arithmetic in a plain decoder: one Linear with n x k outputs, returning
    the (n, rows, k) log-softmax of its n slices."""

    def __init__(self, width, k, n):
        super().__init__()
        self.n, self.k = n, k
        self.linear = nn.Linear(width, n * k)

    def forward(self, x):
        a = self.linear(x.reshape(-1, x.shape[-1])).view(-1, self.n, self.k)
        return torch.log_softmax(a, dim=-1)


class Plain(nn.Module):
    """Pre-classifier + one classifier, forwarding tuple outputs like AlraoModel."""

    def __init__(self, pre, head):
        super().__init__()
        self.pre, self.head = pre, head

    def forward(self, *args):
        out = self.pre(*args)
        if isinstance(out, tuple):
            return (self.head(out[0]),) + out[1:]
        return self.head(out)


def setting(name, device):
    """(make_preclassifier, classifier_cls, classifier_args, n_copies, batch_of_inputs, target)."""
    if name == "cnn-small" or name in CNNS:
        make = SmallCNN if name == "cnn-small" else models.MODELS[name]
        x = torch.randn(32, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (32,), device=device)
        return make, alrao.LinearClassifier, (10,), 10, (x,), y
    ntoken, bptt = (10000, 35) if name == "lstm-word" else (50, 70)

    def make():
        return models.RNNModel(ntoken, 100, 100, 2, dropout=0.2)

    inp = torch.randint(0, ntoken, (bptt, 20), device=device)
    y = torch.randint(0, ntoken, (bptt * 20,), device=device)
    cls = UserDecoder if name == "lstm-char-user" else alrao.LinearClassifierRNN
    return make, cls, (ntoken,), 6, (inp,), y


@contextlib.contextmanager
def _forced_loop():
    real = alrao.copies._stacking_obstacle
    alrao.copies._stacking_obstacle = lambda copies, named: "forced by the benchmark"
    try:
        yield
    finally:
        alrao.copies._stacking_obstacle = real


#: The phases of a training step, as train_step marks them.
PHASES = ("forward", "loss", "zero_grad", "backward", "step", "switch")


def train_step(model, optimizer, inputs, target, loss_fn=None, dtype=None, marks=None) -> None:
    """One training step: forward and loss (under ``torch.autocast`` in ``dtype`` when given),
    backward, optimizer step. ``loss_fn`` None: an Alrao model, its own loss and then its switch
    update. The step every benchmark here (and gpu_check.py) times. ``marks``: a list to which the
    clock's reading is appended before the step and after each of its :data:`PHASES` (CPU only:
    on a GPU the phases overlap)."""

    def mark():
        if marks is not None:
            marks.append(_clock())

    amp = torch.autocast(target.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    mark()
    with amp:
        out = model(*inputs)
        mark()
        out = out[0] if isinstance(out, tuple) else out
        loss = model.loss(out, target) if loss_fn is None else loss_fn(out, target)
    mark()
    optimizer.zero_grad()
    mark()
    loss.backward()
    mark()
    optimizer.step()
    mark()
    if loss_fn is None:
        model.update_switch()
    mark()


def build(name, device, variant, marks=None):
    """One step of ``variant``: 'plain', 'floor', 'alrao', 'alrao-builtin' (the built-in
    classifier class in place of a user's) or 'alrao-loop' (a user's class with its copies
    called one by one, the fallback for what vmap cannot batch). ``marks``: as in train_step."""
    make, cls, cargs, n, inputs, target = setting(name, device)
    one_by_one = variant == "alrao-loop"
    if variant == "alrao-builtin":
        cls = alrao.LinearClassifierRNN
    variant = "alrao" if variant.startswith("alrao") else variant
    torch.manual_seed(0)
    pre = make().to(device)
    width = pre.num_features
    if hasattr(pre, "init_hidden"):  # one bptt chunk from a fresh hidden state
        inputs = inputs + (pre.init_hidden(inputs[0].shape[1]),)
    loss_fn = nn.NLLLoss()
    if variant == "alrao":
        model = alrao.AlraoModel("classification", loss_fn, pre, n, cls, width, *cargs).to(device)
        opt = alrao.AlraoSGD(model, 1e-5, 1.0)

        def step():
            if one_by_one:  # the fallback path, forced (its one warning silenced)
                with warnings.catch_warnings(), _forced_loop():
                    warnings.simplefilter("ignore")
                    train_step(model, opt, inputs, target, marks=marks)
            else:
                train_step(model, opt, inputs, target, marks=marks)
    else:
        floor = variant == "floor"
        model = Plain(pre, FloorHead(width, cargs[0], n) if floor else cls(width, *cargs)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)

        def floor_loss(out, target):  # n NLL losses, one per slice, in one call (their sum)
            return n * loss_fn(out.reshape(-1, out.shape[-1]), target.repeat_interleave(n))

        def step():
            train_step(model, opt, inputs, target, floor_loss if floor else loss_fn, marks=marks)

    return step


def pre_only_step(name, device):
    """A step of the pre-classifier alone (its output summed): the part Alrao does not touch."""
    make, _, _, _, inputs, _ = setting(name, device)
    torch.manual_seed(0)
    pre = make().to(device)
    if hasattr(pre, "init_hidden"):
        inputs = inputs + (pre.init_hidden(inputs[0].shape[1]),)
    opt = torch.optim.SGD(pre.parameters(), lr=1e-2)

    def step():
        out = pre(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        opt.zero_grad()
        out.float().mean().backward()
        opt.step()

    return step


_clock = time.perf_counter


def timed(step, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = _clock()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _clock() - start


def measure(steps, n_steps, warmup, device):
    times = [[] for _ in steps]
    for i in range(warmup + n_steps):
        for k, step in enumerate(steps):
            t = timed(step, device)
            if i >= warmup:
                times[k].append(t)
    return [statistics.median(t) for t in times]


def measure_phases(name, device, n_steps, warmup):
    """The median time of each of :data:`PHASES` in the floor's and Alrao's steps of ``name``,
    alternated: ``{'floor': [seconds per phase], 'alrao': [...]}``."""
    marks = {variant: [] for variant in ("floor", "alrao")}
    steps = {variant: build(name, device, variant, marks[variant]) for variant in marks}
    times = {variant: [[] for _ in PHASES] for variant in marks}
    for i in range(warmup + n_steps):
        for variant, step in steps.items():
            marks[variant].clear()
            step()
            if i >= warmup:
                for k, (start, end) in enumerate(zip(marks[variant], marks[variant][1:])):
                    times[variant][k].append(end - start)
    return {variant: [statistics.median(t) for t in phases] for variant, phases in times.items()}


def print_phases(name, medians) -> None:
    floor, alrao = medians["floor"], medians["alrao"]
    for phase, f, a in zip((*PHASES, "total"), (*floor, sum(floor)), (*alrao, sum(alrao))):
        print(f"{name:<14} {phase:<10} {1e3 * f:>9.2f} {1e3 * a:>9.2f} {1e3 * (a - f):>+9.2f}", flush=True)


def add_timing_flags(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--clock``, the same in every benchmark that times steps."""
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's, the core count)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (default); cpu: the process's CPU time, steadier on a shared machine "
        "(with --threads 1; on CUDA only wall)",
    )


def apply_timing_flags(parser: argparse.ArgumentParser, args, device: torch.device):
    """Sets torch's thread count from ``--threads``; the clock ``--clock`` asks for on ``device``."""
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--system_malloc",
        action="store_true",
        help="leave glibc's allocator as it is (default: keep freed memory, as the scripts do)",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="time each phase of the floor's and Alrao's steps (forward, loss, zero_grad, backward, "
        "step, switch) instead of whole steps; CPU only",
    )
    add_timing_flags(parser)
    args = parser.parse_args(argv)
    if args.phases and args.device != "cpu":
        parser.error(f"--phases times the phases of a CPU step (on {args.device} they overlap): use --device cpu")
    global _clock
    _clock = apply_timing_flags(parser, args, torch.device(args.device))
    kept = False if args.system_malloc else experiment.keep_freed_memory()
    device = torch.device(args.device)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} clock={args.clock} "
        f"steps={args.steps} (median) malloc={'keeps freed memory' if kept else 'system default'}"
    )
    if args.phases:
        print(f"{'setting':<14} {'phase':<10} {'floor ms':>9} {'alrao ms':>9} {'alrao-floor':>9}")
        for name in args.settings:
            print_phases(name, measure_phases(name, device, args.steps, args.warmup))
        return
    print(
        f"{'setting':<14} {'copies':>6} {'plain ms':>9} {'floor ms':>9} {'alrao ms':>9} "
        f"{'/plain':>7} {'/floor':>7}  notes"
    )
    for name in args.settings:
        names = ["plain", "floor", "alrao"] + (["alrao-builtin", "alrao-loop"] if name == "lstm-char-user" else [])
        variants = [build(name, device, v) for v in names]
        n = setting(name, device)[3]
        if name == "lstm-word":
            variants.append(pre_only_step(name, device))
        med = measure(variants, args.steps, args.warmup, device)
        note = ""
        if name == "lstm-char-user":
            note = (
                f"user class / built-in class: {med[2] / med[3]:.3f} (built-in {1e3 * med[3]:.1f} ms, "
                f"user class one by one {1e3 * med[4]:.1f} ms)"
            )
        if name == "lstm-word":
            note = f"copies: {100 * (med[2] - med[3]) / med[2]:.0f}% of the Alrao step"
        print(
            f"{name:<14} {n:>6} {1e3 * med[0]:>9.1f} {1e3 * med[1]:>9.1f} {1e3 * med[2]:>9.1f} "
            f"{med[2] / med[0]:>7.3f} {med[2] / med[1]:>7.3f}  {note}",
            flush=True,
        )


if __name__ == "__main__":
    main()
