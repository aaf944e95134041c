"""Cost of one Alrao training step relative to plain SGD (DESIGN.md, "Performance design").

A step is forward, loss, backward, optimizer step (and, for Alrao, the switch
update). Alrao: AlraoModel (N classifier copies) + AlraoSGD. Plain: the same
pre-classifier + one classifier + torch.optim.SGD. Both run on the same batch,
interleaved in one process (A, B, A, B, ...), and the medians are compared.

    python benchmarks/step_overhead.py                      # every setting, CPU
    python benchmarks/step_overhead.py --settings lstm-char --steps 50
    python benchmarks/step_overhead.py --device cuda

For the word-level LSTM the copies of the 10k-word decoder are most of the
arithmetic, so the script also prints the share of the Alrao step spent in
the copies (the step minus a step of the pre-classifier alone).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import alrao  # noqa: E402
import experiment  # noqa: E402
import models  # noqa: E402

CNNS = ("VGG19", "GoogLeNet", "MobileNetV2", "SENet18")
SETTINGS = ("cnn-small",) + CNNS + ("lstm-char", "lstm-word")


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
    ntoken, bptt = (50, 70) if name == "lstm-char" else (10000, 35)

    def make():
        return models.RNNModel(ntoken, 100, 100, 2, dropout=0.2)

    inp = torch.randint(0, ntoken, (bptt, 20), device=device)
    y = torch.randint(0, ntoken, (bptt * 20,), device=device)
    return make, alrao.LinearClassifierRNN, (ntoken,), 6, (inp,), y


def build(name, device, use_alrao):
    make, cls, cargs, n, inputs, target = setting(name, device)
    torch.manual_seed(0)
    pre = make().to(device)
    width = pre.num_features
    if hasattr(pre, "init_hidden"):  # one bptt chunk from a fresh hidden state
        inputs = inputs + (pre.init_hidden(inputs[0].shape[1]),)
    loss_fn = nn.NLLLoss()
    if use_alrao:
        model = alrao.AlraoModel("classification", loss_fn, pre, n, cls, width, *cargs).to(device)
        opt = alrao.AlraoSGD(model, 1e-5, 1.0)

        def step():
            out = model(*inputs)
            out = out[0] if isinstance(out, tuple) else out
            loss = model.loss(out, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.update_switch()
    else:
        model = Plain(pre, cls(width, *cargs)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)

        def step():
            out = model(*inputs)
            out = out[0] if isinstance(out, tuple) else out
            loss = loss_fn(out, target)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return step, n


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


def timed(step, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(steps, n_steps, warmup, device):
    times = [[] for _ in steps]
    for i in range(warmup + n_steps):
        for k, step in enumerate(steps):
            t = timed(step, device)
            if i >= warmup:
                times[k].append(t)
    return [statistics.median(t) for t in times]


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
    args = parser.parse_args(argv)
    kept = False if args.system_malloc else experiment.keep_freed_memory()
    device = torch.device(args.device)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"steps={args.steps} (median) malloc={'keeps freed memory' if kept else 'system default'}"
    )
    print(f"{'setting':<12} {'copies':>6} {'plain ms':>9} {'alrao ms':>9} {'ratio':>6}  notes")
    for name in args.settings:
        plain, _ = build(name, device, use_alrao=False)
        alrao_step, n = build(name, device, use_alrao=True)
        variants = [plain, alrao_step]
        if name == "lstm-word":
            variants.append(pre_only_step(name, device))
        med = measure(variants, args.steps, args.warmup, device)
        note = ""
        if name == "lstm-word":
            note = f"copies: {100 * (med[1] - med[2]) / med[1]:.0f}% of the Alrao step"
        print(
            f"{name:<12} {n:>6} {1e3 * med[0]:>9.1f} {1e3 * med[1]:>9.1f} {med[1] / med[0]:>6.3f}  {note}", flush=True
        )


if __name__ == "__main__":
    main()
