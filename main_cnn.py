"""Train a CIFAR-10 CNN with Alrao or with a plain optimizer (paper, section 4 and Table 1).

Alrao, the paper's setting (feature and classifier rates in [1e-5, 10], 10 copies):

    python main_cnn.py --use_alrao --minLR -5 --maxLR 1 --n_last_layers 10 --model_name GoogLeNet

A baseline, plain SGD at one learning rate:

    python main_cnn.py --lr 0.001 --model_name GoogLeNet

Each run writes config.json, metrics.jsonl, checkpoint.pt, best.pt and
summary.json into --out_dir; --resume continues it.
"""

import argparse
import math

import data
import experiment
import models
from experiment.lazy import F, alrao, torch  # at first use: --help needs no torch (tests/test_help.py)

PROG = "main_cnn.py"
DEFAULTS = experiment.ScriptDefaults(
    datasets=data.IMAGE_DATASETS,
    dataset="cifar10",
    dry_run_dataset="fake",
    batch_size=32,
    min_lr_log10=-5,
    max_lr_log10=1,
    n_classifiers=10,
    offline_datasets=("digits", "fake"),
)
DRY_RUN_BATCHES = 2  # batches per split with --dry_run


def build_parser() -> experiment.ArgumentParser:
    parser = experiment.ArgumentParser(prog=PROG, description=__doc__)
    groups = experiment.add_common_arguments(parser, DEFAULTS)
    groups["data"].add_argument(
        "--data_augm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="augment the training images: random crop 32 with padding 4, horizontal flip",
    )
    experiment.add_network_arguments(parser, groups["model"], models.MODEL_NAMES, models.NARROWEST_WIDTH)
    return parser


def train_epoch(model, loader, optimizer, epoch: int, device, precision=None) -> dict:
    """One epoch of training; the epoch's mean loss / accuracy (per copy too, with Alrao),
    and ``diverged: True`` if the training loss stopped being finite. ``precision``: the
    ``--amp`` setting (:class:`experiment.Precision`; default float32)."""
    precision = precision or experiment.Precision("off", torch.device(device))
    model.train()

    def step(batch):
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast():
            output = model(x)
            loss = model.loss(output, y)
        optimizer.zero_grad()
        precision.backward(loss)
        # the closure gives the loss to optimizers that use it (AliG)
        stepped = precision.step(optimizer, lambda: loss)
        return loss, output, y, stepped

    return experiment.train_steps(model, loader, epoch, step)


def evaluate(model, loader, device, precision=None) -> dict:
    """Mean loss (nats) and accuracy of the model's prediction (with Alrao, the switch average),
    under the run's autocast (``precision``, default float32)."""
    with torch.no_grad():
        precision = precision or experiment.Precision("off", torch.device(device))
        model.eval()
        meter = experiment.Meter()
        try:
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with precision.autocast():
                    output = model(x)
                    loss = F.nll_loss(output, y)
                meter.add(loss, output, y)
            model.check()  # Alrao's accelerator path's deferred divergence check: same score on every device
        except FloatingPointError:  # a diverged network: no prediction to score
            return {"loss": math.nan, "acc": math.nan}
        return meter.means()


@experiment.one_line_errors(PROG, usage_errors=(data.DataError,))
def main(args) -> dict:
    """Run one training of ``args`` (from :func:`build_parser`); returns the run's summary."""
    ranks = experiment.Ranks.from_env(args.no_cuda)  # torchrun: this process's rank; else one rank
    device, device_text = ranks.choose_device(args.no_cuda)
    if device.type != "cpu" and args.num_workers and "num_workers" in experiment.given_flags(args):
        experiment.exit_with_error(
            PROG, f"--num_workers {args.num_workers} is not used on {device.type}: the data stays on the device"
        )
    try:
        precision = experiment.Precision(args.amp, device)  # before the run's folder: fp16 on a CPU stops here
        run = ranks.run(
            args,
            PROG,
            f"cnn-{args.model_name}-{'alrao' if args.use_alrao else 'plain'}-{args.optimizer}-seed{args.seed}",
            device,
        )
        print("configuration:\n" + experiment.format_config(vars(args)))
        print(f"device: {device_text}")
        if args.dry_run:
            print(experiment.dry_run_line(args, DRY_RUN_BATCHES))
        experiment.seed_everything(args.seed)
        train_loader, valid_loader, test_loader, n_classes = data.get_image_loaders(
            args.dataset,
            args.data_path,
            args.batch_size,
            data_augm=args.data_augm,
            device=device,
            seed=args.seed,
            num_workers=args.num_workers,
            limit=DRY_RUN_BATCHES * args.batch_size if args.dry_run else None,
        )
        ranks.shard_loaders(train_loader, valid_loader, test_loader)  # --batch_size is the global batch
    except (experiment.UsageError, experiment.UnsupportedPrecision, data.DataError) as error:
        experiment.exit_with_error(PROG, error)

    with torch.device("meta"):  # the network's size, before any memory is allocated
        size = sum(p.numel() for p in models.build_preclassifier(args.model_name, args.size_multiplier).parameters())
    experiment.check_memory(size, device, f"--model_name {args.model_name} --size_multiplier {args.size_multiplier:g}")
    preclassifier = models.build_preclassifier(args.model_name, args.size_multiplier)
    model = experiment.build_model(
        args, preclassifier, alrao.LinearClassifier, preclassifier.num_features, n_classes, device=device
    ).to(device)
    if args.compile:
        model.compile()  # in place: the state_dict keys (checkpoints) stay those of the eager model
    optimizer = experiment.build_optimizer(model, args, experiment.derived_generator(args.seed, "feature_lrs"))
    hooks = experiment.build_optimizer_hooks(  # training images: Schedule-Free's BatchNorm statistics
        model, optimizer, args, calibration_batches=lambda: (x.to(device) for x, _ in train_loader)
    )
    counts = experiment.count_parameters(model)
    print(
        f"parameters: {counts['n_parameters'] / 1e6:.3f}M "
        f"({counts['n_parameters_without_copies'] / 1e6:.3f}M without the classifier copies)"
    )

    net = ranks.wrap(model, optimizer, device)  # DistributedDataParallel under several processes
    run.start(model, optimizer, hooks, n_outputs=n_classes, device=device_text, **counts)
    with run:
        for epoch in run.epochs():
            for loader in (train_loader, valid_loader, test_loader):
                loader.set_epoch(epoch)  # data order is a function of (seed, epoch): resume is exact
            hooks.train()
            train = train_epoch(net, train_loader, optimizer, epoch, device, precision)
            ranks.sync_buffers(model)  # rank 0's BatchNorm statistics everywhere, as saved
            splits = {"train": train, "valid": None, "test": None}  # None: not evaluated
            if not train["diverged"]:
                evaluated = hooks.evaluation_network()  # the model, or DoG's / Schedule-Free's evaluation weights
                splits.update(
                    valid=evaluate(evaluated, valid_loader, device, precision),
                    test=evaluate(evaluated, test_loader, device, precision),
                )
            run.end_epoch(experiment.epoch_record(model, optimizer, splits, diverged=train["diverged"]))
    return run.finish()


if __name__ == "__main__":
    with experiment.start_up(PROG):  # a Ctrl-C while torch loads: one line, too
        args = build_parser().parse_args()  # first: --help and flag errors need no torch
        experiment.keep_freed_memory()  # large CPU tensors reuse their pages (see its docstring)
    main(args)
