"""One run and its out dir: configuration, metrics log, checkpoints, early stopping,
divergence, resume and Ctrl-C (DESIGN.md principles 5, 9, 11).

Files of a run (all written atomically)::

    config.json      the script, its resolved flags, parameter counts, device, versions
    metrics.jsonl    one JSON object per epoch (the scripts' records, plus epoch and wall time)
    checkpoint.pt    everything needed to resume, at the end of the last epoch
    best.pt          the evaluated network (hooks.eval()) at the epoch of the best validation loss
    summary.json     how the run ended and its metrics at the best validation epoch

A script uses it as::

    run = Run(args, prog, name, device)
    ...build the data, model and optimizer...
    run.start(model, optimizer, hooks, **facts)   # a fresh run, or the resumed state
    with run:                                      # Ctrl-C: keep the checkpoint, say how to resume
        for epoch in run.epochs():
            hooks.train(); ...train...; evaluated = hooks.eval(); ...evaluate `evaluated`...
            run.end_epoch(record)                  # log, checkpoint, early stopping, divergence
    summary = run.finish()
"""

import contextlib
import math
import os
import platform
import signal
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import NoReturn

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch

from .baselines import OptimizerHooks
from .early_stopping import EarlyStopping
from .files import atomic_torch_save, write_json, write_jsonl
from .flags import RESUMABLE_FLAGS
from .provenance import git_commit
from .report import format_copies, format_epoch, format_number
from .runtime import rng_state, set_rng_state

CONFIG, METRICS, CHECKPOINT, BEST, SUMMARY = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "best.pt",
    "summary.json",
)
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, BEST, SUMMARY)
# Held (flock) by the process training the folder's run: a second process on the same folder
# (a sweep started again while an orphaned run still trains) stops instead of writing over it.
LOCK = "run.lock"
FORMAT = 1  # version of the checkpoint layout


# Status of a run: in its checkpoint (RUNNING, EARLY_STOPPED, DIVERGED) and in its summary.
RUNNING, COMPLETED, EARLY_STOPPED, DIVERGED, INTERRUPTED = (
    "running",
    "completed",
    "early_stopped",
    "diverged",
    "interrupted",
)
METRIC_PREFIXES = ("train_", "valid_", "test_")


class UsageError(Exception):
    """A command that cannot run as given (one-line message; the scripts exit with status 2)."""


def exit_with_error(prog: str, error) -> NoReturn:
    """Print ``prog: error: message`` as argparse does and exit with status 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    raise SystemExit(2)


def best_record(history: list[dict]) -> dict | None:
    """The epoch record with the lowest finite validation loss (the earliest on a tie), or ``None``."""
    best = None
    for record in history:
        loss = record.get("valid_loss")
        if (
            not record.get("diverged")
            and loss is not None
            and math.isfinite(loss)
            and (best is None or loss < best["valid_loss"])
        ):
            best = record
    return best


def summarize(history: list[dict], status: str) -> dict:
    """How a run ended and its metrics at the best validation epoch (what the paper's tables report)."""
    best = best_record(history)
    summary = {
        "status": status,
        "epochs_completed": len(history),
        "diverged": any(r.get("diverged", False) for r in history),
        "best_epoch": best["epoch"] if best else None,
    }
    if history:
        metrics = [k for k in history[-1] if k.startswith(METRIC_PREFIXES)]
        summary.update({k: best.get(k) if best else None for k in metrics})
    summary["wall_time_s"] = sum(r["epoch_time_s"] for r in history)
    return summary


class Run:
    """The state of one run that is not the model's: its out dir, epoch, history and stopping rule.

    Args:
        args: the parsed flags (``out_dir`` is filled in when not given).
        prog: the script's name, e.g. ``'main_cnn.py'``.
        name: prefix of the default out dir, ``runs/<name>-<date>-<time>``.
        device: where the model lives (for the CUDA generator's state).

    Raises :class:`UsageError` when the out dir holds another run and
    ``--resume`` is not given, or when ``--resume`` finds no readable
    checkpoint or one saved with incompatible flags.
    """

    def __init__(self, args, prog: str, name: str, device: torch.device):
        if args.out_dir is None:
            args.out_dir = str(Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.args, self.prog, self.device = args, prog, device
        self.out_dir = Path(args.out_dir)
        self.history: list[dict] = []
        self.stopper = EarlyStopping(args.patience)  # None with --no-early_stopping
        self.status = RUNNING
        self.epoch = 0  # epochs completed
        self.saved_epoch = None  # epoch of the checkpoint on disk
        self.facts = {}
        self.model = self.optimizer = self.hooks = None
        self._epoch_start = None
        self._release_lock = lambda: None  # set by start()
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UsageError(f"--out_dir {self.out_dir} is a file, not a folder")
        if args.resume:
            self._resumed = self._read_checkpoint()
        else:
            self._resumed = None
            found = [f for f in RUN_FILES if (self.out_dir / f).exists()]
            if found:
                raise UsageError(
                    f"--out_dir {self.out_dir} already holds a run ({', '.join(found)}): "
                    "pass --resume to continue it, or choose another --out_dir"
                )

    # ------------------------------------------------------------------ resume
    def _read_checkpoint(self) -> dict:
        path = self.out_dir / CHECKPOINT
        if not path.is_file():
            raise UsageError(f"--resume: no checkpoint {path} (is --out_dir the folder of a run?)")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch's messages span many lines: name the error only
            raise UsageError(
                f"--resume: cannot read {path} as a checkpoint "
                f"({type(error).__name__}; truncated or not written by {self.prog}?)"
            ) from None
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
            raise UsageError(f"--resume: {path} is not a checkpoint of this version (format {FORMAT})")
        if checkpoint["script"] != self.prog:
            raise UsageError(f"--resume: {self.out_dir} holds a run of {checkpoint['script']}, not {self.prog}")
        saved, current = checkpoint["args"], vars(self.args)
        # A flag added after the run was trained is absent from its checkpoint; its default keeps the
        # earlier behaviour, and a typed value for it was already checked against config.json.
        differ = [k for k in sorted(saved) if k not in RESUMABLE_FLAGS and saved[k] != current.get(k, "<absent>")]
        if differ:
            changes = ", ".join(f"--{k} {current.get(k, '<absent>')} (run: {saved.get(k, '<absent>')})" for k in differ)
            raise UsageError(
                f"--resume: the command differs from the run in {self.out_dir}: {changes}; "
                f"only {', '.join('--' + k for k in sorted(RESUMABLE_FLAGS))} may change"
            )
        if self.args.epochs < checkpoint["epoch"]:
            # config.json must stay true: it would say --epochs while the run holds more
            raise UsageError(
                f"--resume --epochs {self.args.epochs}: the run in {self.out_dir} already trained "
                f"{checkpoint['epoch']} epochs (give --epochs {checkpoint['epoch']} or more)"
            )
        return checkpoint

    # ------------------------------------------------------------------- start
    def start(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, hooks: OptimizerHooks | None = None, **facts
    ) -> None:
        """Begin the run with ``model``, ``optimizer`` and its ``hooks`` freshly built from the flags.

        Fresh run: writes ``config.json``, an empty ``metrics.jsonl`` and the
        epoch-0 checkpoint (so that Ctrl-C always leaves one). Resumed run:
        loads the model, optimizer (feature rates included), history,
        early-stopping state and random generators of the last checkpoint.
        ``hooks`` (default: none) give the network saved as ``best.pt``, the
        optimizer's mode before a checkpoint (``hooks.eval()``), extra state
        and extra fields of the epoch records (see :class:`OptimizerHooks`).
        ``facts`` (e.g. parameter counts) go into ``config.json`` and ``summary.json``.
        """
        self.model, self.optimizer, self.facts = model, optimizer, facts
        self.hooks = hooks if hooks is not None else OptimizerHooks(model)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = lock_folder(self.out_dir)
        # released by finish(), by an interruption, or when this object is collected
        self._release_lock = weakref.finalize(self, os.close, fd) if fd is not None else lambda: None
        write_json(
            self.out_dir / CONFIG,
            {
                "script": self.prog,
                "args": vars(self.args),
                **facts,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "commit": git_commit(),
                **self._resumes(),
            },
        )
        checkpoint = self._resumed
        if checkpoint is None:
            self._save_checkpoint()
        else:
            self._resumed = None
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            self.hooks.load_state_dict(checkpoint.get("optimizer_hooks", {}))
            self.stopper.load_state_dict(checkpoint["early_stopping"])
            self.history = list(checkpoint["history"])
            self.epoch = self.saved_epoch = checkpoint["epoch"]
            self.status = checkpoint["status"]
            set_rng_state(checkpoint["rng"], self.device)
            if self.status != RUNNING:
                print(
                    f"the run in {self.out_dir} already stopped at epoch {self.epoch} "
                    f"({self.status.replace('_', ' ')}): nothing to train"
                )
            else:
                print(f"resuming {self.out_dir} after epoch {self.epoch} (to epoch {self.args.epochs})")
        write_jsonl(self.out_dir / METRICS, self.history)

    def _resumes(self) -> dict:
        """``{'resumes': [...]}``: each resume that changed resumable flags, with the epoch it
        continued from and ``{flag: [old, new]}`` (config.json's args hold the latest values)."""
        args = self.args
        previous = list(getattr(args, "previous_resumes", []))
        changes = getattr(args, "resumed_changes", {})
        if self._resumed is not None and changes:
            previous.append({"after_epoch": self._resumed["epoch"], "changes": changes})
        return {"resumes": previous} if previous else {}

    # ------------------------------------------------------------------ epochs
    def epochs(self):
        """Yield the number (from 1) of each epoch to train, until ``--epochs``, early stopping
        or divergence; :meth:`end_epoch` must be called once per epoch."""
        while self.status == RUNNING and self.epoch < self.args.epochs:
            expected = self.epoch + 1
            self._epoch_start = time.perf_counter()
            yield expected
            if self.epoch != expected:
                raise RuntimeError(f"Run.end_epoch was not called for epoch {expected}")

    def end_epoch(self, record: dict) -> None:
        """Close the current epoch with its ``record`` (the script's metrics).

        ``record`` holds at least ``valid_loss``, and ``diverged: True`` when
        the training loss stopped being finite; then the run stops. Appends
        the record to ``metrics.jsonl``, saves ``best.pt`` on a new best
        validation loss, ``checkpoint.pt`` always, and prints the epoch's summary.
        """
        epoch = self.epoch + 1
        record = {
            "epoch": epoch,
            **record,
            **self.hooks.record(),
            "epoch_time_s": time.perf_counter() - self._epoch_start,
        }
        self.history.append(record)
        self.epoch = epoch
        if record.get("diverged"):
            self.status = DIVERGED
        else:
            if self.stopper.step(epoch, record["valid_loss"]):
                atomic_torch_save(
                    {
                        "format": FORMAT,
                        "script": self.prog,
                        "args": vars(self.args),
                        "epoch": epoch,
                        "record": record,
                        "model": self.hooks.eval().state_dict(),
                    },
                    self.out_dir / BEST,
                )
            if self.stopper.should_stop:
                self.status = EARLY_STOPPED
        self._save_checkpoint()
        write_jsonl(self.out_dir / METRICS, self.history)
        print(format_epoch(record))
        for line in format_copies(record):
            print(line)
        if self.status == DIVERGED:
            print(f"the training loss is not finite: the run diverged at epoch {epoch} and stops")
        elif self.status == EARLY_STOPPED:
            print(
                f"early stopping: no better validation loss for {self.stopper.patience} epochs "
                f"(best at epoch {self.stopper.best_epoch})"
            )

    def _save_checkpoint(self) -> None:
        self.hooks.eval()  # e.g. Schedule-Free saves its evaluation point, as its authors require
        atomic_torch_save(
            {
                "format": FORMAT,
                "script": self.prog,
                "args": vars(self.args),
                "epoch": self.epoch,
                "status": self.status,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "optimizer_hooks": self.hooks.state_dict(),
                "early_stopping": self.stopper.state_dict(),
                "history": self.history,
                "rng": rng_state(self.device),
            },
            self.out_dir / CHECKPOINT,
        )
        self.saved_epoch = self.epoch

    # -------------------------------------------------------------------- end
    def finish(self) -> dict:
        """Write and return ``summary.json``; status ``completed`` unless the run stopped early."""
        summary = self._write_summary(COMPLETED if self.status == RUNNING else self.status, self.history)
        self._release_lock()
        return summary

    def _write_summary(self, status: str, history: list[dict]) -> dict:
        summary = {**summarize(history, status), **self.facts}
        write_json(self.out_dir / SUMMARY, summary)
        best = summary["best_epoch"]
        n = summary["epochs_completed"]
        if n == 0 and status == INTERRUPTED:
            print(f"interrupted before the first epoch; results in {self.out_dir}")
            return summary
        print(
            f"{status.replace('_', ' ')} after {n} epoch{'' if n == 1 else 's'}; "
            + (
                f"best validation loss at epoch {best}: test loss {format_number(summary.get('test_loss'), '.4f')}"
                if best is not None
                else "no epoch with a finite validation loss"
            )
            + f"; results in {self.out_dir}"
        )
        return summary

    def __enter__(self):
        # SIGTERM (a Slurm time limit or preemption, `kill`) ends the run like Ctrl-C: the last
        # checkpoint stays and the summary says "interrupted", so a sweep continues it later.
        self._sigterm = sigterm_as_interrupt()
        self._sigterm.__enter__()
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._sigterm.__exit__(None, None, None)
        if exc_type is None:
            return False
        if not issubclass(exc_type, KeyboardInterrupt):
            self._release_lock()  # the run is over
            return False
        print(file=sys.stderr)
        if self.saved_epoch is None:
            print(f"{self.prog}: interrupted before the first checkpoint; nothing to resume", file=sys.stderr)
        else:
            self._write_summary(INTERRUPTED, self.history[: self.saved_epoch])
            print(
                f"{self.prog}: interrupted during epoch {self.saved_epoch + 1}; {self.out_dir / CHECKPOINT} "
                f"holds epoch {self.saved_epoch}; continue with --resume --out_dir {self.out_dir}",
                file=sys.stderr,
            )
        self._release_lock()
        # 128 + the signal number: the shell's status for a process ended by SIGINT / SIGTERM
        raise SystemExit(128 + (signal.SIGTERM if issubclass(exc_type, Terminated) else signal.SIGINT)) from None


def lock_folder(folder: Path) -> int | None:
    """Take the run's lock in ``folder`` for this process and return its file descriptor (closing
    it releases the lock, as does the process's end, even killed); :class:`UsageError` if another
    process holds it. ``None`` where the platform has no ``flock`` (Windows): no lock."""
    if fcntl is None:
        return None
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UsageError(
            f"--out_dir {folder} is being trained by another process (it holds {folder / LOCK}): "
            "wait for it to end, or choose another --out_dir"
        ) from None
    return fd


class Terminated(KeyboardInterrupt):
    """SIGTERM received: handled as Ctrl-C (a ``KeyboardInterrupt``), exit status 143."""


def _raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within this block SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``), so that
    whatever handles Ctrl-C handles it too. Only the main thread may set handlers: elsewhere, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
