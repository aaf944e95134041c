"""The width multiplier shared by the CIFAR-10 pre-classifiers.

The paper's "width*3" rows (Table 1) train networks whose every layer has 3x
as many channels. :func:`scaled` applies such a multiplier to one layer width.
"""

import math
import numbers


def check_size_multiplier(size_multiplier) -> float:
    """Return ``size_multiplier`` if it is a finite number > 0, else raise ValueError."""
    if (
        isinstance(size_multiplier, bool)
        or not isinstance(size_multiplier, numbers.Real)
        or not math.isfinite(size_multiplier)
        or size_multiplier <= 0
    ):
        raise ValueError(f"size_multiplier must be a finite number > 0 (e.g. 1 or 3), got {size_multiplier!r}")
    return size_multiplier


def scaled(channels: int, size_multiplier) -> int:
    """Number of channels of a layer that has ``channels`` at width 1.

    Exact for integer multipliers; rounded to the nearest integer (at least 1)
    for fractional ones.
    """
    return max(1, int(round(channels * size_multiplier)))
