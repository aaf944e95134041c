"""Atomic, verifiable writes of the run's files (DESIGN.md principles 5 and 11).

Every file is written to a temporary file ``.<name>.<pid>.tmp`` in the same
folder, flushed to disk, then renamed over the target with ``os.replace``
(atomic on POSIX and Windows): a reader, or a run killed mid-write, sees either
the old file or the new one, never half of one. A write that fails (disk full,
read-only folder, a file-size limit) raises :class:`WriteError`, one line
naming the file, and leaves the previous file as it was.

A checkpoint can also get a checksum: ``<name>.sha256`` beside it holds the
SHA-256 of the file, in ``sha256sum``'s line format. It is written *before*
the checkpoint is renamed into place and lists the new digest first and the
previous one second, so that a process killed between the two renames leaves
a pair that still verifies (:func:`verify_checksum`).
"""

import errno
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CHECKSUM_SUFFIX = ".sha256"
# What torch.save's zip writer says when the bytes it wrote did not all reach the file.
TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed")


class WriteError(OSError):
    """A file could not be written (disk full, read-only folder, ...); the previous one is intact."""


class ChecksumError(ValueError):
    """A file does not match the checksum recorded beside it: it changed after it was written."""


def temporary_path(path: Path) -> Path:
    """The temporary file that this process writes before renaming it to ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temporary_of(name: str, target: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`temporary_path` for a file called ``target``
    (written by any process)."""
    prefix, suffix = f".{target}.", ".tmp"
    return name.startswith(prefix) and name.endswith(suffix) and name[len(prefix) : -len(suffix)].isdigit()


def _write_failure(path: Path, error: BaseException) -> BaseException:
    """What to raise when writing ``path`` failed with ``error``: the ``KeyboardInterrupt`` that
    caused it (torch.save reports an exception of its write callback as a ``RuntimeError``
    "unexpected pos ..."), a one-line :class:`WriteError` for a failure of the file system, or
    ``error`` itself."""
    cause = error
    while cause is not None and not isinstance(cause, (KeyboardInterrupt, OSError)):
        cause = cause.__context__
    if isinstance(cause, KeyboardInterrupt):
        return cause
    if isinstance(cause, OSError) and cause.errno is not None:
        reason = os.strerror(cause.errno)
        if cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            reason = f"disk full ({reason})"
        return WriteError(cause.errno, f"write failed at {path}: {reason}; the previous file is intact")
    if isinstance(error, RuntimeError) and any(m in str(error) for m in TORCH_WRITE_FAILURES):
        # torch's zip writer lost bytes without an exception of ours (e.g. a short write)
        return WriteError(errno.EIO, f"write failed at {path} (disk full?): the file came out truncated")
    return error  # not a failure of the file system (e.g. an object that cannot be pickled)


def _atomic_write(
    path: Path, write: Callable[[io.BufferedWriter], None], before_replace: Callable[[], None] | None = None
) -> None:
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as error:  # KeyboardInterrupt included: never leave the temporary file behind
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. a folder that became read-only: the next run that opens it removes the file
        if isinstance(error, (WriteError, ChecksumError)):
            raise
        failure = _write_failure(path, error)
        if failure is error:
            raise
        raise failure from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


class _HashingWriter(io.RawIOBase):
    """A write-only file that computes the SHA-256 of what goes through it (no copy in memory)."""

    def __init__(self, f):
        super().__init__()
        self.f, self.sha256 = f, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)


def checksum_path(path: Path) -> Path:
    """The side file holding the SHA-256 of ``path``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _recorded_digests(path: Path) -> list[str]:
    """The digests listed in ``path``'s side file (newest first); [] when it does not exist."""
    try:
        lines = checksum_path(path).read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        raise ChecksumError(f"{checksum_path(path)} is unreadable ({type(error).__name__})") from None
    digests = [line.split()[0] for line in lines if line.strip()]
    if not digests or any(len(d) != 64 or any(c not in "0123456789abcdef" for c in d) for d in digests):
        raise ChecksumError(f"{checksum_path(path)} is not a list of SHA-256 digests")
    return digests


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file ``path``, in hexadecimal."""
    sha256 = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha256.update(block)
    return sha256.hexdigest()


def atomic_torch_save(obj: Any, path: Path, checksum: bool = False) -> None:
    """``torch.save(obj, path)``, atomically; with ``checksum``, also record the file's SHA-256
    in ``<path>.sha256`` (see the module's docstring)."""
    import torch

    path = Path(path)
    if not checksum:
        _atomic_write(path, lambda f: torch.save(obj, f))
        return
    writer = None

    def write(f):
        nonlocal writer
        writer = _HashingWriter(f)
        torch.save(obj, writer)

    def record_digest():
        previous = [_current_digest(path)] if path.exists() else []
        new = writer.sha256.hexdigest()
        atomic_write_text(checksum_path(path), "".join(f"{d}  {path.name}\n" for d in [new, *previous]))

    _atomic_write(path, write, before_replace=record_digest)
    _digests[str(path)] = (_signature(path), writer.sha256.hexdigest())


# The digest of each file this process wrote last, with its stat signature: the file about to be
# replaced need not be read again to list its digest as the previous one.
_digests: dict[str, tuple[tuple, str]] = {}


def _signature(path: Path) -> tuple:
    stat = os.stat(path)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _current_digest(path: Path) -> str:
    known = _digests.get(str(path))
    if known is not None and known[0] == _signature(path):
        return known[1]
    return file_sha256(path)


def verify_checksum(path: Path) -> bool:
    """Check ``path`` against the digests of its side file: ``True`` if it matches, ``False``
    when there is no side file; :class:`ChecksumError` (naming the file) when it does not match."""
    path = Path(path)
    digests = _recorded_digests(path)
    if not digests:
        return False
    if file_sha256(path) not in digests:
        raise ChecksumError(
            f"{path} does not match its checksum in {checksum_path(path)}: the file changed after it was "
            "written (disk or copy corruption)"
        )
    return True


def to_json(obj: Any) -> Any:
    """``obj`` with tensors turned into numbers/lists and non-finite floats into ``None``.

    Strict JSON has no NaN or infinity; a diverged run says so in its own
    ``diverged`` field, and its non-finite losses are written as ``null``.
    """
    torch = sys.modules.get("torch")  # not imported: no tensor to convert (and no torch to load)
    if torch is not None and isinstance(obj, torch.Tensor):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def dumps_json(obj: Any, **kwargs) -> str:
    """Strict JSON text of ``obj`` (see :func:`to_json`)."""
    return json.dumps(to_json(obj), allow_nan=False, **kwargs)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as one indented, strict JSON document, atomically."""
    atomic_write_text(path, dumps_json(obj, indent=2) + "\n")


def write_jsonl(path: Path, records: Iterable[Any]) -> None:
    """Write one strict JSON object per line, atomically (the whole file is rewritten)."""
    atomic_write_text(path, "".join(dumps_json(r) + "\n" for r in records))
