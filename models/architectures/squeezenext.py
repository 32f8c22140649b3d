"""SqueezeNext-23 (Gholami et al., "SqueezeNext: Hardware-Aware Neural Network Design", CVPRW 2018).

The paper's 23-layer design: a 7x7 stride-2 conv with 64 filters and a 3x3 stride-2 max-pool, four stages of
SqNxt blocks ([6, 6, 8, 1] blocks of 32, 64, 128 and 256 channels, the last three starting with a stride of 2),
a 1x1 conv to 128 channels, global average pooling and a fully connected layer. Width variants multiply every
channel count (1.0-, 1.5-, 2.0-SqNxt-23 in the paper; 2.5 continues the series).

The paper's network takes 227x227 inputs (valid padding and a fixed-size final pool); ours pools globally, so it
accepts much smaller images (see `models.arch_dict.MIN_IMAGE_SIZE`).
"""

from __future__ import annotations

import torch
from torch import nn

STAGE_BLOCKS = (6, 6, 8, 1)
STAGE_CHANNELS = (32, 64, 128, 256)
STEM_CHANNELS = 64
HEAD_CHANNELS = 128


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU with 'same' padding for odd kernels."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, (kh, kw), stride, (kh // 2, kw // 2), bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SqueezeNextBlock(nn.Module):
    """Two-stage squeeze (1x1 to C/2, 1x1 to C/4), separable 3x1 and 1x3 convs (to C/2), 1x1 expansion to C, plus skip.

    C is the block's output width. The skip is the identity when the shape is kept, else a strided 1x1 conv.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        half, quarter = max(1, out_ch // 2), max(1, out_ch // 4)
        self.body = nn.Sequential(
            conv_bn_relu(in_ch, half, 1, stride),
            conv_bn_relu(half, quarter, 1),
            conv_bn_relu(quarter, half, (3, 1)),
            conv_bn_relu(half, half, (1, 3)),
            nn.Conv2d(half, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        if in_ch == out_ch and stride == 1:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.skip(x))


class SqueezeNext(nn.Module):
    """SqueezeNext-23 at a given width multiplier.

    Args:
        num_classes: number of output classes.
        img_channels: input channels (1 or 3).
        width: channel multiplier (1.0, 1.5, 2.0, 2.5).
    """

    def __init__(self, num_classes: int = 1000, img_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        channels = int(STEM_CHANNELS * width)
        layers: list[nn.Module] = [
            conv_bn_relu(img_channels, channels, 7, stride=2),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
        ]
        for stage, (blocks, stage_channels) in enumerate(zip(STAGE_BLOCKS, STAGE_CHANNELS)):
            out_ch = int(stage_channels * width)
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(SqueezeNextBlock(channels, out_ch, stride))
                channels = out_ch
        layers.append(conv_bn_relu(channels, int(HEAD_CHANNELS * width), 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(int(HEAD_CHANNELS * width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def squeezenext(num_classes: int = 1000, img_channels: int = 3, width: float = 1.0) -> SqueezeNext:
    """Build a width-`width` SqueezeNext-23."""
    return SqueezeNext(num_classes=num_classes, img_channels=img_channels, width=width)
