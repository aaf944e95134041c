"""Alrao: All Learning Rates At Once (Blier, Wolinski, Ollivier, 2018,
"Learning with Random Learning Rates").

Each feature of the pre-classifier gets a learning rate drawn log-uniformly in
``[min_lr, max_lr]``; the classifier is replaced by copies with log-spaced
learning rates, averaged by the switch. See README.md for the training loop.

Tools beside the method (the AliG optimizer, the loss-per-learning-rate scan)
live in :mod:`alrao.tools`; their names are re-exported here too.
"""

from .deprecated import classifier_lrs
from .device_path import accelerator_path, on_accelerator_path
from .layers import LinearClassifier, LinearClassifierRNN, LinearRegressor
from .likelihood import GaussianNLL
from .lr_sampling import classifier_lr_grid, register_feature_rule, sample_feature_lrs
from .model import AlraoModel
from .optim import AlraoAdam, AlraoSGD
from .relative import relative_factors, relative_lr, relative_param_groups, relative_weight_decay
from .switch import Switch
from .tools import AliG, LRScanResult, lr_scan, plot_lr_scan

__all__ = [
    "AlraoModel",
    "AlraoSGD",
    "AlraoAdam",
    "Switch",
    "sample_feature_lrs",
    "register_feature_rule",
    "classifier_lr_grid",
    "classifier_lrs",  # deprecated alias of classifier_lr_grid
    "LinearClassifier",
    "LinearClassifierRNN",
    "LinearRegressor",
    "GaussianNLL",
    "relative_lr",
    "relative_weight_decay",
    "relative_factors",
    "relative_param_groups",
    "lr_scan",
    "plot_lr_scan",
    "LRScanResult",
    "AliG",
    "accelerator_path",
    "on_accelerator_path",
]
