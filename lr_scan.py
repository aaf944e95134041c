"""Loss per learning rate of a CIFAR-10 network: one step at each rate, from the same start.

Builds a network of the registry (pre-classifier + linear classifier, in train
mode, freshly initialised from --seed) and a fresh optimizer, takes the first
training batch (no augmentation), and for each rate of a log-spaced grid
measures the loss on that batch after ONE optimizer step at that rate
(:func:`alrao.tools.lr_scan`: the model and the optimizer are restored between
probes). Saves the figure (PNG) and the numbers (JSON beside it):

    python lr_scan.py --model_name GoogLeNet --dataset cifar10 --minLR -5 --maxLR 1 --n_points 13

Rates whose loss is lower than before the step are the ones that make
progress on this batch; the curve shows where SGD (or Adam) starts to diverge.
"""

import math
import os
from pathlib import Path

import data
import experiment
import models
from experiment.lazy import alrao, nn, torch  # at first use: --help needs no torch (tests/test_help.py)

PROG = "lr_scan.py"
OFFLINE_DATASETS = ("digits", "fake")  # made in memory: no --data_path (as main_cnn.py's)
# With a fresh optimizer the scanned step is its first one: no momentum buffer
# or moment estimate exists yet, so the plain optimizers need no extra flag.
OPTIMIZERS = {
    "SGD": lambda params: torch.optim.SGD(params, lr=1.0),
    "Adam": lambda params: torch.optim.Adam(params, lr=1.0),
}


def build_parser() -> experiment.ArgumentParser:
    parser = experiment.ArgumentParser(
        prog=PROG,
        description="Loss on one training batch after one optimizer step, for each "
        "learning rate of a log-spaced grid; saves a PNG and a JSON.",
    )
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=list(data.IMAGE_DATASETS), default="cifar10", help="data set of the batch")
    group.add_argument(
        "--data_path", default="datasets", help="folder holding the data sets (downloaded there when missing)"
    )
    experiment.add_shared_argument(
        group,
        "batch_size",
        default=32,
        help="size of the batch the rates are probed on (the paper trains with 32)",
    )
    experiment.add_network_arguments(
        parser, parser.add_argument_group("model"), models.MODEL_NAMES, models.NARROWEST_WIDTH
    )
    group = parser.add_argument_group("scan")
    group.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        default="SGD",
        help="optimizer taking the step (fresh: the step is its first)",
    )
    experiment.add_shared_argument(group, "minLR", default=-5.0, help="log10 of the smallest learning rate probed")
    experiment.add_shared_argument(group, "maxLR", default=1.0, help="log10 of the largest learning rate probed")
    group.add_argument(
        "--n_points",
        type=experiment.positive_int,
        default=13,
        help="number of learning rates, log-spaced from 10^minLR to 10^maxLR",
    )
    group = parser.add_argument_group("run")
    experiment.add_shared_argument(
        group,
        "seed",
        default=0,
        help="seed of the initialisation, of the batch drawn and of dropout",
    )
    group.add_argument(
        "--out", default="lr_scan.png", help="path of the figure (PNG); the numbers go to the same path with .json"
    )
    experiment.add_shared_argument(group, "no_cuda", help=experiment.flags.NO_CUDA_HELP)
    parser.add_check(_check_args)
    return parser


def _check_args(args) -> str | None:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        return f"--out {args.out}: expected the path of a .png file"
    if not out.parent.is_dir():
        return f"--out {args.out}: folder {out.parent} does not exist"
    for path in (out, out.with_suffix(".json")):  # both are written: check both before the scan
        if path.is_dir():
            return f"--out {args.out}: {path} is a folder, not a file"
        if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            return f"--out {args.out}: cannot write {path} (read-only or permission denied)"
    if args.n_points == 1 and args.minLR != args.maxLR:
        return f"--n_points 1 probes one rate: give --minLR = --maxLR (got {args.minLR:g} and {args.maxLR:g})"
    if args.n_points > 1 and not args.minLR < args.maxLR:
        return f"--minLR ({args.minLR:g}) must be smaller than --maxLR ({args.maxLR:g})"
    return experiment.unused_data_path(args, OFFLINE_DATASETS) or experiment.check_log10_interval(
        args.minLR, args.maxLR
    )


def learning_rates(min_log10: float, max_log10: float, n_points: int) -> list:
    """``n_points`` learning rates log-spaced from ``10**min_log10`` to ``10**max_log10``."""
    if n_points == 1:
        return [10.0**min_log10]
    step = (max_log10 - min_log10) / (n_points - 1)
    return [10.0 ** (min_log10 + i * step) for i in range(n_points)]


@experiment.one_line_errors(PROG, usage_errors=(data.DataError,))
def main(args) -> "alrao.tools.LRScanResult":
    """Scan the rates of ``args`` (from :func:`build_parser`); returns the result."""
    out = Path(args.out)
    out_json = out.with_suffix(".json")
    device, device_text = experiment.choose_device(args.no_cuda)
    print("configuration:\n" + experiment.format_config(vars(args)))
    print(f"device: {device_text}")
    experiment.seed_everything(args.seed)
    try:
        train_loader, _, _, n_classes = data.get_image_loaders(
            args.dataset,
            args.data_path,
            args.batch_size,
            data_augm=False,
            device=device,
            seed=args.seed,
            limit=args.batch_size,
        )
    except data.DataError as error:
        experiment.exit_with_error(PROG, error)

    preclassifier = models.MODELS[args.model_name](args.size_multiplier)
    model = nn.Sequential(preclassifier, alrao.LinearClassifier(preclassifier.num_features, n_classes))
    model.to(device).train()
    optimizer = OPTIMIZERS[args.optimizer](model.parameters())
    inputs, targets = next(iter(train_loader))
    batch = (inputs.to(device), targets.to(device))

    lrs = learning_rates(args.minLR, args.maxLR, args.n_points)
    result = alrao.tools.lr_scan(model, nn.NLLLoss(), batch, optimizer, lrs)

    print(f"loss before the step: {result.loss_before:.4f}")
    print("learning rate   loss after one step")
    for lr, loss in zip(result.lrs, result.losses):
        print(f"{lr:13.3e}   {loss:.4f}" if math.isfinite(loss) else f"{lr:13.3e}   diverged")
    best = result.best_lr
    print(f"lowest loss at learning rate {best:.3e}" if best is not None else "every rate diverged")
    experiment.write_json(out_json, {"config": vars(args), "device": device_text, **result.to_dict()})
    alrao.tools.plot_lr_scan(result, path=out)
    print(f"wrote {out} and {out_json}")
    return result


if __name__ == "__main__":
    with experiment.start_up(PROG):  # a Ctrl-C while torch loads: one line, too
        args = build_parser().parse_args()  # first: --help and flag errors need no torch
        experiment.keep_freed_memory()  # large CPU tensors reuse their pages (see its docstring)
    main(args)
