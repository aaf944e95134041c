"""Tools beside Alrao, not Alrao.

What lives here is useful next to the method but is no part of it (the paper's
section 3): a baseline optimizer to compare Alrao with, and a look at the
learning-rate landscape before a run. Alrao itself (feature learning rates,
classifier copies, the switch) is the package above.

- :class:`AliG` (``alig.py``): the tuning-free AliG optimizer (Berrada et al. 2020),
  one of the runner's baselines;
- :func:`lr_scan`, :func:`plot_lr_scan`, :class:`LRScanResult` (``lr_scan.py``):
  the loss on one batch after one optimizer step at each of a list of rates.

Each name is also importable from ``alrao`` itself (``alrao.AliG``, ``alrao.lr_scan``...),
where it was first published.
"""

from .alig import AliG
from .lr_scan import LRScanResult, lr_scan, plot_lr_scan

__all__ = ["AliG", "lr_scan", "plot_lr_scan", "LRScanResult"]
