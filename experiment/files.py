"""Atomic writes of the run's files (DESIGN.md principles 5 and 11).

Every file is written to a temporary file in the same folder, flushed to disk,
then renamed over the target with ``os.replace`` (atomic on POSIX and
Windows): a reader, or a run killed mid-write, sees either the old file or the
new one, never half of one.
"""

import io
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def to_json(obj: Any) -> Any:
    """``obj`` with tensors turned into numbers/lists and non-finite floats into ``None``.

    Strict JSON has no NaN or infinity; a diverged run says so in its own
    ``diverged`` field, and its non-finite losses are written as ``null``.
    """
    if isinstance(obj, torch.Tensor):
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
