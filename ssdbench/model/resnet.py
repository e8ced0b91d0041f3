"""ResNet trunk of the SSD-ResNet family (benchmark.md §1).

A ResNet of basic blocks cut after ``layer3`` (conv4_x), with the first block of ``layer3`` at
stride 1 instead of 2 (its 3x3 ``conv1`` and its 1x1 ``downsample`` conv), so the trunk has an
output stride of 8: 300 -> 38, 1200 -> 150, 128 -> 16. Parameter names follow torchvision's
``resnet34`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer3.0.downsample.0``), so the
ImageNet file ``resnet34-333f7ec4.pth`` loads by key (``layer4`` and ``fc`` are not built).

The MLPerf references build the same network by slicing torchvision's resnet34 and then setting
every ``layer3`` block's ``conv1`` and ``downsample.0`` stride to 1; only block 0 had stride 2, so
the result is the one built here. No torchvision import is needed.
"""

from __future__ import annotations

import torch
from torch import nn

from ssdbench.model.specs import ModelSpec


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (BatchNorm follows)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convs with BN and a residual connection.

    (N, in_ch, H, W) -> (N, out_ch, H / stride, W / stride). A 1x1 conv + BN ``downsample``
    projects the shortcut when the stride or the width changes.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, project: bool = False):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if project or stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def make_layer(in_ch: int, out_ch: int, blocks: int, stride: int, project: bool = False) -> nn.Sequential:
    """A ResNet stage: the first block changes stride/width, the others keep them."""
    layers = [BasicBlock(in_ch, out_ch, stride, project)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetTrunk(nn.Module):
    """Stem + layer1..layer3 of a basic-block ResNet; layer3 at stride 1 (benchmark.md §1).

    Input (N, 3, S, S) normalised RGB -> output (N, widths[3], S/8, S/8) (ceil at each stride-2
    step: 300 -> 150 -> 75 -> 38).
    """

    def __init__(self, widths: tuple[int, int, int, int] = (64, 64, 128, 256),
                 blocks: tuple[int, int, int] = (3, 4, 6)):
        super().__init__()
        stem, w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = make_layer(stem, w1, blocks[0], stride=1)
        self.layer2 = make_layer(w1, w2, blocks[1], stride=2)
        # SSD change: stride 1 instead of torchvision's 2. The projection stays (as in the
        # references, where it exists because torchvision built it for stride 2).
        self.layer3 = make_layer(w2, w3, blocks[2], stride=1, project=True)
        self.out_channels = w3
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet init; overwritten when ImageNet weights are loaded (benchmark.md §6).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


def build_trunk(spec: ModelSpec) -> ResNetTrunk:
    """The trunk of `spec` (widths and blocks per stage from the spec)."""
    return ResNetTrunk(tuple(spec.trunk_widths), tuple(spec.trunk_blocks))
