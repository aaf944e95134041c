"""``--help`` of the scripts answers without importing torch, and the names the parsers spell
out to do so (experiment.flags, data, models) stay those of the torch-using registries."""

import subprocess
import sys
from pathlib import Path

import pytest

import alrao
import data
import experiment
import models
from experiment.flags import LR_OF_BASELINES, OPTIMIZER_CHOICES

ROOT = Path(__file__).resolve().parents[1]
# Runs a script as `python SCRIPT --help` would, then fails if torch was imported on the way.
RUN_HELP = """
import runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exit:
    code = exit.code
else:
    code = None
heavy = sorted(m for m in {heavy} if m in sys.modules)
print("heavy modules:", heavy, file=sys.stderr)
sys.exit(3 if heavy else code)
"""


@pytest.mark.parametrize(
    "script, heavy",
    [
        ("main_cnn.py", ("torch", "alrao", "numpy")),
        ("main_rnn.py", ("torch", "alrao", "numpy")),
        ("lr_scan.py", ("torch", "alrao", "numpy")),
        ("reproduce.py", ("torch", "alrao")),  # its tables and figures module loads numpy (0.1 s)
    ],
)
def test_help_answers_without_torch(script, heavy):
    done = subprocess.run(
        [sys.executable, "-c", RUN_HELP.format(script=script, heavy=heavy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script}"), done.stdout[:200]
    assert "--help" in done.stdout and "heavy modules: []" in done.stderr


def test_the_flags_show_the_optimizer_registry():
    """--optimizer's table is the registry itself (read without torch), not a copy."""
    assert list(OPTIMIZER_CHOICES) == list(experiment.OPTIMIZERS)
    for name, spec in experiment.OPTIMIZERS.items():
        choice = OPTIMIZER_CHOICES[name]
        assert (choice.default_lr, choice.flags, choice.has_alrao) == (
            spec.default_lr,
            spec.flags,
            spec.alrao is not None,
        ), name
    assert all(name in LR_OF_BASELINES for name, choice in OPTIMIZER_CHOICES.items() if not choice.has_alrao)


def test_spelled_out_models_and_corpora_are_the_registries():
    assert models.MODEL_NAMES == tuple(models.MODELS)
    assert data.TEXT_CORPORA == data.text.TEXT_CORPORA
    assert experiment.flags.GRANULARITIES == alrao.lr_sampling.GRANULARITIES


@pytest.mark.parametrize("package", [data, experiment, models])
def test_lazy_packages_keep_every_public_name(package):
    for name in package.__all__:
        assert getattr(package, name) is not None, f"{package.__name__}.{name}"
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018
