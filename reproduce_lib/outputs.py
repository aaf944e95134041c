"""What every table and figure carries (profile, seeds, commit) and atomic writes of result files."""
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from experiment.files import atomic_write_text, write_json

from .plan import Plan
from .protocol import is_lstm

REPO = Path(__file__).resolve().parent.parent

DASH = "–"  # an empty cell

__all__ = ["Provenance", "git_commit", "format_rate", "format_seeds", "seeds_text",
           "atomic_write_bytes", "atomic_write_text", "write_json"]


def git_commit(repo: Path = REPO) -> str:
    """The short hash of the code's commit, with ``+changes`` when tracked files differ from it;
    ``'unknown'`` outside a git repository (or without git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def format_rate(lr: Optional[float]) -> str:
    """A learning rate as the paper writes it: ``1e-1``, ``1``, ``10``; between powers of 10,
    two digits: ``4.6e-5``, ``0.022``, ``2.2``."""
    if lr is None:
        return DASH
    exponent = math.floor(math.log10(lr) + 1e-9)
    if math.isclose(lr, 10.0 ** exponent):
        return {0: "1", 1: "10"}.get(exponent, f"1e{exponent}")
    if -2 <= exponent <= 1:
        return f"{lr:.2g}"
    return f"{lr / 10.0 ** exponent:.1f}e{exponent}"


def format_seeds(seeds: Sequence[int]) -> str:
    """``0, 1, 2, 5`` -> ``'0-2, 5'``."""
    parts, seeds = [], sorted(set(seeds))
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ", ".join(parts)


def seeds_text(plan: Plan, models: Iterable[str]) -> str:
    """The seeds of ``models``' runs, e.g. ``'0-9 (CNNs), 0-4 (LSTM)'`` or ``'0-1'``."""
    models = list(models)
    by_kind = {}
    for model in models:
        by_kind.setdefault("LSTM" if is_lstm(model) else "CNNs", plan.seeds_for(model))
    texts = {kind: format_seeds(seeds) for kind, seeds in by_kind.items()}
    if len(set(texts.values())) <= 1:
        return next(iter(texts.values()), "none")
    return ", ".join(f"{text} ({kind})" for kind, text in texts.items())


@dataclass(frozen=True)
class Provenance:
    """Which profile, seeds and code produced a table or a figure, and the command that wrote it."""

    profile: str
    seeds: str
    commit: str
    command: str

    def line(self) -> str:
        return f"profile {self.profile} · seeds {self.seeds} · commit {self.commit}"

    def as_dict(self) -> dict:
        return {"profile": self.profile, "seeds": self.seeds, "commit": self.commit, "command": self.command}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
