"""What every table and figure carries (profile, seeds, commit) and atomic writes of result files."""

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiment.files import atomic_write_bytes, atomic_write_text, write_json
from experiment.provenance import git_commit

from .plan import Plan
from .protocol import is_lstm

DASH = "–"  # an empty cell

__all__ = [
    "Provenance",
    "MANIFEST",
    "record_written",
    "file_sha256",
    "git_commit",
    "format_rate",
    "format_seeds",
    "runs_note",
    "seeds_text",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
]


def format_rate(lr: float | None) -> str:
    """A learning rate as the paper writes it: ``1e-1``, ``1``, ``10``; between powers of 10,
    two digits: ``4.6e-5``, ``0.022``, ``2.2``."""
    if lr is None:
        return DASH
    # Tolerances of float32: a copy's rate read back from a float32 tensor is 1e-5 to 7 digits.
    exponent = math.floor(math.log10(lr) + 1e-6)
    if math.isclose(lr, 10.0**exponent, rel_tol=1e-6):
        return {0: "1", 1: "10"}.get(exponent, f"1e{exponent}")
    if -2 <= exponent <= 1:
        return f"{lr:.2g}"
    return f"{lr / 10.0**exponent:.1f}e{exponent}"


def runs_note(runs_dir) -> str:
    """The notes' line naming the runs a table was made from: the path relative to the repository
    when the runs are inside it (``runs/regenerate-<code hash>``, the same on every clone that runs
    tools/regenerate.py), else as given."""
    root = Path(__file__).resolve().parents[1]
    path = Path(runs_dir).resolve()
    shown = path.relative_to(root) if path.is_relative_to(root) else Path(runs_dir)
    return f"Runs: `{shown}`."


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
    """Which profile, seeds and code produced a table or a figure, and the command that wrote it.
    ``run_commits``: the commits of the code that trained the runs shown, when known."""

    profile: str
    seeds: str
    commit: str
    command: str
    run_commits: tuple[str, ...] = ()
    source_hash: str = ""

    def line(self) -> str:
        line = f"profile {self.profile} · seeds {self.seeds} · commit {self.commit}"
        if self.source_hash:
            line += f" · code {self.source_hash}"
        if self.run_commits and self.run_commits != (self.commit,):
            line += f" (runs trained at {', '.join(self.run_commits)})"
        return line

    def as_dict(self) -> dict:
        return {
            "profile": self.profile,
            "seeds": self.seeds,
            "commit": self.commit,
            "command": self.command,
            "run_commits": list(self.run_commits),
            "source_hash": self.source_hash,
        }


#: The file of a results folder recording, for each result file, its sha256 and the hash of the
#: code that wrote it (tests/test_committed_results.py compares both with the folder and the code).
MANIFEST = "provenance.json"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_written(results_dir: Path, written: Iterable[Path], source_hash: str, commit: str, command: str) -> Path:
    """Add the files just ``written`` to ``results_dir``'s :data:`MANIFEST` (the others keep their
    entries): ``{name: {sha256, source_hash, commit, command}}``. Returns its path."""
    path = Path(results_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            manifest = {}
    except (OSError, ValueError):  # none yet, or unreadable: start a new one
        manifest = {}
    for file in written:
        file = Path(file)
        manifest[file.name] = {
            "sha256": file_sha256(file),
            "source_hash": source_hash,
            "commit": commit,
            "command": command,
        }
    write_json(path, dict(sorted(manifest.items())))
    return path
