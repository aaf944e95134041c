"""Modules imported on first use, so that a script's ``--help`` answers without importing torch."""

import importlib


class LazyModule:
    """Stands for the module ``name``, imported at the first attribute read (``torch.device``...).

    The scripts hold torch, its submodules and ``alrao`` (which imports torch) this way: their
    parsers need none of them, and importing torch takes seconds (tests/test_help.py). Names read at
    import time (decorators, annotations) would import it at once: the scripts avoid them.
    """

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


# The modules the scripts hold this way, one object each, so that every script imports the same
# ones (``from experiment.lazy import torch``) instead of repeating their definitions.
torch = LazyModule("torch")
nn = LazyModule("torch.nn")
F = LazyModule("torch.nn.functional")
alrao = LazyModule("alrao")
