"""MobileNetV2, CIFAR-10 variant, as a pre-classifier.

Same layers as the network of the paper's experiments (kuangliu/pytorch-cifar,
used by the authors): the inverted-residual blocks of Sandler et al. (2018),
with the stride of the stem and of the second stage set to 1 for 32x32 inputs,
a 1x1 conv to 1280 channels and 4x4 average pooling. The final
``Linear(1280, 10)`` is left out: Alrao replaces it by its classifier copies.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .width import check_size_multiplier, scaled


class Block(nn.Module):
    """Inverted residual: 1x1 expansion -> 3x3 depthwise -> 1x1 linear projection.

    A shortcut is added when ``stride == 1`` (a 1x1 conv + BatchNorm when the
    number of channels changes).
    """

    def __init__(self, in_channels, out_channels, expansion, stride):
        super().__init__()
        self.stride = stride
        planes = expansion * in_channels
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


#: (expansion, out_channels at width 1, number of blocks, stride of the first block)
MOBILENETV2_CONFIG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 1 instead of ImageNet's 2, for 32x32 inputs
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2 pre-classifier: ``(B, 3, 32, 32)`` -> ``(B, num_features)``
    (2.30M parameters with one 10-class linear classifier).

    Args:
        size_multiplier: every conv width is multiplied by it (the paper's "width*3").
    """

    def __init__(self, size_multiplier=1):
        super().__init__()
        check_size_multiplier(size_multiplier)
        channels = scaled(32, size_multiplier)
        self.conv1 = nn.Conv2d(3, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        blocks = []
        for expansion, out_channels, n_blocks, stride in MOBILENETV2_CONFIG:
            out_channels = scaled(out_channels, size_multiplier)
            for block_stride in [stride] + [1] * (n_blocks - 1):
                blocks.append(Block(channels, out_channels, expansion, block_stride))
                channels = out_channels
        self.layers = nn.Sequential(*blocks)
        self.num_features = scaled(1280, size_multiplier)
        self.conv2 = nn.Conv2d(channels, self.num_features, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1)  # the 4x4 map of a 32x32 input, like avg_pool2d(out, 4)
        return torch.flatten(out, 1)
