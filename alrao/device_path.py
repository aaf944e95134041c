"""The one device-dependent choice of ``alrao``: may the library read a tensor on the host?

Two code paths, chosen here and nowhere else:

- the **host path** (eager on a CPU): reading a tensor costs nothing, so the
  library takes the shortcuts that need a read: a diverged pre-classifier
  raises at once, the masks of diverged copies are skipped when every copy is
  known to be finite;
- the **accelerator path** (any other device, and whenever ``torch.compile``
  traces the code): nothing in ``forward``, ``loss``, ``backward``, the
  optimizers' ``step`` or ``update_switch`` reads a tensor on the host. The
  masks are always applied, and the checks (diverged pre-classifier, copies'
  outputs that are not log-probabilities) set device flags that
  :meth:`alrao.AlraoModel.check` reads every ``check_every`` switch updates.

:func:`accelerator_path` forces the accelerator path on a CPU, so that tests
(and users chasing a device-only problem) run the code a GPU runs.
"""

import contextlib
from collections.abc import Iterator

import torch

# The path taken: "by device" (a CPU's tensors take the host path, any other device's the accelerator
# path), or the one forced by accelerator_path(): "accelerator" or "host".
_path = "by device"


def on_accelerator_path(device: torch.device) -> bool:
    """Whether code handling tensors on ``device`` must avoid host reads (see the module docstring)."""
    if torch.compiler.is_compiling():
        return True
    if _path == "by device":
        return device.type != "cpu"
    return _path == "accelerator"


@contextlib.contextmanager
def accelerator_path(enabled: bool = True) -> Iterator[None]:
    """Force the accelerator path (``enabled=True``) or the host path (``False``) on every device
    while the context is active::

        with alrao.accelerator_path():
            ...  # a CPU step runs the GPU's code: no host read, deferred checks
    """
    global _path
    previous, _path = _path, ("accelerator" if enabled else "host")
    try:
        yield
    finally:
        _path = previous


def known_all(mask: torch.Tensor) -> bool:
    """Whether the boolean tensor ``mask`` is known to be all true without waiting for a device
    (e.g. every copy finite): read on the host path, where it costs nothing; ``False`` on the
    accelerator path (which then takes the general code: masks applied, scales multiplied)."""
    return not on_accelerator_path(mask.device) and bool(mask.all())
