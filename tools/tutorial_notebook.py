"""tutorial.py -> tutorial.ipynb: the notebook of the tutorial's cells, executed in a fresh kernel.

The cells live in ``tutorial.py`` (jupytext's ``py:percent`` format, paired with ``tutorial.ipynb``):
edit them there, then ``jupytext --sync tutorial.py`` (the cells only) or ``python tools/regenerate.py
--only tutorial`` (the cells, executed full size: 26 s wall clock at 3e9dcd0 on this project's
2-core x86_64 CPU, torch 2.14.1, 71 s with the CPU shared; each execution's time is in the
notebook's metadata, ``alrao_regenerated.execution_s``). tests/test_tutorial.py checks that the pair
is in sync and that the notebook still runs.
"""

import io
import os
import pathlib

import jupytext
import nbformat

from experiment.files import atomic_write_text

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tutorial.py"
NOTEBOOK = ROOT / "tutorial.ipynb"
#: Environment variable that shrinks the notebook's sizes to a smoke run (set by the tests).
QUICK_ENV = "ALRAO_TUTORIAL_QUICK"


def build(source: pathlib.Path = SOURCE) -> nbformat.NotebookNode:
    """The notebook of ``source``'s cells, without outputs. Cell ids are numbered rather than
    random (jupytext's), so that regenerating the notebook changes only what changed."""
    nb = jupytext.read(source)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def execute(nb: nbformat.NotebookNode, *, quick: bool, env=None, timeout: int = 600) -> nbformat.NotebookNode:
    """Run ``nb`` in place, in a fresh ``python3`` kernel started in the repository root.

    ``quick``: shrink the sizes to a smoke run (sets :data:`QUICK_ENV` in the kernel's
    environment). ``env``: the kernel's environment (default: this process's); torch in the
    kernel uses one thread unless ``env`` sets ``OMP_NUM_THREADS``. ``timeout``: seconds per cell.
    Raises ``nbclient.exceptions.CellExecutionError`` at the first failing cell.
    """
    from nbclient import NotebookClient

    env = dict(os.environ if env is None else env)
    env.pop(QUICK_ENV, None)
    if quick:
        env[QUICK_ENV] = "1"
    # The tutorial's networks are small: a second thread barely speeds them up, and on a CPU
    # shared with other processes several threads make them many times slower.
    env.setdefault("OMP_NUM_THREADS", "1")
    # Coalesced streams and no timestamps: regenerating changes the file only where outputs changed.
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        coalesce_streams=True,
        record_timing=False,
        resources={"metadata": {"path": str(ROOT)}},
    ).execute(env=env)
    return nb


def write(nb: nbformat.NotebookNode, path: pathlib.Path = NOTEBOOK) -> None:
    """Write ``nb`` as an .ipynb, atomically: a half-written notebook never replaces the old one.
    jupytext writes it as ``jupytext --sync`` would (the pairing kept in its metadata, the text
    format's details dropped), so that a later sync leaves it as it is."""
    text = io.StringIO()  # jupytext.write's text (writes() leaves out the final newline)
    jupytext.write(nb, text, fmt="ipynb")
    atomic_write_text(path, text.getvalue())
