"""Modules imported on first use, so that a script's ``--help`` answers without importing torch."""

import importlib
import sys
from collections.abc import Callable


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


def lazy_package(package: str, lazy: dict[str, str], **computed: Callable[[], object]):
    """``(__getattr__, __dir__)`` of the package ``package`` (its ``__name__``, PEP 562).

    A name of ``lazy`` is imported from the submodule it maps to at its first read, then kept in
    the package's namespace: the packages ``data``, ``experiment`` and ``models`` hold their
    torch-using names this way, so that a script's parser, hence its ``--help``, is built without
    torch (tests/test_help.py). A name of ``computed`` reads as its function's value; any other
    public name as a submodule, imported at its first read.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str):
        if name in computed:
            return computed[name]()
        if name in lazy:
            value = namespace[name] = getattr(importlib.import_module(f".{lazy[name]}", package), name)
            return value
        if not name.startswith("_"):
            try:
                return importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as error:
                if error.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted({*namespace, *lazy, *computed})

    return __getattr__, __dir__


# The modules the scripts hold this way, one object each, so that every script imports the same
# ones (``from experiment.lazy import torch``) instead of repeating their definitions.
torch = LazyModule("torch")
nn = LazyModule("torch.nn")
F = LazyModule("torch.nn.functional")
alrao = LazyModule("alrao")
