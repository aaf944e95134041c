"""One run and its out dir: configuration, metrics log, checkpoints, early stopping,
divergence, resume and Ctrl-C (DESIGN.md principles 5, 9, 11).

The run folder's files, statuses and lock are described (and named) in
:mod:`experiment.run_folder`, the contract that ``reproduce.py`` reads too.

Faults (tests/test_faults.py): a process killed at any moment leaves a folder that the same
command continues (with --resume) or starts again (killed before its first checkpoint: it trained
nothing); the temporary files it left are removed when the folder is next opened; a write that
fails leaves the previous file whole; Ctrl-C or SIGTERM during the epoch's writes takes effect
once they are done.

A script uses it as::

    run = Run(args, prog, name, device)
    ...build the data, model and optimizer...
    run.start(model, optimizer, hooks, n_outputs=n_classes, **facts)  # fresh, or the resumed state
    with run:                                      # Ctrl-C: keep the checkpoint, say how to resume
        for epoch in run.epochs():
            hooks.train(); ...train...; evaluated = hooks.evaluation_network(); ...evaluate `evaluated`...
            run.end_epoch(record)                  # log, checkpoint, early stopping, divergence
    summary = run.finish()
"""

import json
import math
import os
import platform
import signal
import sys
import time
import weakref
from pathlib import Path

import torch

from .early_stopping import EarlyStopping
from .files import (
    ChecksumError,
    atomic_torch_save,
    verify_checksum,
    write_json,
    write_jsonl,
)
from .optimizer_hooks import OptimizerHooks
from .provenance import git_commit
from .report import format_copies, format_epoch, format_number
from .run_folder import (
    BEST,
    CHECKPOINT,
    COMPLETED,
    CONFIG,
    DIVERGED,
    EARLY_STOPPED,
    FORMAT,
    INTERRUPTED,
    METRICS,
    RESUMABLE_FLAGS,
    RUN_FILES,
    RUNNING,
    SUMMARY,
    UNTRAINED_FILES,
    Terminated,
    UsageError,
    check_writable_folder,
    deferred_interrupts,
    lock_folder,
    remove_temporary_files,
    sigterm_as_interrupt,
)
from .runtime import rng_state, set_rng_state

METRIC_PREFIXES = ("train_", "valid_", "test_")

# Divergence (the paper's "diverges" in spirit: the loss blew up). An epoch diverged when the
# training loss of the model (with Alrao: of the switch-averaged model, never of one copy) is not
# finite or exceeds DIVERGENCE_FACTOR times the loss of the uniform predictor, ln(number of
# classes) nats, or when its validation loss is not finite.
# - Why 100: a mean loss 100 times the uniform prediction's needs logits in the hundreds; the
#   bound (CIFAR-10: 230 nats, char PTB: ~390, word PTB: ~920) is far above any epoch of a working
#   run, and far below what blown-up runs show (quick profile, VGG19 on digits: SGD at 10 and 100
#   gave first-epoch training losses of 6.8e6 to 4.5e16 nats, then stayed at chance accuracy).
# - The validation loss is held to finiteness only: in evaluation mode, a BatchNorm network whose
#   running statistics have seen a few batches can score hundreds of nats without having diverged
#   (a 3-batch dry run of VGG19: 326 nats).
# - Alrao: the averaged loss is at most its best copy's plus -ln(that copy's posterior), whatever
#   the other copies do, and the switch moves the posterior off copies that blow up: a run whose
#   bad copies alone blow up goes on.
DIVERGENCE_FACTOR = 100


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

    Raises :class:`UsageError` when ``--out_dir`` cannot be written, when it
    holds another run and ``--resume`` is not given, when ``--resume`` finds no
    readable checkpoint, one that does not match its checksum, or one saved
    with incompatible flags, or when it holds a run killed before its first
    checkpoint with other flags. :meth:`start` checks again, lock held.
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
        self.divergence_bound = None  # nats; set by start()
        check_writable_folder(self.out_dir, "--out_dir")
        # Checked here, before the data and the model are built, for an early error; checked
        # again by start() once the folder's lock is held (another process may write it meanwhile).
        self._resumed, self._restart = self._open_folder()

    # ------------------------------------------------------------------ resume
    def _open_folder(self, checkpoint: dict | None = None) -> tuple[dict | None, bool]:
        """What the out dir holds, against the flags: ``(checkpoint to resume or None, restart)``;
        ``restart``: the folder holds a run killed before its first checkpoint, started again.
        ``checkpoint``: the one read before, returned as is if the file did not change since."""
        path = self.out_dir / CHECKPOINT
        if path.is_file():
            if not self.args.resume:
                found = [f for f in RUN_FILES if (self.out_dir / f).exists()]
                raise UsageError(
                    f"--out_dir {self.out_dir} already holds a run ({', '.join(found)}): "
                    "pass --resume to continue it, or choose another --out_dir"
                )
            if checkpoint is not None and checkpoint["_file"] == _file_signature(path):
                return checkpoint, False
            return self._read_checkpoint(), False
        found = {f for f in RUN_FILES if (self.out_dir / f).exists()}
        if not found:
            if self.args.resume:
                raise UsageError(f"--resume: no checkpoint {path} (is --out_dir the folder of a run?)")
            return None, False
        if found - UNTRAINED_FILES or (METRICS in found and (self.out_dir / METRICS).stat().st_size > 0):
            raise UsageError(
                f"--out_dir {self.out_dir} holds a run without its checkpoint ({', '.join(sorted(found))}): "
                f"it cannot continue; choose another --out_dir"
            )
        # A run killed before its first checkpoint: it trained nothing. The same run starts again.
        saved = self._read_config_args()
        differ = self._differing_flags(saved)
        if differ:
            raise UsageError(
                f"--out_dir {self.out_dir} holds a run killed before its first checkpoint, with other "
                f"flags: {differ}; give the same flags to start it again, or remove the folder "
                "(it trained nothing)"
            )
        return None, True

    def _read_config_args(self) -> dict:
        path = self.out_dir / CONFIG
        try:
            config = json.loads(path.read_text())
            if config["script"] != self.prog:
                raise UsageError(f"--out_dir {self.out_dir} holds a run of {config['script']}, not {self.prog}")
            return dict(config["args"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UsageError(
                f"--out_dir {self.out_dir}: cannot read {path} ({type(error).__name__}); "
                "the folder holds no checkpoint: remove it, or choose another --out_dir"
            ) from None

    def _differing_flags(self, saved: dict) -> str:
        """The flags of this command that differ from ``saved`` (a run's), as text ('' if none)."""
        current = vars(self.args)
        # A flag added after the run was trained is absent from its files; its default keeps the
        # earlier behaviour, and a typed value for it was already checked against config.json.
        differ = [k for k in sorted(saved) if k not in RESUMABLE_FLAGS and saved[k] != current.get(k, "<absent>")]
        return ", ".join(f"--{k} {current.get(k, '<absent>')} (run: {saved.get(k, '<absent>')})" for k in differ)

    def _read_checkpoint(self) -> dict:
        path = self.out_dir / CHECKPOINT
        signature = _file_signature(path)
        try:
            if not verify_checksum(path):
                print(f"{self.prog}: warning: {path} has no checksum file beside it: not verified", file=sys.stderr)
        except ChecksumError as error:
            raise UsageError(f"--resume: {error}; restore the folder from a copy, or start again elsewhere") from None
        except OSError as error:
            raise UsageError(f"--resume: cannot read {path} ({error.strerror})") from None
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
        changes = self._differing_flags(checkpoint["args"])
        if changes:
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
        checkpoint["_file"] = signature
        return checkpoint

    # ------------------------------------------------------------------- start
    def start(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        hooks: OptimizerHooks | None = None,
        n_outputs: int | None = None,
        **facts,
    ) -> None:
        """Begin the run with ``model``, ``optimizer`` and its ``hooks`` freshly built from the flags.

        Fresh run: writes ``config.json``, an empty ``metrics.jsonl`` and the
        epoch-0 checkpoint (so that Ctrl-C always leaves one). Resumed run:
        loads the model, optimizer (feature rates included), history,
        early-stopping state and random generators of the last checkpoint.
        ``hooks`` (default: none) give the network saved as ``best.pt``, the
        optimizer's mode before a checkpoint (``hooks.evaluation_network()``), extra state
        and extra fields of the epoch records (see :class:`OptimizerHooks`).
        ``n_outputs``: the number of classes (or the vocabulary size) of the
        prediction, which sets the divergence bound (:data:`DIVERGENCE_FACTOR`);
        ``None``: only a non-finite loss is a divergence.
        ``facts`` (e.g. parameter counts) go into ``config.json`` and ``summary.json``.

        The folder's lock is taken first, then the folder is checked again
        (another process may have written it since the constructor looked),
        and temporary files of a killed run are removed.
        """
        self.model, self.optimizer = model, optimizer
        self.hooks = hooks if hooks is not None else OptimizerHooks(model)
        if n_outputs is not None and n_outputs > 1:
            self.divergence_bound = DIVERGENCE_FACTOR * math.log(n_outputs)
            facts = {**facts, "divergence_bound_nats": self.divergence_bound}
        self.facts = facts
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = lock_folder(self.out_dir)
        # released by finish(), by an interruption, or when this object is collected
        self._release_lock = weakref.finalize(self, os.close, fd) if fd is not None else lambda: None
        try:
            self._resumed, self._restart = self._open_folder(self._resumed)
            removed = remove_temporary_files(self.out_dir)
        except BaseException:
            self._release_lock()
            raise
        if removed:
            print(f"removed {len(removed)} temporary file(s) left in {self.out_dir} by a killed process")
        if self._restart:
            print(f"{self.out_dir} holds a run killed before its first checkpoint (it trained nothing): starting again")
            for name in UNTRAINED_FILES - {CONFIG}:
                (self.out_dir / name).unlink(missing_ok=True)
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
            with deferred_interrupts():  # Ctrl-C here: the epoch-0 checkpoint is written whole first
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
        divergence = self.divergence(record)
        if divergence:
            record["diverged"] = True
        # Ctrl-C or SIGTERM while the files are written takes effect once all are written: the
        # checkpoint on disk is then the one the message and the summary name.
        with deferred_interrupts():
            self.history.append(record)
            self.epoch = epoch
            if divergence:
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
                            "model": self.hooks.evaluation_network().state_dict(),
                        },
                        self.out_dir / BEST,
                        checksum=True,
                    )
                if self.stopper.should_stop:
                    self.status = EARLY_STOPPED
            self._save_checkpoint()
            write_jsonl(self.out_dir / METRICS, self.history)
        print(format_epoch(record))
        for line in format_copies(record):
            print(line)
        if self.status == DIVERGED:
            print(f"the run diverged at epoch {epoch} and stops: {divergence}")
        elif self.status == EARLY_STOPPED:
            print(
                f"early stopping: no better validation loss for {self.stopper.patience} epochs "
                f"(best at epoch {self.stopper.best_epoch})"
            )

    def _save_checkpoint(self) -> None:
        self.hooks.evaluation_network()  # e.g. Schedule-Free saves its evaluation point, as its authors require
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
            checksum=True,
        )
        self.saved_epoch = self.epoch

    def divergence(self, record: dict) -> str | None:
        """Why the epoch of ``record`` diverged (see :data:`DIVERGENCE_FACTOR`), or ``None``:
        a ``diverged`` flag set by the script, a training loss that is not finite or above
        :attr:`divergence_bound`, or a validation loss that is not finite. A loss absent or
        ``None`` was not measured."""
        train, valid = record.get("train_loss"), record.get("valid_loss")
        if record.get("diverged") or (train is not None and not math.isfinite(train)):
            return "the training loss is not finite"
        if train is not None and self.divergence_bound is not None and train > self.divergence_bound:
            return (
                f"the training loss {train:.3g} nats is above the divergence bound {self.divergence_bound:.3g} "
                f"({DIVERGENCE_FACTOR} times the uniform prediction's loss)"
            )
        if valid is not None and not math.isfinite(valid):
            return "the validation loss is not finite"
        return None

    # -------------------------------------------------------------------- end
    def finish(self) -> dict:
        """Write and return ``summary.json``; status ``completed`` unless the run stopped early."""
        with deferred_interrupts():  # the summary is written whole, then a Ctrl-C takes effect
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


def _file_signature(path: Path) -> tuple:
    stat = path.stat()
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
