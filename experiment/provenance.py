"""Which code produced a result: the git commit of the repository, recorded in every run's
``config.json`` and stamped on reproduce.py's tables and figures, and a hash of the producing
code's source, stamped beside each committed result (results/<profile>/, tutorial.ipynb)."""

import ast
import functools
import hashlib
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


#: The code whose changes change the committed results of reproduce.py (results/<profile>/).
RESULTS_SOURCES = (
    "alrao",
    "data",
    "experiment",
    "models",
    "reproduce_lib",
    "main_cnn.py",
    "main_rnn.py",
    "reproduce.py",
)
#: The code whose changes change the committed outputs of tutorial.ipynb: its cells (tutorial.py) and
#: what executes them.
TUTORIAL_SOURCES = ("alrao", "data", "tutorial.py", "tools/tutorial_notebook.py")
#: The one command that regenerates every committed number (results/quick, the README's tables, the tutorial).
REGENERATE = "python tools/regenerate.py"


def source_hash(sources=RESULTS_SOURCES, repo: Path = REPO) -> str:
    """A hash (16 hex digits) of the Python code of ``sources`` (files and folders relative to
    ``repo``) as the interpreter reads it: each file's syntax tree without its docstrings, so that
    comments, docstrings and formatting do not count and any change of what runs does. Stamped
    beside each committed result; a test compares it with the code's current hash."""
    files = []
    for source in sources:
        path = repo / source
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(repo).as_posix()}\0{_code_digest(file.read_bytes())}\0".encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1024)
def _code_digest(text: bytes) -> str:
    """The sha256 of the syntax tree of ``text`` without docstrings (cached: parsing is the cost)."""
    tree = ast.parse(text)
    stack = [tree]
    while stack:  # the statements only: docstrings are the first statement of a body
        node = stack.pop()
        body = node.body if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else []
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, [])
            if isinstance(children, list):
                stack += [c for c in children if isinstance(c, (ast.stmt, ast.excepthandler))]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()
