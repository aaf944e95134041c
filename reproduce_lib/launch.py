"""Running the runs of a sweep: in this process, as local subprocesses, or as Slurm jobs.

A run is never trained twice: a folder with a final ``summary.json`` is
finished, one with only a checkpoint is continued with ``--resume`` (an
interrupted sweep resumes where it stopped). Before either, the folder's
``config.json`` must describe the same run, so that a changed profile never
mixes two different runs under one name. A run that fails, or whose folder
holds unreadable files, is reported and the others go on. A folder still
trained by another process (a child of an earlier sweep killed with -9) is
left to it: the sweep waits for it after the other runs, then takes it up.
"""

import argparse
import contextlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

from experiment.run_folder import CHECKPOINT, CONFIG, INTERRUPTED, RESUMABLE_FLAGS, SUMMARY, lock_holder

from .aggregate import folder_problem
from .plan import RunSpec

REPO = Path(__file__).resolve().parent.parent
LOG = "reproduce.log"  # the output of a run launched as a subprocess, in its folder
LAUNCHERS = ("local", "inline", "slurm")
LOCK_POLL_S = 1.0  # seconds between two looks at a folder trained by another process

FINISHED, RESUME, FRESH = "finished", "resume", "fresh"


class LaunchError(Exception):
    """A sweep that cannot start (one-line message)."""


@dataclass(frozen=True)
class Outcome:
    """How one run of the sweep ended: ``ok`` (trained now or before) or failed with ``message``."""

    run: RunSpec
    ok: bool
    message: str
    seconds: float = 0.0


# -------------------------------------------------------------- run folders
def run_state(run_dir: Path) -> str:
    """:data:`FINISHED` (a final ``summary.json``), :data:`RESUME` (a checkpoint to continue)
    or :data:`FRESH` (nothing to keep)."""
    summary = run_dir / SUMMARY
    if summary.is_file() and json.loads(summary.read_text()).get("status") != INTERRUPTED:
        return FINISHED
    return RESUME if (run_dir / CHECKPOINT).is_file() else FRESH


def parse_flags(run: RunSpec, run_dir: Path) -> argparse.Namespace:
    """The resolved flags of ``run`` as its script reads them; :class:`LaunchError` if it rejects them."""
    module = importlib.import_module(run.script)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return module.build_parser().parse_args([*run.flags, "--out_dir", str(run_dir)])
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        raise LaunchError(f"{run.folder}: {message[-1] if message else 'invalid flags'}") from None


def config_mismatch(run: RunSpec, run_dir: Path) -> str | None:
    """Why ``run_dir`` holds another run than ``run`` (flags that differ), or ``None``."""
    config_path = run_dir / CONFIG
    if not config_path.is_file():
        return None
    saved = json.loads(config_path.read_text()).get("args", {})
    wanted = vars(parse_flags(run, run_dir))
    # A flag absent from the saved config was added after that run was trained: the run had the
    # behaviour of its default, which is what a run folder named after the same computation wants.
    differ = [k for k in sorted(saved) if k not in RESUMABLE_FLAGS and saved[k] != wanted.get(k, "<absent>")]
    if not differ:
        return None
    return (
        f"{run_dir} holds another run ("
        + ", ".join(f"--{k} {saved.get(k, '<absent>')}, wanted {wanted.get(k, '<absent>')}" for k in differ)
        + "): remove it or choose another --out_dir"
    )


def command(run: RunSpec, run_dir: Path, resume: bool, processes: int = 1) -> list[str]:
    """The shell command of ``run``; with ``processes > 1``, one run on that many processes
    started by torchrun on this machine (one GPU each, or CPU processes without GPUs)."""
    start = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [
        *(start if processes > 1 else [sys.executable]),
        str(REPO / f"{run.script}.py"),
        *run.flags,
        "--out_dir",
        str(run_dir),
        *(["--resume"] if resume else []),
    ]


def run_subprocess(cmd: Sequence[str], log_path: str, env: dict, running: set | None = None) -> str | None:
    """Run ``cmd`` with ``env`` added to the environment, its output appended to ``log_path``.
    ``None`` on success, else the last line it printed (its error). ``running``: a set holding the
    process while it runs (to interrupt it). Module-level: Slurm jobs call it."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        if running is not None:
            running.add(process)
        try:
            code = process.wait()
        finally:
            if running is not None:
                running.discard(process)
    if code == 0:
        return None
    lines = [line for line in Path(log_path).read_text().splitlines() if line.strip()]
    return f"exit status {code}: {lines[-1].strip() if lines else 'no output'} (log: {log_path})"


def run_rank(cmd: Sequence[str], log_path: str, env: dict) -> str | None:
    """One task of a Slurm job that runs one run on several tasks: this task's rank of the run,
    its torch.distributed environment given by submitit (rank, world size, the first node's
    address). Rank 0's outcome is the run's. Module-level: Slurm jobs call it."""
    import submitit

    ranks = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    error = run_subprocess(cmd, log_path, {**env, **{k: os.environ[k] for k in keys}})
    return error if ranks.rank == 0 else None


# ----------------------------------------------------------------- launchers
def parse_visible_devices(listed: str) -> list[str]:
    """The devices a ``CUDA_VISIBLE_DEVICES`` value makes visible, as CUDA reads it: entries
    separated by commas, spaces around them ignored (``"0, 1"`` is GPUs 0 and 1), and the list ends
    at the first invalid entry (``-1`` or an empty one): CUDA hides every device after it."""
    devices = []
    for entry in listed.split(","):
        entry = entry.strip()
        if not entry or (entry.lstrip("-").isdigit() and int(entry) < 0):
            break
        devices.append(entry)
    return devices


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (each one alone is a
    valid value for a child's ``CUDA_VISIBLE_DEVICES``)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return parse_visible_devices(listed)
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def default_jobs(gpus_per_run: int = 1) -> int:
    """One run at a time, or one per ``gpus_per_run`` GPUs when there are more."""
    return max(1, len(visible_gpus()) // gpus_per_run)


def gpu_slots(jobs: int, gpus: Sequence[str], log: Callable[[str], None] = print, per_run: int = 1) -> list[str | None]:
    """The GPUs of each of the ``jobs`` concurrent runs, as a ``CUDA_VISIBLE_DEVICES`` value
    (``None``: no GPU, the runs use the CPU): ``per_run`` of the visible ``gpus`` each, in turn.
    Says so through ``log`` when runs must share GPUs (more GPUs wanted than visible): they then
    share their memory and their time, which nothing else would tell."""
    if not gpus:
        return [None] * jobs
    slots = [",".join(gpus[(i * per_run + k) % len(gpus)] for k in range(per_run)) for i in range(jobs)]
    if jobs * per_run > len(gpus):
        visible = f"{len(gpus)} visible GPU{'s' if len(gpus) > 1 else ''} ({', '.join(gpus)})"
        if per_run == 1:
            log(
                f"warning: --jobs {jobs} with {visible}: up to {-(-jobs // len(gpus))} runs share a GPU, its "
                f"memory and its time; --jobs {len(gpus)} gives each run a GPU of its own"
            )
        else:
            log(
                f"warning: --jobs {jobs} x --gpus_per_run {per_run} with {visible}: runs share GPUs, their "
                f"memory and their time; --jobs {max(1, len(gpus) // per_run)} gives each run GPUs of its own"
            )
    return slots


def thread_env(jobs: int) -> dict:
    """Split the CPU cores between ``jobs`` concurrent runs (unless ``OMP_NUM_THREADS`` is set):
    torch's default, one thread per core in every run, oversubscribes the cores (measured on a
    shared 2-core machine: an LSTM step 150x slower with 2 threads than with 1)."""
    if jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
        return {}
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _run_local(
    runs, out_dir: Path, jobs: int, report, log: Callable[[str], None], gpus_per_run: int = 1
) -> list[Outcome]:
    slots: Queue = Queue()  # one token per concurrent run; its GPUs (CUDA_VISIBLE_DEVICES), if any
    gpus = gpu_slots(jobs, visible_gpus(), log, gpus_per_run)
    if gpus[0] is not None:
        log(f"GPUs of the {jobs} concurrent runs (CUDA_VISIBLE_DEVICES of each): {'; '.join(gpus)}")
    for gpu in gpus:
        slots.put(gpu)
    env = {"TQDM_DISABLE": "1", **thread_env(jobs)}  # no progress bars in the logs

    running: set = set()  # the runs' processes, to interrupt them with the sweep
    stopping = threading.Event()  # set when the sweep is interrupted: no new run starts

    def one(run: RunSpec, resume: bool) -> Outcome:
        gpu = slots.get()
        start = time.perf_counter()
        try:
            if stopping.is_set():
                return Outcome(run, False, "not started: the sweep was interrupted")
            run_dir = out_dir / run.folder
            error = run_subprocess(
                command(run, run_dir, resume, gpus_per_run),
                str(run_dir / LOG),
                {**env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})},
                running,
            )
            return Outcome(run, error is None, error or "trained", time.perf_counter() - start)
        finally:
            slots.put(gpu)

    outcomes = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, run, resume) for run, resume in runs]
        try:
            for future in as_completed(futures):
                outcomes.append(report(future.result()))
        except KeyboardInterrupt:
            stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            interrupt_runs(running)
            raise
    return outcomes


def interrupt_runs(running: set, grace_s: float = 5.0) -> None:
    """Stop the runs' processes as Ctrl-C does, so that each keeps its checkpoint and none goes on
    training unseen (a later sweep would train the same run twice). After Ctrl-C in a terminal
    they got SIGINT already and end on their own; when only the sweep was signalled (``kill``),
    the ones still running after ``grace_s`` get SIGINT."""
    deadline = time.monotonic() + grace_s
    for process in list(running):
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
    for process in list(running):
        process.wait()


def _run_inline(runs, out_dir: Path, report) -> list[Outcome]:
    outcomes = []
    for run, resume in runs:
        module = importlib.import_module(run.script)
        start = time.perf_counter()
        argv = command(run, out_dir / run.folder, resume)[2:]
        try:
            module.main(module.build_parser().parse_args(argv))
            outcome = Outcome(run, True, "trained", time.perf_counter() - start)
        except SystemExit as exit_:
            if exit_.code in (130, 143):  # Ctrl-C or SIGTERM: the run kept its checkpoint; stop the sweep
                raise
            outcome = Outcome(run, exit_.code in (0, None), f"exit status {exit_.code}", time.perf_counter() - start)
        except Exception as error:  # one broken run must not stop the sweep
            outcome = Outcome(run, False, f"{type(error).__name__}: {error}", time.perf_counter() - start)
        outcomes.append(report(outcome))
    return outcomes


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each Slurm job (one run per job)."""

    partition: str | None = None
    timeout_min: int = 24 * 60
    gpus_per_job: int = 1
    cpus_per_job: int = 4
    cluster: str | None = "slurm"  # submitit's executor; "local" runs the jobs here (tests)
    processes_per_job: int = 1  # > 1: one run on that many tasks (torch.distributed, one GPU each)


def slurm_gpus_message(gpus: int) -> str:
    """Why a Slurm job of one run may not hold ``gpus`` > 1 GPUs."""
    return (
        f"--slurm_gpus {gpus}: each process of a run trains on one GPU, so a job of {gpus} for one "
        f"process would reserve {gpus - 1} that no one uses; use 1 (or 0 for CPU jobs), or --gpus_per_run {gpus}"
    )


def _run_slurm(runs, out_dir: Path, options: SlurmOptions, report) -> list[Outcome]:
    if options.gpus_per_job > max(1, options.processes_per_job):
        raise LaunchError(slurm_gpus_message(options.gpus_per_job))
    try:
        import submitit
    except ImportError:
        raise LaunchError("--launcher slurm needs the submitit package: pip install submitit") from None
    executor = submitit.AutoExecutor(folder=out_dir / "slurm" / "%j", cluster=options.cluster)
    executor.update_parameters(
        name="alrao-reproduce",
        timeout_min=options.timeout_min,
        gpus_per_node=options.gpus_per_job,
        cpus_per_task=options.cpus_per_job,
        tasks_per_node=options.processes_per_job,
        **({"slurm_partition": options.partition} if options.partition else {}),
    )
    env = {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(options.cpus_per_job)}
    submitted = time.perf_counter()
    with executor.batch():  # one job array
        jobs = [
            executor.submit(
                run_subprocess if options.processes_per_job == 1 else run_rank,
                command(run, out_dir / run.folder, resume),
                str(out_dir / run.folder / LOG),
                env,
            )
            for run, resume in runs
        ]
    outcomes = []
    for job, (run, _) in zip(jobs, runs):
        try:
            error = job.results()[0]  # the first task's: rank 0's when a run has several
        except Exception as failure:  # the job itself failed (timeout, node failure, ...)
            error = f"Slurm job {job.job_id}: {str(failure).strip().splitlines()[-1]}"
        # seconds: from the submission until the job is known to be done (queueing included)
        outcomes.append(report(Outcome(run, error is None, error or "trained", time.perf_counter() - submitted)))
    return outcomes


def launch(
    runs: Sequence[RunSpec],
    out_dir: Path,
    launcher: str = "local",
    jobs: int = 1,
    slurm: SlurmOptions = SlurmOptions(),
    log: Callable[[str], None] = print,
    gpus_per_run: int = 1,
) -> list[Outcome]:
    """Train the runs of ``runs`` not finished yet, each in ``out_dir / run.folder``.

    ``launcher``: ``'local'`` (``jobs`` subprocesses at a time, spread over the
    visible GPUs), ``'inline'`` (in this process, one at a time: for debugging)
    or ``'slurm'`` (one submitit job per run; waits for all). ``gpus_per_run > 1``: each
    local run on that many GPUs (torchrun; Slurm: ``slurm.processes_per_job``). Returns one
    :class:`Outcome` per run, finished ones included; ``log`` gets one line per run.
    """
    if launcher not in LAUNCHERS:
        raise LaunchError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
    for run in runs:
        parse_flags(run, out_dir / run.folder)  # a flag a script rejects is a bug of the plan: stop before any run
    outcomes, todo, held = _sort_runs(runs, out_dir, log)
    finished = sum(o.ok for o in outcomes)
    log(
        f"{len(runs)} runs: {finished} finished before, {len(todo)} to train"
        + (f" ({launcher}, {jobs} at a time)" if todo and launcher == "local" else f" ({launcher})" if todo else "")
        + (f", {len(outcomes) - finished} skipped" if len(outcomes) > finished else "")
        + (f", {len(held)} being trained by other processes (waited for after the others)" if held else "")
    )
    done = [0]

    def report(outcome: Outcome) -> Outcome:
        done[0] += 1
        status = "done" if outcome.ok else f"FAILED ({outcome.message})"
        log(f"[{done[0]}/{len(todo)}] {outcome.run.folder}: {status} in {outcome.seconds:.0f} s")
        return outcome

    def train(todo):
        if launcher == "inline":
            return _run_inline(todo, out_dir, report)
        if launcher == "slurm":
            return _run_slurm(todo, out_dir, slurm, report)
        return _run_local(todo, out_dir, jobs, report, log, gpus_per_run)

    if todo:
        outcomes += train(todo)
    if held:
        for run in held:
            wait_for_lock(out_dir / run.folder, log)
        more, todo, held = _sort_runs(held, out_dir, log)
        for o in more:
            if o.ok:  # (the skipped ones were said by _sort_runs)
                log(f"{o.run.folder}: finished by the other process")
        outcomes += [Outcome(o.run, o.ok, o.message if not o.ok else "finished by another process") for o in more]
        outcomes += [Outcome(run, False, f"{out_dir / run.folder} is still trained by another process") for run in held]
        if todo:
            done[0] = 0  # numbered among the runs of this second round
            outcomes += train(todo)
    return outcomes


def _sort_runs(runs, out_dir: Path, log) -> tuple[list[Outcome], list[tuple[RunSpec, bool]], list[RunSpec]]:
    """Split ``runs`` into outcomes known now (finished before, or skipped with the reason), runs
    to train (with their resume flag), and runs whose folder another process trains now."""
    outcomes, todo, held = [], [], []
    for run in runs:
        run_dir = out_dir / run.folder
        holder = lock_holder(run_dir)
        if holder is not None:
            who = f"process {holder}" if holder else "another process"
            log(f"{run.folder}: being trained by {who} (from an earlier sweep?); waiting for it later")
            held.append(run)
            continue
        problem = folder_problem(run_dir)
        state = run_state(run_dir) if problem is None else None
        mismatch = problem or (config_mismatch(run, run_dir) if state != FRESH else None)
        if mismatch:
            outcomes.append(Outcome(run, False, mismatch))
            log(f"skipped {run.folder}: {mismatch}")
        elif state == FINISHED:
            outcomes.append(Outcome(run, True, "finished before"))
        else:  # a folder left by a run killed before its first checkpoint starts again (Run does it)
            run_dir.mkdir(parents=True, exist_ok=True)
            todo.append((run, state == RESUME))
    return outcomes, todo, held


def wait_for_lock(run_dir: Path, log: Callable[[str], None] = print) -> None:
    """Wait until no process holds ``run_dir``'s run lock (Ctrl-C stops the wait)."""
    holder = lock_holder(run_dir)
    if holder is not None:
        log(f"waiting for {f'process {holder}' if holder else 'another process'} to finish {run_dir}")
    while lock_holder(run_dir) is not None:
        time.sleep(LOCK_POLL_S)
