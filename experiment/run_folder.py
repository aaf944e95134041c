"""The run folder, the contract between a run (:mod:`experiment.run`) and what reads or drives
it (``reproduce.py``, ``reproduce_lib``, ``benchmarks/``): its file names, the statuses a run ends
with, the flags that may change on ``--resume``, its lock, and how signals end it. Code outside
the ``experiment`` package takes these names from here (or from the package's re-exports), never
from :mod:`experiment.run`. Importing it needs no torch.

Files of a run folder (all written atomically: a temporary file, fsync, rename; a temporary
file ``.<name>.<pid>.tmp`` left by a killed process is removed when the folder is next opened)::

    config.json      {"script", "args": the resolved flags, the run's facts (parameter counts,
                     device...), "python", "torch", "commit", "resumes" (only after a --resume
                     that changed flags)}
    metrics.jsonl    one JSON object per epoch: {"epoch", the script's metrics ("train_loss",
                     "valid_loss", "test_loss", ...), the optimizer hooks' fields (e.g. "eta"),
                     "epoch_time_s"; "diverged": true on the epoch that diverged}
    checkpoint.pt    everything needed to resume, at the end of the last epoch: {"format",
                     "script", "args", "epoch", "status", "model", "optimizer",
                     "optimizer_hooks", "early_stopping", "history", "rng"} (torch.save)
    best.pt          the evaluated network at the epoch of the best validation loss: {"format",
                     "script", "args", "epoch", "record", "model"}
    checkpoint.pt.sha256, best.pt.sha256
                     the SHA-256 of checkpoint.pt and best.pt, newest first (checkpoint.pt's is
                     verified on resume)
    summary.json     {"status", "epochs_completed", "diverged", "best_epoch", the train_/valid_/
                     test_ metrics at the best epoch, "wall_time_s", the run's facts}
    run.lock         held (flock) by the process training the folder; holds its process id

Statuses (a checkpoint holds ``running``, ``early_stopped`` or ``diverged``; a summary
``completed``, ``early_stopped``, ``diverged`` or ``interrupted``)::

    running          still training, or killed: its checkpoint continues with --resume
    completed        trained the --epochs asked
    early_stopped    no better validation loss for --patience epochs
    diverged         the loss blew up (see experiment.run.DIVERGENCE_FACTOR): it stopped
    interrupted      Ctrl-C or SIGTERM: summary.json holds the epochs of the checkpoint, which
                     continues with --resume (reproduce.py counts the run as not finished)

A folder with a summary.json whose status is not ``interrupted`` is finished. A folder holding
only :data:`UNTRAINED_FILES` was killed before its first checkpoint: the same command starts it
again.

Resume: ``--resume --out_dir DIR`` continues from checkpoint.pt with the flags of config.json.
Only :data:`RESUMABLE_FLAGS` may be given with other values (``--epochs``, not below the epochs
already trained; ``--no_cuda``, ``--num_workers``, ``--data_path``, ``--compile``): they change
where, how fast or how long the run computes, not what. A change is recorded in config.json's
"resumes" list, ``[{"after_epoch": n, "changes": {flag: [old value, new value]}}, ...]``, while its
"args" hold the latest values. On resume metrics.jsonl is rewritten from the checkpoint's history
(the records of epochs after the checkpoint, if any, are dropped) and config.json is rewritten.
:data:`FORMAT` is the checkpoint layout's version: a checkpoint of another one is refused.
"""

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from .files import checksum_path, is_temporary_of

__all__ = [
    "BEST",
    "BEST_SUM",
    "CHECKPOINT",
    "CHECKPOINT_SUM",
    "COMPLETED",
    "CONFIG",
    "DIVERGED",
    "EARLY_STOPPED",
    "FORMAT",
    "INTERRUPTED",
    "LOCK",
    "METRICS",
    "RESUMABLE_FLAGS",
    "RUNNING",
    "RUN_FILES",
    "SUMMARY",
    "Terminated",
    "UNTRAINED_FILES",
    "UsageError",
    "check_writable_folder",
    "deferred_interrupts",
    "exit_with_error",
    "lock_folder",
    "lock_holder",
    "remove_temporary_files",
    "sigterm_as_interrupt",
]

CONFIG, METRICS, CHECKPOINT, BEST, SUMMARY = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "best.pt",
    "summary.json",
)
# the SHA-256 of checkpoint.pt and best.pt, verified on resume (see files.py)
CHECKPOINT_SUM, BEST_SUM = checksum_path(Path(CHECKPOINT)).name, checksum_path(Path(BEST)).name
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, CHECKPOINT_SUM, BEST, BEST_SUM, SUMMARY)
# What a run killed before its first checkpoint leaves: it trained nothing, and starts again.
UNTRAINED_FILES = frozenset({CONFIG, METRICS, CHECKPOINT_SUM})
# Held (flock) by the process training the folder's run: a second process on the same folder
# (a sweep started again while an orphaned run still trains) stops instead of writing over it.
LOCK = "run.lock"
FORMAT = 1  # version of the checkpoint layout
# Flags a resumed run may change: they do not change what is computed, only where, how fast,
# or for how many epochs. `--resume --out_dir DIR` alone takes every other flag from the run's
# config.json; a change to one of these is recorded there (its "resumes" list).
RESUMABLE_FLAGS = frozenset({"epochs", "resume", "out_dir", "no_cuda", "num_workers", "data_path", "compile"})


# Status of a run: in its checkpoint (RUNNING, EARLY_STOPPED, DIVERGED) and in its summary.
RUNNING, COMPLETED, EARLY_STOPPED, DIVERGED, INTERRUPTED = (
    "running",
    "completed",
    "early_stopped",
    "diverged",
    "interrupted",
)


class UsageError(Exception):
    """A command that cannot run as given (one-line message; the scripts exit with status 2)."""


def exit_with_error(prog: str, error) -> NoReturn:
    """Print ``prog: error: message`` as argparse does and exit with status 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    raise SystemExit(2)


def lock_folder(folder: Path) -> int | None:
    """Take the run's lock in ``folder`` for this process and return its file descriptor (closing
    it releases the lock, as does the process's end, even killed); :class:`UsageError` if another
    process holds it. The lock file holds the holder's process id. ``None`` where the platform
    has no ``flock`` (Windows): no lock."""
    if fcntl is None:
        return None
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = lock_holder(folder)
        raise UsageError(
            f"--out_dir {folder} is being trained by another process "
            f"({f'process {holder}' if holder else 'it'} holds {folder / LOCK}): "
            "wait for it to end, or choose another --out_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_holder(folder: Path) -> int | None:
    """The process id of the process training ``folder`` now (0 if it has not written it yet), or
    ``None`` when no process holds its lock."""
    if fcntl is None or not (Path(folder) / LOCK).is_file():
        return None
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # held: read who holds it
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    else:
        return None
    finally:
        os.close(fd)  # releases the shared lock taken, if any


def remove_temporary_files(folder: Path) -> list[str]:
    """Remove the temporary files of the run's files that a killed process left in ``folder``
    (call it with the folder's lock held); returns their names."""
    removed = []
    for entry in Path(folder).iterdir():
        if any(is_temporary_of(entry.name, name) for name in RUN_FILES):
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def check_writable_folder(folder: Path, flag: str) -> None:
    """:class:`UsageError` unless ``folder`` is, or can be created as, a folder this process may
    write into (checked on the nearest existing ancestor: nothing is created here)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {folder}: cannot write into {existing} (read-only or permission denied)")


class Terminated(KeyboardInterrupt):
    """SIGTERM received: handled as Ctrl-C (a ``KeyboardInterrupt``), exit status 143."""


def _raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


_deferring = threading.local()


@contextlib.contextmanager
def deferred_interrupts():
    """Within this block SIGINT (Ctrl-C) and SIGTERM wait: at its end, the first one received is
    delivered to the handler that was in place, as if it had just arrived. Writes in the block
    finish whole, so that the files on disk and the state that names them agree. Nested blocks
    and threads other than the main one defer nothing more."""
    if threading.current_thread() is not threading.main_thread() or getattr(_deferring, "active", False):
        yield
        return
    received = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in signals}
    _deferring.active = True
    try:
        yield
    finally:
        _deferring.active = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


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
