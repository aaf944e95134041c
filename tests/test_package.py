"""The installed package: alrao.tools ships with alrao, and its names are the ones alrao re-exports."""

import tomllib
from pathlib import Path

import alrao
import alrao.tools

ROOT = Path(__file__).resolve().parent.parent


def test_the_tools_are_importable_from_alrao_tools_and_from_alrao():
    for name in alrao.tools.__all__:
        assert getattr(alrao, name) is getattr(alrao.tools, name)
        assert name in alrao.__all__


def test_pyproject_installs_every_subpackage_of_alrao():
    # setuptools installs the packages listed, not their subpackages: a missing one would import
    # from a checkout (and an editable install) but not from a wheel.
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "alrao").rglob("__init__.py")}
    assert listed == found
