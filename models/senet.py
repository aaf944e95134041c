"""SENet18, CIFAR-10 variant, as a pre-classifier.

Same layers as the network in the authors' code (kuangliu/pytorch-cifar): a
pre-activation ResNet18 whose blocks carry a squeeze-and-excitation gate
(Hu et al., 2018) with reduction 16, ending with 4x4 average pooling to 512
features. The final ``Linear(512, 10)`` is left out: Alrao replaces it by its
classifier copies. (The paper does not report results for this network.)
"""

import torch
import torch.nn.functional as F
from torch import nn

from .width import check_size_multiplier, scaled


class PreActSEBlock(nn.Module):
    """BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 3x3 conv, rescaled channel-wise
    by the squeeze-and-excitation gate, plus the shortcut."""

    def __init__(self, in_channels, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != planes:
            self.shortcut = nn.Conv2d(in_channels, planes, kernel_size=1, stride=stride, bias=False)
        # Squeeze-and-excitation as 1x1 convs on the pooled map (reduction 16).
        self.fc1 = nn.Conv2d(planes, max(1, planes // 16), kernel_size=1)
        self.fc2 = nn.Conv2d(max(1, planes // 16), planes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        gate = F.adaptive_avg_pool2d(out, 1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return out * gate + shortcut


class SENet(nn.Module):
    """SENet pre-classifier: ``(B, 3, 32, 32)`` -> ``(B, num_features)``.

    Args:
        num_blocks: number of blocks in each of the four stages.
        size_multiplier: every conv width is multiplied by it.
    """

    def __init__(self, num_blocks=(2, 2, 2, 2), size_multiplier=1):
        super().__init__()
        check_size_multiplier(size_multiplier)
        channels = scaled(64, size_multiplier)
        self.conv1 = nn.Conv2d(3, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        stages = []
        for planes, n_blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            planes = scaled(planes, size_multiplier)
            blocks = []
            for block_stride in [stride] + [1] * (n_blocks - 1):
                blocks.append(PreActSEBlock(channels, planes, block_stride))
                channels = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1)  # the 4x4 map of a 32x32 input, like avg_pool2d(out, 4)
        return torch.flatten(out, 1)


def SENet18(size_multiplier=1) -> SENet:
    """SENet18: pre-activation SE blocks, two per stage (11.2M parameters with one
    10-class linear classifier)."""
    return SENet((2, 2, 2, 2), size_multiplier)
