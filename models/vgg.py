"""VGG19 with BatchNorm, CIFAR-10 variant, as a pre-classifier.

Same layers as the network of the paper's experiments (kuangliu/pytorch-cifar,
used by the authors): sixteen 3x3 conv + BatchNorm + ReLU layers in five
stages separated by 2x2 max-pooling, so a 32x32 input ends as a 1x1 map of
512 channels. The final ``Linear(512, 10)`` is left out: Alrao replaces it by
its classifier copies.
"""

import torch
from torch import nn

from .width import check_size_multiplier, scaled

#: Output channels of the conv layers; 'M' = 2x2 max-pooling.
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG pre-classifier: ``(B, 3, 32, 32)`` -> ``(B, num_features)``.

    Args:
        config: conv widths at width 1 and 'M' for max-pooling (e.g. :data:`VGG19_CONFIG`).
        size_multiplier: every conv width is multiplied by it (the paper's
            "width*3" rows use 3; the authors' code ignored it for VGG).
    """

    def __init__(self, config=VGG19_CONFIG, size_multiplier=1):
        super().__init__()
        check_size_multiplier(size_multiplier)
        layers, in_channels = [], 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_channels = scaled(item, size_multiplier)
                layers += [
                    nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ]
                in_channels = out_channels
        # The authors' trailing AvgPool2d(kernel_size=1, stride=1) is the identity: left out.
        self.features = nn.Sequential(*layers)
        self.num_features = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)


def VGG19(size_multiplier=1) -> VGG:
    """VGG19 with BatchNorm (20.04M parameters with one 10-class linear classifier)."""
    return VGG(VGG19_CONFIG, size_multiplier)
