"""Reproduce the paper's tables and figures: sweeps of main_cnn.py / main_rnn.py runs, then
Table 1 (Markdown and JSON, the paper's numbers beside ours) and the figures (PNG).

The paper's protocol (CIFAR-10 and PTB; days of GPU time):

    python reproduce.py all --jobs 4                     # 4 runs at a time (one per GPU)
    python reproduce.py table1 --launcher slurm --slurm_partition gpu

The quick profile (offline digits and pydoc data, minutes on a CPU):

    python reproduce.py table1 --profile quick --jobs 2

Each run is a folder under --out_dir, named after what it computes; a finished
run is never trained again and an interrupted one is continued, so running the
same command again resumes a sweep. A failed run is reported and the others go
on (exit status 1). --collect_only writes the tables and figures from the runs
already there.
"""

import dataclasses
import shlex
import signal
import time
from pathlib import Path

import data
import experiment
from experiment.provenance import RESULTS_SOURCES, source_hash
from experiment.run_folder import Terminated, check_writable_folder, sigterm_as_interrupt
from reproduce_lib.aggregate import folder_problem
from reproduce_lib.experiments import BASELINES, EXPERIMENTS, Context, missing_baselines
from reproduce_lib.launch import (
    LAUNCHERS,
    LaunchError,
    Outcome,
    SlurmOptions,
    default_jobs,
    launch,
    slurm_gpus_message,
)
from reproduce_lib.outputs import git_commit, record_written
from reproduce_lib.plan import Plan, unique
from reproduce_lib.protocol import CNN_MODELS, MODEL_NAMES, PROFILES

PROG = "reproduce.py"
ALL = "all"
DATASETS = tuple(data.IMAGE_DATASETS) + tuple(data.TEXT_CORPORA)
SLURM_FLAGS = ("slurm_partition", "slurm_timeout_min", "slurm_gpus", "slurm_cpus")


def build_parser() -> experiment.ArgumentParser:
    parser = experiment.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "experiments",
        nargs="+",
        choices=[*EXPERIMENTS, ALL],
        metavar="EXPERIMENT",
        help="what to reproduce: "
        + "; ".join(f"{name}: {e.help}" for name, e in EXPERIMENTS.items())
        + f"; {ALL}: every one",
    )
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="paper",
        help="; ".join(f"{name}: {p.description}" for name, p in PROFILES.items()),
    )
    what.add_argument(
        "--models",
        nargs="+",
        choices=list(MODEL_NAMES),
        default=None,
        metavar="MODEL",
        help=f"only these models, among {', '.join(MODEL_NAMES)} (default: the profile's for each experiment)",
    )
    what.add_argument(
        "--seeds",
        nargs="+",
        type=experiment.nonnegative_int,
        default=None,
        help="only these seeds, e.g. 0 1 (default: the profile's: 0 to its number of runs - 1)",
    )
    experiment.add_shared_argument(
        what,
        "epochs",
        default=None,
        help="maximal number of epochs of every run (default: the profile's)",
    )
    what.add_argument(
        "--dataset",
        choices=list(DATASETS),
        default=None,
        help="data set of the runs that accept it: an image one for the CNNs, a text one for "
        "the LSTM (default: the profile's)",
    )
    what.add_argument(
        "--baselines",
        nargs="+",
        choices=list(BASELINES),
        default=None,
        metavar="OPTIMIZER",
        help=f"the baselines experiment runs only these, among {', '.join(BASELINES)} "
        "(default: every one whose package is installed)",
    )
    experiment.add_shared_argument(
        what,
        "dry_run",
        help="check the whole pipeline quickly: every run with --dry_run (a few batches of at most 2 epochs), "
        "seed 0 only unless --seeds, in this process unless --launcher or --jobs; its tables mean nothing "
        "and go to <out_dir>/results",
    )

    where = parser.add_argument_group("where")
    where.add_argument(
        "--out_dir",
        default=None,
        help="folder of the runs (default: runs/reproduce-<profile>, runs/reproduce-<profile>-dry_run with --dry_run)",
    )
    where.add_argument(
        "--results_dir",
        default=None,
        help="folder of the tables and figures (default: the tracked results/ for the whole paper profile, "
        "results/<profile>/ for the whole of another; <out_dir>/results for a dry run or a part of a profile "
        "(--models, --seeds, --epochs, --dataset, --baselines), so that it never overwrites committed results)",
    )

    how = parser.add_argument_group("how")
    how.add_argument(
        "--launcher",
        choices=list(LAUNCHERS),
        default="local",
        help="local: subprocesses on this machine, --jobs at a time; inline: in this process, one "
        "at a time (debugging); slurm: one Slurm job per run through submitit",
    )
    how.add_argument(
        "--jobs",
        type=experiment.positive_int,
        default=None,
        help="runs at a time with --launcher local (default: one per visible GPU, or 1)",
    )
    how.add_argument(
        "--gpus_per_run",
        type=experiment.positive_int,
        default=1,
        help="GPUs of each run (local: torchrun, one process per GPU, or CPU processes without GPUs; "
        "slurm: one task per GPU in each job); --batch_size stays each run's global batch",
    )
    how.add_argument(
        "--collect_only",
        action="store_true",
        help="train nothing: write the tables and figures from the runs already in --out_dir",
    )
    how.add_argument("--slurm_partition", default=None, help="Slurm partition of the jobs")
    how.add_argument(
        "--slurm_timeout_min",
        type=experiment.positive_int,
        default=None,
        help=f"time limit of each job in minutes (default: {SlurmOptions.timeout_min})",
    )
    how.add_argument(
        "--slurm_gpus",
        type=experiment.nonnegative_int,
        default=None,
        help=f"GPUs per job: 1, as each run trains on one GPU, or 0 (default: {SlurmOptions.gpus_per_job})",
    )
    how.add_argument(
        "--slurm_cpus",
        type=experiment.positive_int,
        default=None,
        help=f"CPU cores per job (default: {SlurmOptions.cpus_per_job})",
    )
    parser.add_check(_check)
    return parser


def _check(args) -> str | None:
    """Fill the defaults that depend on other flags; the first inconsistency, as a message."""
    args.experiments_given = list(dict.fromkeys(args.experiments))  # as typed ("all" stays "all")
    if ALL in args.experiments:
        args.experiments = list(EXPERIMENTS)
    args.experiments = list(dict.fromkeys(args.experiments))
    if args.jobs is not None and args.launcher != "local":
        return f"--jobs {args.jobs} is used only with --launcher local (not {args.launcher})"
    if args.launcher != "slurm" and (message := experiment.used_only_with(args, SLURM_FLAGS, "--launcher slurm")):
        return message
    if args.slurm_gpus is not None and args.slurm_gpus > 1 and args.gpus_per_run == 1:
        return slurm_gpus_message(args.slurm_gpus)
    if args.gpus_per_run > 1 and args.launcher == "inline":
        return f"--gpus_per_run {args.gpus_per_run} needs processes of their own: use --launcher local or slurm"
    if args.gpus_per_run > 1 and args.slurm_gpus not in (None, 0, args.gpus_per_run):
        return (
            f"--slurm_gpus {args.slurm_gpus} with --gpus_per_run {args.gpus_per_run}: each process of a run "
            f"takes one GPU (--slurm_gpus {args.gpus_per_run}, or 0 for CPU processes)"
        )
    if args.collect_only and (args.jobs is not None or args.launcher != "local"):
        return "--collect_only trains nothing: it takes no --launcher or --jobs"
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        return f"--seeds {' '.join(map(str, args.seeds))} repeats a seed"
    if args.baselines is not None:
        if "baselines" not in args.experiments:
            return f"--baselines {' '.join(args.baselines)} is used only by the baselines experiment"
        missing = missing_baselines(args.baselines)
        if missing:
            return next(iter(missing.values()))
    if args.dataset is not None and args.models is not None:
        cnn = args.dataset in data.IMAGE_DATASETS
        if not any((m in CNN_MODELS) == cnn for m in args.models):
            return (
                f"--dataset {args.dataset} is {'an image' if cnn else 'a text'} data set, but --models "
                f"{' '.join(args.models)} has no {'CNN' if cnn else 'LSTM'}"
            )
    if args.dry_run and "launcher" not in args.given and args.jobs is None:
        # a dry run's few batches take a second; starting a Python with torch for each takes more
        args.launcher = "inline"
    if args.out_dir is None:
        args.out_dir = str(Path("runs") / f"reproduce-{args.profile}{'-dry_run' if args.dry_run else ''}")
    if args.results_dir is None:
        args.results_dir = str(default_results_dir(args))
    elif args.dry_run and is_tracked_results(Path(args.results_dir)):
        return f"--results_dir {args.results_dir}: a dry run's numbers mean nothing and are not written over results/"
    for flag in ("results_dir",) if args.collect_only else ("out_dir", "results_dir"):  # --collect_only reads runs
        try:
            check_writable_folder(Path(getattr(args, flag)), f"--{flag}")
        except experiment.UsageError as error:
            return str(error)
    return None


#: What narrows a profile: a sweep with any of these is a part of it (its results are not the profile's).
PART_FLAGS = ("models", "seeds", "epochs", "dataset", "baselines")


def default_results_dir(args) -> Path:
    """``results/`` (paper) or ``results/<profile>`` for the whole of a profile; ``<out_dir>/results``
    for a dry run or a part of a profile, which must not replace the committed tables."""
    if args.dry_run or any(getattr(args, flag) is not None for flag in PART_FLAGS):
        return Path(args.out_dir) / "results"
    return Path("results") if args.profile == "paper" else Path("results") / args.profile


def is_tracked_results(path: Path) -> bool:
    """Whether ``path`` is (in) the repository's results/ folder."""
    results = (Path(__file__).resolve().parent / "results").resolve()
    path = path.resolve()
    return path == results or results in path.parents


def command_line(args) -> str:
    """The command that reproduces these results (the flags given, in a canonical order)."""
    words = [PROG, *args.experiments_given, "--profile", args.profile]
    for flag in ("models", "seeds", "baselines"):
        if getattr(args, flag) is not None:
            words += [f"--{flag}", *map(str, getattr(args, flag))]
    for flag in ("epochs", "dataset"):
        if getattr(args, flag) is not None:
            words += [f"--{flag}", str(getattr(args, flag))]
    if args.dry_run:
        words.append("--dry_run")
    return "python " + shlex.join(words)


@experiment.one_line_errors(PROG, usage_errors=(LaunchError,))
def main(args) -> int:
    """Run the sweeps of ``args.experiments`` (from :func:`build_parser`), then write their tables
    and figures. Returns the exit status: 0, or 1 when some runs failed."""
    start = time.perf_counter()
    plan = Plan(
        PROFILES[args.profile],
        models=tuple(args.models) if args.models else None,
        # a dry sweep checks the pipeline: one seed is enough (and halves its time and disk)
        seeds=tuple(args.seeds) if args.seeds else (0,) if args.dry_run else None,
        epochs=args.epochs,
        dataset=args.dataset,
        dry_run=args.dry_run,
        baselines=tuple(args.baselines) if args.baselines else None,
    )
    out_dir, results_dir = Path(args.out_dir), Path(args.results_dir)
    runs = unique(run for name in args.experiments for run in EXPERIMENTS[name].runs(plan))
    print(f"{', '.join(args.experiments)}, profile {args.profile}: {len(runs)} runs in {out_dir}")
    if args.dry_run:
        print(
            f"dry run: each run trains a few batches (see main_cnn.py --help), seeds {plan.seeds or 'all'}; "
            f"the tables and figures in {results_dir} check the pipeline, their numbers mean nothing"
        )
    for name in args.experiments:
        for warning in EXPERIMENTS[name].warnings(plan):
            print(f"{name}: {warning}")
    failed = []
    if not args.collect_only:
        slurm = SlurmOptions(
            **{
                field: value
                for field, value in (
                    ("partition", args.slurm_partition),
                    ("timeout_min", args.slurm_timeout_min),
                    ("gpus_per_job", args.slurm_gpus),
                    ("cpus_per_job", args.slurm_cpus),
                    ("processes_per_job", args.gpus_per_run),
                )
                if value is not None
            }
        )
        if args.gpus_per_run > 1 and args.slurm_gpus is None:
            slurm = dataclasses.replace(slurm, gpus_per_job=args.gpus_per_run)
        try:
            with sigterm_as_interrupt():
                jobs = args.jobs or default_jobs(args.gpus_per_run)
                outcomes = launch(runs, out_dir, args.launcher, jobs, slurm, gpus_per_run=args.gpus_per_run)
        except LaunchError as error:
            experiment.exit_with_error(PROG, error)
        except KeyboardInterrupt as interrupt:
            print(f"{PROG}: interrupted; the runs keep their checkpoints: the same command continues the sweep")
            return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
        failed = [o for o in outcomes if not o.ok]
    else:  # the runs whose files cannot be read are reported as failed (they count as missing)
        failed = [Outcome(run, False, problem) for run in runs if (problem := folder_problem(out_dir / run.folder))]
    code = source_hash(RESULTS_SOURCES)
    context = Context(plan, out_dir, results_dir, git_commit(), command_line(args), code)
    reports = dict.fromkeys(EXPERIMENTS[name].report for name in args.experiments)  # table1 and width share one
    written = [path for report in reports for path in report(context)]
    for path in written:
        print(f"wrote {path}")
    if written:
        print(f"wrote {record_written(results_dir, written, code, context.commit, context.command)}")
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed:")
        for outcome in failed:
            print(f"  {outcome.run.folder}: {outcome.message}")
    print(f"{PROG}: {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    with experiment.start_up(PROG):  # a Ctrl-C while parsing: one line, too
        args = build_parser().parse_args()
    raise SystemExit(main(args))
