"""The architecture registry: the 2020 project's 26 names plus MobileNetV3, each mapped to a from-scratch constructor.

Every constructor takes `num_classes=` and `img_channels=` keywords (GhostNet's also `dropout=`, `out_channels=`
and `se_gate=`). torchvision supplies the architectures it has (weights=None: no pretrained weights); SqueezeNext,
HarDNet and GhostNet are written in `models/architectures/`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torchvision.models as tvm
from torch import nn

from models.architectures.ghostnet import GhostNet
from models.architectures.hardnet import hardnet
from models.architectures.squeezenext import squeezenext
from utils.configuration import unknown_name_message
from utils.errors import ConfigError

# Smallest square input (px) each family accepts, found by forward passes at every size from 1 px up (eval mode with
# batch 1, train mode with batch 2); tests/models/test_arch_dict.py checks that each minimum works and one pixel less
# fails.
# Every network here ends in global pooling, so only unpadded stride-2 layers set a floor: SqueezeNet's 7x7 (1.0) or
# 3x3 (1.1) stem and ceil-mode max-pools, SqueezeNext's 3x3 max-pool, HarDNet's 2x2 max-pools between blocks (its DS
# variants downsample with padded depthwise convs instead). The thesis's 227 px (SqueezeNext) and 224 px (GhostNet)
# were the papers' fixed-size designs; they are recommendations for accuracy, not limits of these implementations.
MIN_IMAGE_SIZE: dict[str, int] = {
    "sq_10": 21,
    "sq_11": 17,
    "sqnxt": 3,
    "mob": 1,
    "eff": 1,
    "ghost": 1,
    "hard": 29,
    "hard_dw": 1,
    "shuff": 1,
}


def architecture_family(name: str) -> str:
    """The key of `MIN_IMAGE_SIZE` that covers architecture `name`."""
    if name.startswith("sq_"):
        return name
    if name.startswith("hard_") and name.endswith("dw"):
        return "hard_dw"
    return name.split("_")[0]


def replace_first_conv(model: nn.Module, img_channels: int) -> nn.Module:
    """Swap the model's first Conv2d for an identical one reading `img_channels` channels (freshly initialised)."""
    if img_channels == 3:
        return model
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(
                    parent,
                    name,
                    nn.Conv2d(
                        img_channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        bias=child.bias is not None,
                    ),
                )
                return model
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt")


def _torchvision(builder: Callable[..., nn.Module], num_classes: int = 1000, img_channels: int = 3) -> nn.Module:
    return replace_first_conv(builder(weights=None, num_classes=num_classes), img_channels)


def _ghostnet(
    num_classes: int = 1000, img_channels: int = 3, dropout: float = 0.2, out_channels: int = 1280,
    se_gate: str = "clamp",
) -> nn.Module:
    return GhostNet(num_classes=num_classes, img_channels=img_channels, dropout=dropout, out_channels=out_channels,
                    se_gate=se_gate)


def get_architectures_dictionary() -> dict[str, Callable[..., nn.Module]]:
    """Map each architecture name to a constructor taking `num_classes=` and `img_channels=` keywords."""
    tv = {
        "sq_10": tvm.squeezenet1_0,
        "sq_11": tvm.squeezenet1_1,
        "mob_v2": tvm.mobilenet_v2,
        "mob_v3_small": tvm.mobilenet_v3_small,
        "mob_v3_large": tvm.mobilenet_v3_large,
        **{f"eff_b{i}": getattr(tvm, f"efficientnet_b{i}") for i in range(8)},
        "shuff_v2_x05": tvm.shufflenet_v2_x0_5,
        "shuff_v2_x10": tvm.shufflenet_v2_x1_0,
        "shuff_v2_x15": tvm.shufflenet_v2_x1_5,
        "shuff_v2_x20": tvm.shufflenet_v2_x2_0,
    }
    archs: dict[str, Callable[..., nn.Module]] = {name: partial(_torchvision, builder) for name, builder in tv.items()}
    for name, width in (("sqnxt_1", 1.0), ("sqnxt_1v5", 1.5), ("sqnxt_2", 2.0), ("sqnxt_2v5", 2.5)):
        archs[name] = partial(squeezenext, width=width)
    archs["ghost"] = _ghostnet
    for depth in (39, 68, 85):
        archs[f"hard_{depth}"] = partial(hardnet, depth, False)
        archs[f"hard_{depth}dw"] = partial(hardnet, depth, True)
    return archs


def check_architecture(name: str) -> None:
    """Raise ConfigError naming the valid architectures when `name` is not one of them."""
    names = list(get_architectures_dictionary())
    if name not in names:
        raise ConfigError(unknown_name_message("architecture", name, names, "in models/arch_dict.py"))


def build_architecture(
    name: str, num_classes: int, img_channels: int, dropout: float, output_channels: int, se_gate: str = "clamp"
) -> nn.Module:
    """Build architecture `name` from scratch; `dropout`, `output_channels` (thesis §3.3) and `se_gate` apply to
    GhostNet only."""
    check_architecture(name)
    constructor = get_architectures_dictionary()[name]
    if name == "ghost":
        return constructor(
            num_classes=num_classes, img_channels=img_channels, dropout=dropout, out_channels=output_channels,
            se_gate=se_gate,
        )
    return constructor(num_classes=num_classes, img_channels=img_channels)


def min_image_size(name: str) -> int:
    """The smallest square image size (px) architecture `name` accepts."""
    check_architecture(name)
    return MIN_IMAGE_SIZE[architecture_family(name)]
