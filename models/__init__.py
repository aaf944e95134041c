"""Pre-classifiers of the paper's experiments: each network minus its last layer.

Alrao (paper, section 3) splits a network into a *pre-classifier* and a
classifier layer, which it replaces by several copies. Every model here is
such a pre-classifier; its int attribute ``num_features`` is the width of
its output, the input width of the classifier copies::

    pre = models.build_preclassifier('GoogLeNet', size_multiplier=3)
    model = alrao.AlraoModel('classification', nn.NLLLoss(), pre, 10,
                             alrao.LinearClassifier, pre.num_features, 10)

:data:`MODELS` maps the command-line names of the CIFAR-10 networks to their
constructors ``ctor(size_multiplier=1)``.
"""

from experiment.lazy import lazy_package

#: The command-line names of the CIFAR-10 pre-classifiers, the keys of :data:`MODELS`, spelled out
#: so that --help needs no torch (tests/test_help.py keeps them equal).
MODEL_NAMES = ("VGG19", "GoogLeNet", "MobileNetV2", "SENet18")


def _models() -> dict:
    """:data:`MODELS`: CIFAR-10 pre-classifiers by command-line name, ``(B, 3, 32, 32)`` -> ``(B, num_features)``."""
    if "MODELS" not in globals():
        from .googlenet import GoogLeNet
        from .mobilenetv2 import MobileNetV2
        from .senet import SENet18
        from .vgg import VGG19

        globals()["MODELS"] = {"VGG19": VGG19, "GoogLeNet": GoogLeNet, "MobileNetV2": MobileNetV2, "SENet18": SENet18}
    return globals()["MODELS"]


def build_preclassifier(name: str, size_multiplier=1):
    """The CIFAR-10 pre-classifier called ``name`` (a key of :data:`MODELS`), an ``nn.Module``
    with every layer width multiplied by ``size_multiplier``."""
    registry = _models()
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(registry)}")
    return registry[name](size_multiplier)


# The names below need torch: imported on first use (experiment.lazy.lazy_package).
_LAZY = {
    **dict.fromkeys(("GoogLeNet",), "googlenet"),
    **dict.fromkeys(("MobileNetV2",), "mobilenetv2"),
    **dict.fromkeys(("RNN_TYPES", "RNNModel"), "rnn"),
    **dict.fromkeys(("SENet", "SENet18"), "senet"),
    **dict.fromkeys(("VGG", "VGG19"), "vgg"),
}


#: Channels of the narrowest scaled layer of each network at width 1 (SENet's squeeze-excitation
#: reduction, at least 1 channel by construction, aside): a ``size_multiplier`` below
#: ``1 / NARROWEST_WIDTH[name]`` leaves that layer less than one channel.
NARROWEST_WIDTH = {"VGG19": 64, "GoogLeNet": 16, "MobileNetV2": 16, "SENet18": 64}


def min_size_multiplier(name: str) -> float:
    """The smallest ``size_multiplier`` that keeps every scaled layer of ``name`` at least one channel wide."""
    return 1 / NARROWEST_WIDTH[name]


__getattr__, __dir__ = lazy_package(__name__, _LAZY, MODELS=_models)


__all__ = [
    "MODEL_NAMES",
    "MODELS",
    "build_preclassifier",
    "RNNModel",
    "RNN_TYPES",
    "VGG",
    "VGG19",
    "GoogLeNet",
    "MobileNetV2",
    "SENet",
    "SENet18",
]
