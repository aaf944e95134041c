"""Train an LSTM language model on Penn Treebank with Alrao or with a plain optimizer
(paper, section 4 and Table 1, character level).

The paper's character-level setup with Alrao (rates in [1e-3, 100], 6 copies;
2-layer LSTM, embedding and hidden size 100, dropout 0.2, 20 streams,
back-propagation through 70 characters, gradient clipping 0.25):

    python main_rnn.py --char_prediction --use_alrao --minLR -3 --maxLR 2 --n_last_layers 6 --bptt 70 --epochs 300

A baseline, plain SGD at one learning rate:

    python main_rnn.py --char_prediction --bptt 70 --epochs 300 --lr 1

Each run writes config.json, metrics.jsonl, checkpoint.pt, best.pt and
summary.json into --out_dir; --resume continues it.
"""

import math

import data
import experiment
import models
from experiment.lazy import F, alrao, torch  # at first use: --help needs no torch (tests/test_help.py)

PROG = "main_rnn.py"
DEFAULTS = experiment.ScriptDefaults(
    datasets=data.TEXT_CORPORA,
    dataset="ptb",
    dry_run_dataset="pydoc",
    batch_size=20,
    min_lr_log10=-3,
    max_lr_log10=2,
    n_classifiers=6,
    data_path="datasets/ptb",
    data_loader=False,
    offline_datasets=("pydoc",),
)
EVAL_BATCH_SIZE = 10  # parallel streams of the validation and test text (as the authors' code)
DRY_RUN_BATCHES = 2  # bptt segments per split with --dry_run


def build_parser() -> experiment.ArgumentParser:
    parser = experiment.ArgumentParser(prog=PROG, description=__doc__)
    groups = experiment.add_common_arguments(parser, DEFAULTS)
    groups["data"].add_argument(
        "--char_prediction",
        action="store_true",
        help="predict the next character (the paper's task) instead of the next word",
    )
    groups["model"].add_argument(
        "--emsize", type=experiment.positive_int, default=100, help="size of the token embeddings"
    )
    groups["model"].add_argument(
        "--nhid", type=experiment.positive_int, default=100, help="hidden units per LSTM layer"
    )
    groups["model"].add_argument("--nlayers", type=experiment.positive_int, default=2, help="number of LSTM layers")
    groups["model"].add_argument("--drop_out", type=experiment.probability, default=0.2, help="dropout probability")
    groups["optimisation"].add_argument(
        "--bptt",
        type=experiment.positive_int,
        default=35,
        help="tokens of truncated back-propagation through time (the paper's character-level setup: 70)",
    )
    groups["optimisation"].add_argument(
        "--clip",
        type=experiment.nonnegative_float,
        default=0.25,
        help="maximal gradient norm of the pre-classifier and of each classifier copy (0: no clipping)",
    )
    return parser


def detach(hidden):
    """The hidden state cut from the graph of the previous segment (truncated back-propagation)."""
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


def clip_gradients(model, max_norm: float) -> None:
    """Clip the gradient norm of the pre-classifier to ``max_norm``, and that of each classifier
    copy separately: a copy is trained as if it were the only classifier (paper, section 3.2),
    so a diverging copy does not shrink the others' steps. The same rule for plain runs (one copy)."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.preclassifier.parameters(), max_norm)
        for classifier in model.classifiers:
            torch.nn.utils.clip_grad_norm_(classifier.parameters(), max_norm)


def train_epoch(model, source, optimizer, args, epoch: int, precision=None) -> dict:
    """One pass over the batchified training text ``source`` (tokens, streams), ``args.bptt``
    tokens at a time, the hidden state carried across segments. Returns the epoch's mean loss /
    accuracy per token (per copy too, with Alrao) and ``diverged``. ``precision``: the ``--amp``
    setting (:class:`experiment.Precision`; default float32)."""
    precision = precision or experiment.Precision("off", source.device)
    model.train()
    hidden = model.preclassifier.init_hidden(source.size(1))

    def step(start):
        nonlocal hidden  # carried from one segment to the next
        inputs, targets = data.get_batch(source, start, args.bptt)
        with precision.autocast():
            output, hidden = model(inputs, detach(hidden))
            loss = model.loss(output, targets)
        optimizer.zero_grad()
        precision.backward(loss)
        precision.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        clip_gradients(model, args.clip)
        # the closure gives the loss to optimizers that use it (AliG)
        stepped = precision.step(optimizer, lambda: loss)
        return loss, output, targets, stepped

    return experiment.train_steps(model, range(0, source.size(0) - 1, args.bptt), epoch, step)


def evaluate(model, source, bptt: int, precision=None) -> dict:
    """Mean loss (nats per token) and accuracy of the model on the batchified text ``source``,
    under the run's autocast (``precision``, default float32)."""
    with torch.no_grad():
        precision = precision or experiment.Precision("off", source.device)
        model.eval()
        meter = experiment.Meter()
        hidden = model.preclassifier.init_hidden(source.size(1))
        try:
            for start in range(0, source.size(0) - 1, bptt):
                inputs, targets = data.get_batch(source, start, bptt)
                with precision.autocast():
                    output, hidden = model(inputs, hidden)
                    loss = F.nll_loss(output, targets)
                meter.add(loss, output, targets)
            model.check()  # Alrao's accelerator path's deferred divergence check: same score on every device
        except FloatingPointError:  # a diverged network: no prediction to score
            return {"loss": math.nan, "acc": math.nan}
        return meter.means()


def dry_run_tokens(tokens: "torch.Tensor", n_streams: int, bptt: int) -> "torch.Tensor":
    """The first tokens of a split: :data:`DRY_RUN_BATCHES` segments of ``bptt`` tokens per stream."""
    return tokens[: n_streams * (DRY_RUN_BATCHES * bptt + 1)]


@experiment.one_line_errors(PROG, usage_errors=(data.DataError,))
def main(args) -> dict:
    """Run one training of ``args`` (from :func:`build_parser`); returns the run's summary."""
    ranks = experiment.Ranks.from_env(args.no_cuda)  # torchrun: this process's rank; else one rank
    device, device_text = ranks.choose_device(args.no_cuda)
    level = "char" if args.char_prediction else "word"
    try:
        precision = experiment.Precision(args.amp, device)  # before the run's folder: fp16 on a CPU stops here
        run = ranks.run(
            args,
            PROG,
            f"rnn-{args.dataset}-{level}-{'alrao' if args.use_alrao else 'plain'}-{args.optimizer}-seed{args.seed}",
            device,
        )
        print("configuration:\n" + experiment.format_config(vars(args)))
        print(f"device: {device_text}")
        if args.dry_run:
            print(experiment.dry_run_line(args, DRY_RUN_BATCHES))
        experiment.seed_everything(args.seed)
        corpus = data.get_corpus(args.dataset, args.data_path, char_level=args.char_prediction)
    except (experiment.UsageError, experiment.UnsupportedPrecision, data.DataError) as error:
        experiment.exit_with_error(PROG, error)
    splits = {
        "train": (corpus.train, args.batch_size),
        "valid": (corpus.valid, EVAL_BATCH_SIZE),
        "test": (corpus.test, EVAL_BATCH_SIZE),
    }
    if args.dry_run:
        splits = {name: (dry_run_tokens(tokens, n, args.bptt), n) for name, (tokens, n) in splits.items()}
    try:
        train_data, valid_data, test_data = (  # under several processes, this rank's streams
            ranks.columns(data.batchify(tokens, n), name == "train").to(device) for name, (tokens, n) in splits.items()
        )
    except experiment.UsageError as error:
        experiment.exit_with_error(PROG, error)
    except ValueError as error:  # a split shorter than its number of streams
        experiment.exit_with_error(PROG, f"{error} (--dataset {args.dataset}, --batch_size {args.batch_size})")
    ntoken = len(corpus.dictionary)
    print(f"vocabulary: {ntoken} {level}s")

    with torch.device("meta"):  # the network's size, before any memory is allocated
        size = sum(p.numel() for p in models.RNNModel(ntoken, args.emsize, args.nhid, args.nlayers).parameters())
    experiment.check_memory(size, device, f"--emsize {args.emsize} --nhid {args.nhid} --nlayers {args.nlayers}")
    preclassifier = models.RNNModel(ntoken, args.emsize, args.nhid, args.nlayers, args.drop_out)
    model = experiment.build_model(args, preclassifier, alrao.LinearClassifierRNN, args.nhid, ntoken, device=device).to(
        device
    )
    if args.compile:
        model.compile()  # in place: the state_dict keys (checkpoints) stay those of the eager model
    optimizer = experiment.build_optimizer(model, args, experiment.derived_generator(args.seed, "feature_lrs"))
    hooks = experiment.build_optimizer_hooks(model, optimizer, args)
    counts = experiment.count_parameters(model)
    print(
        f"parameters: {counts['n_parameters'] / 1e6:.3f}M "
        f"({counts['n_parameters_without_copies'] / 1e6:.3f}M without the classifier copies)"
    )

    net = ranks.wrap(model, optimizer, device)  # DistributedDataParallel under several processes
    run.start(model, optimizer, hooks, n_outputs=ntoken, device=device_text, ntoken=ntoken, **counts)
    with run:
        for epoch in run.epochs():
            hooks.train()
            train = train_epoch(net, train_data, optimizer, args, epoch, precision)
            results = {"train": train, "valid": None, "test": None}  # None: not evaluated
            if not train["diverged"]:
                evaluated = hooks.evaluation_network()  # the model, or DoG's / Schedule-Free's evaluation weights
                results.update(
                    valid=evaluate(evaluated, valid_data, args.bptt, precision),
                    test=evaluate(evaluated, test_data, args.bptt, precision),
                )
            run.end_epoch(
                experiment.epoch_record(
                    model,
                    optimizer,
                    results,
                    diverged=train["diverged"],
                    loss_unit="bpc" if args.char_prediction else "ppl",
                )
            )
    return run.finish()


if __name__ == "__main__":
    with experiment.start_up(PROG):  # a Ctrl-C while torch loads: one line, too
        args = build_parser().parse_args()  # first: --help and flag errors need no torch
        experiment.keep_freed_memory()  # large CPU tensors reuse their pages (see its docstring)
    main(args)
