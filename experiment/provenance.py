"""Which code produced a result: the git commit of the repository, recorded in every run's
``config.json`` and stamped on reproduce.py's tables and figures."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_commit(repo: Path = REPO) -> str:
    """The short hash of the code's commit, with ``+changes`` when tracked files differ from it
    (other than those under ``results/``, which reproduce.py itself rewrites); ``'unknown'``
    outside a git repository (or without git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")
