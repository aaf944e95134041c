"""tutorial.ipynb runs top to bottom in a fresh kernel, holds the cells of tutorial.py (its jupytext
pair), and keeps the outputs of a full-size run."""

import jupytext
import nbformat
import pytest

from tools import tutorial_notebook

NOTEBOOK = tutorial_notebook.NOTEBOOK
SOURCE = tutorial_notebook.SOURCE
REGENERATE = "edit tutorial.py, then run `python tools/regenerate.py --only tutorial`"


@pytest.fixture(scope="module")
def committed():
    return nbformat.read(NOTEBOOK, as_version=4)


def _outputs(nb):
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def _first_output_text(nb):
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    return "".join(output.get("text", "") for output in first.outputs)


def _n_figures(nb):
    return sum("image/png" in output.get("data", {}) for output in _outputs(nb))


def test_notebook_and_tutorial_py_are_in_sync(committed):
    source = jupytext.read(SOURCE)
    assert committed.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", (
        "tutorial.ipynb is not paired with tutorial.py (jupytext formats ipynb,py:percent)"
    )
    sync = "edit tutorial.py, then run `jupytext --sync tutorial.py`"
    assert len(committed.cells) == len(source.cells), f"tutorial.ipynb has other cells than tutorial.py: {sync}"
    for i, (have, want) in enumerate(zip(committed.cells, source.cells)):
        assert (have.cell_type, have.source) == (want.cell_type, want.source), (
            f"cell {i} of tutorial.ipynb differs from tutorial.py: {sync}"
        )


def test_committed_outputs_come_from_one_full_size_run(committed):
    code = [cell for cell in committed.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        f"tutorial.ipynb was not executed top to bottom in one kernel: {REGENERATE}"
    )
    assert _first_output_text(committed).startswith("full-size run:"), f"outputs of a shrunk run: {REGENERATE}"
    kinds = {output.output_type for output in _outputs(committed)}
    assert "error" not in kinds
    assert not [o for o in _outputs(committed) if o.output_type == "stream" and o.name == "stderr"], (
        "the committed outputs show warnings or errors on stderr"
    )
    assert _n_figures(committed) == 4


def test_notebook_runs_top_to_bottom(committed, tmp_path, monkeypatch):
    # The kernel's files (connection file, IPython history, the notebook's checkpoint) go to tmp_path.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = tutorial_notebook.build()
    tutorial_notebook.execute(nb, quick=True, timeout=300)  # raises CellExecutionError at the first failing cell
    assert _first_output_text(nb).startswith("quick smoke run:")
    assert _n_figures(nb) == _n_figures(committed)
