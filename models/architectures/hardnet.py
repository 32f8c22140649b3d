"""HarDNet (Chao et al., "HarDNet: A Low Memory Traffic Network", ICCV 2019): harmonic densely connected networks.

In a harmonic dense block, layer k takes the concatenated outputs of layers k - 2^n for every n with 2^n dividing k
(layer 0 is the block input), and has growth_rate * m^n channels for the largest such n (rounded to an even count),
so the layers that many others read from are the wide ones. The block outputs the odd layers and the last one.
Each block is followed by a 1x1 transition conv and, where the paper downsamples, a 2x2 stride-2 pooling.

The depthwise-separable ("DS") variants replace each 3x3 conv in the blocks by a 1x1 conv plus a 3x3 depthwise conv,
the stem's second 3x3 conv by a 1x1 conv, and the max-pools by stride-2 depthwise convs, as in the paper's
HarDNet-39DS / 68DS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HarDNetSpec:
    """One row of the paper's Table: stem widths, multiplier m and per-block (growth, layers, out channels, pool)."""

    stem: tuple[int, int]
    multiplier: float
    blocks: tuple[tuple[int, int, int, bool], ...]
    dropout: float


SPECS: dict[int, HarDNetSpec] = {
    39: HarDNetSpec(
        (24, 48), 1.6, ((16, 4, 96, True), (20, 16, 320, True), (64, 8, 640, True), (160, 4, 1024, False)), 0.05
    ),
    68: HarDNetSpec(
        (32, 64),
        1.7,
        ((14, 8, 128, True), (16, 16, 256, False), (20, 16, 320, True), (40, 16, 640, True), (160, 4, 1024, False)),
        0.1,
    ),
    85: HarDNetSpec(
        (48, 96),
        1.7,
        (
            (24, 8, 192, True),
            (24, 16, 256, False),
            (28, 16, 320, True),
            (36, 16, 480, False),
            (48, 16, 720, True),
            (256, 4, 1280, False),
        ),
        0.2,
    ),
}


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def dw_conv_bn(channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 depthwise conv -> BatchNorm (linear, as the second half of a separable conv)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False), nn.BatchNorm2d(channels)
    )


def block_layer(in_ch: int, out_ch: int, depthwise: bool) -> nn.Module:
    """A harmonic block's layer: 3x3 conv, or 1x1 conv + 3x3 depthwise conv in the DS variants."""
    if depthwise:
        return nn.Sequential(conv_bn_relu(in_ch, out_ch, 1), dw_conv_bn(out_ch))
    return conv_bn_relu(in_ch, out_ch, 3)


def harmonic_links(layer: int) -> list[int]:
    """Indices of the earlier layers that layer `layer` (1-based; 0 = block input) reads: layer - 2^n, 2^n | layer."""
    links, step = [], 1
    while step <= layer:
        if layer % step == 0:
            links.append(layer - step)
        step *= 2
    return links


class HarmonicDenseBlock(nn.Module):
    """`num_layers` layers wired by `harmonic_links`; outputs the concatenation of the odd layers and the last."""

    def __init__(self, in_ch: int, growth: int, multiplier: float, num_layers: int, depthwise: bool) -> None:
        super().__init__()
        widths = [in_ch]
        self.links: list[list[int]] = []
        layers = []
        for k in range(1, num_layers + 1):
            links = harmonic_links(k)
            width = growth * multiplier ** (len(links) - 1)
            width = int(int(width + 1) / 2) * 2  # round to an even channel count, as the paper's models do
            layers.append(block_layer(sum(widths[i] for i in links), width, depthwise))
            self.links.append(links)
            widths.append(width)
        self.layers = nn.ModuleList(layers)
        self.outputs = [k for k in range(1, num_layers + 1) if k % 2 == 1 or k == num_layers]
        self.out_channels = sum(widths[k] for k in self.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [x]
        for layer, links in zip(self.layers, self.links):
            source = maps[links[0]] if len(links) == 1 else torch.cat([maps[i] for i in links], dim=1)
            maps.append(layer(source))
        return torch.cat([maps[k] for k in self.outputs], dim=1)


class HarDNet(nn.Module):
    """HarDNet-39/68/85, optionally depthwise-separable, with global average pooling and a linear classifier.

    Args:
        depth: 39, 68 or 85.
        depthwise: the paper's DS variant.
        num_classes: number of output classes.
        img_channels: input channels (1 or 3).
    """

    def __init__(self, depth: int = 68, depthwise: bool = False, num_classes: int = 1000, img_channels: int = 3):
        super().__init__()
        spec = SPECS[depth]
        first, second = spec.stem
        # The DS variants' second stem conv is 1x1: with a 3x3 one, 39DS and 68DS would cost ~0.55 and ~0.98 GMACs
        # instead of the paper's 0.44 and 0.8.
        layers: list[nn.Module] = [
            conv_bn_relu(img_channels, first, 3, stride=2),
            conv_bn_relu(first, second, 1 if depthwise else 3),
        ]
        layers.append(dw_conv_bn(second, stride=2) if depthwise else nn.MaxPool2d(3, stride=2, padding=1))
        channels = second
        for growth, num_layers, out_ch, pool in spec.blocks:
            block = HarmonicDenseBlock(channels, growth, spec.multiplier, num_layers, depthwise)
            layers += [block, conv_bn_relu(block.out_channels, out_ch, 1)]
            if pool:
                layers.append(dw_conv_bn(out_ch, stride=2) if depthwise else nn.MaxPool2d(2, stride=2))
            channels = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(spec.dropout), nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def hardnet(depth: int, depthwise: bool = False, num_classes: int = 1000, img_channels: int = 3) -> HarDNet:
    """Build HarDNet-`depth` (39, 68 or 85), the DS variant when `depthwise`."""
    return HarDNet(depth=depth, depthwise=depthwise, num_classes=num_classes, img_channels=img_channels)
