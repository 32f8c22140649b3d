"""GhostNet (Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020) with the thesis's classifier head.

The backbone follows the paper's GhostNet 1.0x: a 3x3 stride-2 stem, sixteen Ghost bottlenecks (thesis §2.2 table;
depthwise kernel sizes 3 or 5 as in MobileNetV3-Large, whose layout the paper reuses) and a 1x1 conv to 960 channels.
The head is the 2020 project's (thesis §4.2.4, §4.2.8): global average pool, Linear(960 -> out_channels, no bias),
BatchNorm1d, ReLU, Dropout(dropout), Linear(out_channels -> num_classes). With the default out_channels=1280 and
1000 classes the model has 5,183,016 parameters; see documentation/ghostnet.md.

Two details follow the network the 2020 runs trained rather than the paper: the squeeze-excite gate clamps to [0, 1]
(`se_gate="clamp"`; the paper's hard-sigmoid is `se_gate="hard_sigmoid"`), and the weights start as 2020's did
(`init_weights`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# One row per Ghost bottleneck: (depthwise kernel, expansion channels, output channels, squeeze-excite, stride).
BOTTLENECKS: tuple[tuple[int, int, int, bool, int], ...] = (
    (3, 16, 16, False, 1),
    (3, 48, 24, False, 2),
    (3, 72, 24, False, 1),
    (5, 72, 40, True, 2),
    (5, 120, 40, True, 1),
    (3, 240, 80, False, 2),
    (3, 200, 80, False, 1),
    (3, 184, 80, False, 1),
    (3, 184, 80, False, 1),
    (3, 480, 112, True, 1),
    (3, 672, 112, True, 1),
    (5, 672, 160, True, 2),
    (5, 960, 160, False, 1),
    (5, 960, 160, True, 1),
    (5, 960, 160, False, 1),
    (5, 960, 160, True, 1),
)
STEM_CHANNELS = 16
FEATURE_CHANNELS = 960

# The squeeze-excite gate applied to the expand layer's output. The 2020 code (after an early public GhostNet port)
# clamped it: a channel whose gate input is negative is closed. The paper's hard-sigmoid, relu6(x + 3) / 6, opens
# it halfway at 0.
SE_GATES = {
    "clamp": lambda gate: torch.clamp(gate, 0, 1),
    "hard_sigmoid": F.hardsigmoid,
}


def make_divisible(value: float, divisor: int = 4) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> optional ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class GhostModule(nn.Module):
    """A 1x1 conv makes ceil(out/ratio) intrinsic maps; a cheap depthwise conv makes the 'ghost' maps from them."""

    def __init__(self, in_ch: int, out_ch: int, ratio: int = 2, dw_kernel: int = 3, relu: bool = True) -> None:
        super().__init__()
        self.out_ch = out_ch
        intrinsic = math.ceil(out_ch / ratio)
        self.primary = conv_bn(in_ch, intrinsic, 1, relu=relu)
        self.cheap = conv_bn(intrinsic, intrinsic * (ratio - 1), dw_kernel, groups=intrinsic, relu=relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary(x)
        # ceil() above may give one channel too many for odd out_ch; trim it.
        return torch.cat([intrinsic, self.cheap(intrinsic)], dim=1)[:, : self.out_ch]


class SqueezeExcite(nn.Module):
    """Channel attention as in MobileNetV3: pool, reduce 4x, expand, gate (`gate`: a name of SE_GATES).

    The reduced width is a plain quarter (72 -> 18, 120 -> 30). Rounding it up to a multiple of 4 (72 -> 20,
    120 -> 32), as some GhostNet ports do, adds 772 parameters and no longer matches the 2020 runs' logged counts.
    """

    def __init__(self, channels: int, reduction: int = 4, gate: str = "clamp") -> None:
        super().__init__()
        if gate not in SE_GATES:
            raise ValueError(f"se_gate {gate!r} is not one of {', '.join(SE_GATES)}")
        squeezed = max(1, channels // reduction)
        self.gate = gate
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = self.expand(F.relu(self.reduce(gate), inplace=True))
        return x * SE_GATES[self.gate](gate)


class GhostBottleneck(nn.Module):
    """Ghost module (expand, ReLU) -> [depthwise stride-2 conv] -> [SE] -> Ghost module (project, linear) + shortcut.

    The shortcut is the identity when shape is kept; otherwise a depthwise conv (with the block's stride) and a 1x1
    conv bring the input to the output's shape, as in the paper's reference design.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, dw_kernel: int = 3, stride: int = 1, se: bool = False,
                 se_gate: str = "clamp"):
        super().__init__()
        self.expand = GhostModule(in_ch, mid_ch, relu=True)
        self.downsample = conv_bn(mid_ch, mid_ch, dw_kernel, stride, groups=mid_ch, relu=False) if stride > 1 else None
        self.se = SqueezeExcite(mid_ch, gate=se_gate) if se else None
        self.project = GhostModule(mid_ch, out_ch, relu=False)
        if in_ch == out_ch and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                conv_bn(in_ch, in_ch, dw_kernel, stride, groups=in_ch, relu=False),
                conv_bn(in_ch, out_ch, 1, relu=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x)
        if self.downsample is not None:
            out = self.downsample(out)
        if self.se is not None:
            out = self.se(out)
        return self.project(out) + self.shortcut(x)


class GhostNet(nn.Module):
    """GhostNet backbone with the thesis's head; any input channel count, any input size (the pooling is global).

    Args:
        num_classes: size of the final linear layer's output.
        img_channels: input channels (1 for grayscale, 3 for RGB); only the stem conv depends on it.
        dropout: dropout probability before the final linear layer (the paper's 0.2 by default).
        out_channels: width of the feature vector fed to the classifier (the paper's 1280; the thesis's best runs 320).
        width_mult: multiplies every channel count of the backbone (GhostNet 1.0x at 1.0).
        se_gate: the squeeze-excite gate, "clamp" (the 2020 runs') or "hard_sigmoid" (the paper's).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        img_channels: int = 3,
        dropout: float = 0.2,
        out_channels: int = 1280,
        width_mult: float = 1.0,
        se_gate: str = "clamp",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.img_channels = img_channels
        self.dropout = dropout
        self.out_channels = out_channels

        channels = make_divisible(STEM_CHANNELS * width_mult)
        blocks: list[nn.Module] = [conv_bn(img_channels, channels, 3, stride=2)]
        for kernel, expansion, out, se, stride in BOTTLENECKS:
            out_ch = make_divisible(out * width_mult)
            mid_ch = make_divisible(expansion * width_mult)
            blocks.append(GhostBottleneck(channels, mid_ch, out_ch, kernel, stride, se, se_gate))
            channels = out_ch
        features = make_divisible(FEATURE_CHANNELS * width_mult)
        blocks.append(conv_bn(channels, features, 1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(features, out_channels, bias=False),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(out_channels, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def init_weights(model: nn.Module) -> None:
    """The 2020 runs' initialisation: every Conv2d of the backbone Kaiming-normal with fan_out (PyTorch's fan_out of a
    conv weight: out_channels x kernel height x kernel width, not divided by groups) and the ReLU gain, every
    BatchNorm2d weight 1 and bias 0. The squeeze-excite layers (Linear layers in 2020; a 1x1 Conv2d with bias has
    the same default distribution) and the head keep PyTorch's defaults."""
    squeeze_excite = {id(conv) for module in model.modules() if isinstance(module, SqueezeExcite)
                      for conv in (module.reduce, module.expand)}
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and id(module) not in squeeze_excite:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
