"""Old names of ``alrao``, kept so that users' code does not break; each warns with its new name."""

import warnings

from .lr_sampling import classifier_lr_grid


def classifier_lrs(min_lr: float, max_lr: float, n_classifiers: int) -> list[float]:
    """Deprecated name of :func:`alrao.classifier_lr_grid` (the function; an Alrao optimizer's
    ``classifier_lrs()`` method, the rates of its copies, keeps its name)."""
    warnings.warn(
        "alrao.classifier_lrs(min_lr, max_lr, n_classifiers) is deprecated: use alrao.classifier_lr_grid",
        DeprecationWarning,
        stacklevel=2,
    )
    return classifier_lr_grid(min_lr, max_lr, n_classifiers)
