"""Every committed number comes from the current code: results/quick (via its provenance.json),
the README's generated tables, and the tutorial's outputs. When one of these tests fails, run
the command it names (tools/regenerate.py) and commit what it rewrites."""

import importlib.util
import json
import pathlib

import nbformat
import pytest

from experiment.provenance import REGENERATE, RESULTS_SOURCES, TUTORIAL_SOURCES, source_hash
from reproduce_lib.outputs import MANIFEST, file_sha256

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "quick"


def _load_regenerate():
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "tools" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regenerate = _load_regenerate()


def test_every_committed_result_file_comes_from_the_current_code():
    manifest_path = RESULTS / MANIFEST
    assert manifest_path.is_file(), f"{manifest_path.relative_to(ROOT)} is missing: run `{REGENERATE}`"
    manifest = json.loads(manifest_path.read_text())
    current = source_hash(RESULTS_SOURCES)
    for path in sorted(RESULTS.iterdir()):
        if path.name == MANIFEST:
            continue
        name = path.relative_to(ROOT)
        assert path.name in manifest, f"{name} was not written by reproduce.py: run `{REGENERATE}`"
        entry = manifest[path.name]
        assert entry["sha256"] == file_sha256(path), f"{name} differs from what reproduce.py wrote: run `{REGENERATE}`"
        assert entry["source_hash"] == current, (
            f"the code that produced {name} changed since (code hash {entry['source_hash']}, now {current}): "
            f"run `{REGENERATE}`"
        )


def test_the_tutorial_outputs_come_from_the_current_code():
    stamp = nbformat.read(ROOT / "tutorial.ipynb", as_version=4).metadata.get(regenerate.NOTEBOOK_STAMP)
    assert stamp is not None, f"tutorial.ipynb carries no stamp of the code that executed it: run `{REGENERATE}`"
    assert not stamp["quick"], f"tutorial.ipynb holds the outputs of a smoke run: run `{REGENERATE}`"
    current = source_hash(TUTORIAL_SOURCES)
    assert stamp["source_hash"] == current, (
        f"the code that produced tutorial.ipynb's outputs changed since (code hash {stamp['source_hash']}, "
        f"now {current}): run `{REGENERATE}`"
    )


def test_the_readme_tables_are_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    blocks = list(regenerate.BLOCK.finditer(readme))
    assert {pathlib.Path(b["name"]).name for b in blocks} == {"table1.md", "baselines.md", "granularity.md"}
    assert regenerate.rewrite_readme(readme, RESULTS) == readme, (
        f"README.md's generated tables differ from results/quick/*.md: run `{REGENERATE} --only readme`"
    )


def test_the_source_hash_sees_code_not_docstrings_comments_or_layout(tmp_path):
    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg" / "m.py"
    module.write_text('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    before = source_hash(("pkg",), repo=tmp_path)
    module.write_text('"""Other doc."""\n\n\ndef f(x):  # a comment\n    return (x + 1)\n')
    assert source_hash(("pkg",), repo=tmp_path) == before
    module.write_text("def f(x):\n    return x + 2\n")
    assert source_hash(("pkg",), repo=tmp_path) != before


def test_readme_blocks_are_rebuilt_from_the_named_file(tmp_path):
    (tmp_path / "t.md").write_text("# Title\n\nprofile quick · seeds 0\n\n| a |\n|---|\n| 1 |\n\n- a note\n")
    readme = "intro\n<!-- begin generated: results/quick/t.md -->\nold\n<!-- end generated -->\nrest\n"
    assert regenerate.rewrite_readme(readme, tmp_path) == (
        "intro\n<!-- begin generated: results/quick/t.md -->\nprofile quick · seeds 0\n\n| a |\n|---|\n| 1 |\n"
        "<!-- end generated -->\nrest\n"
    )


@pytest.mark.parametrize("sources", [RESULTS_SOURCES, TUTORIAL_SOURCES])
def test_the_producing_code_exists(sources):
    for source in sources:
        assert (ROOT / source).exists(), source
