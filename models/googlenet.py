"""GoogLeNet, CIFAR-10 variant, as a pre-classifier.

Same layers as the network of the paper's experiments (kuangliu/pytorch-cifar,
used by the authors): a 3x3 stem of 192 channels, nine Inception blocks with
the widths of Szegedy et al. (2015) (the 5x5 branch as two 3x3 convs), global
8x8 average pooling to 1024 features. The final ``Linear(1024, 10)`` is left
out: Alrao replaces it by its classifier copies.
"""

import torch
from torch import nn

from .width import check_size_multiplier, scaled


def _conv_bn_relu(in_channels, out_channels, kernel_size):
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class Inception(nn.Module):
    """Four parallel branches concatenated along channels:
    1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | 3x3 max-pool -> 1x1.

    Output channels: ``out_channels = n1x1 + n3x3 + n5x5 + pool_planes``.
    """

    def __init__(self, in_channels, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes):
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn_relu(in_channels, n1x1, 1))
        self.b2 = nn.Sequential(*_conv_bn_relu(in_channels, n3x3red, 1), *_conv_bn_relu(n3x3red, n3x3, 3))
        self.b3 = nn.Sequential(
            *_conv_bn_relu(in_channels, n5x5red, 1), *_conv_bn_relu(n5x5red, n5x5, 3), *_conv_bn_relu(n5x5, n5x5, 3)
        )
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(in_channels, pool_planes, 1))
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


#: Inception widths at width 1: (n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes);
#: 'M' = 3x3 max-pooling with stride 2.
GOOGLENET_CONFIG = (
    (64, 96, 128, 16, 32, 32),  # a3
    (128, 128, 192, 32, 96, 64),  # b3
    "M",
    (192, 96, 208, 16, 48, 64),  # a4
    (160, 112, 224, 24, 64, 64),  # b4
    (128, 128, 256, 24, 64, 64),  # c4
    (112, 144, 288, 32, 64, 64),  # d4
    (256, 160, 320, 32, 128, 128),  # e4
    "M",
    (256, 160, 320, 32, 128, 128),  # a5
    (384, 192, 384, 48, 128, 128),  # b5
)


class GoogLeNet(nn.Module):
    """GoogLeNet pre-classifier: ``(B, 3, 32, 32)`` -> ``(B, num_features)``
    (6.17M parameters with one 10-class linear classifier).

    Args:
        size_multiplier: every conv width is multiplied by it (the paper's "width*3").
    """

    def __init__(self, size_multiplier=1):
        super().__init__()
        check_size_multiplier(size_multiplier)
        channels = scaled(192, size_multiplier)
        layers = _conv_bn_relu(3, channels, 3)
        for item in GOOGLENET_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            else:
                block = Inception(channels, *(scaled(c, size_multiplier) for c in item))
                layers.append(block)
                channels = block.out_channels
        layers.append(nn.AdaptiveAvgPool2d(1))  # 8x8 -> 1x1 for a 32x32 input, like AvgPool2d(8)
        self.features = nn.Sequential(*layers)
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)
