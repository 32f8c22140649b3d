"""The thesis's image pipeline, split into its deterministic prefix and its random augmentations.

Order (thesis §3.3): RGB -> bbox crop (train, when set) -> Resize(image_size) -> Grayscale (when set) -> image
augmentations (train) -> to tensor -> tensor augmentations (train) -> Normalize (on the training device).
The prefix is the same every epoch, so it can be computed once and cached (`datasets/prepared/image_cache.py`).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datasets.prepared.fast_color_jitter import FastColorJitter
from utils.configuration import unknown_name_message
from utils.errors import ConfigError

Bbox = tuple[int, int, int, int]
# Config names built as a subclass that is faster on PIL images: the same random draws; brightness, contrast and
# saturation give the same pixels, hue goes through OpenCV and differs from torchvision's by a few levels (rounding).
FASTER_TRANSFORMS: dict[str, type[v2.Transform]] = {"ColorJitter": FastColorJitter}


@dataclass(frozen=True)
class PrefixSettings:
    """Everything that decides the deterministic part of an image's preprocessing."""

    image_size: tuple[int, int]
    grayscale: bool
    crop_to_bbox: bool
    erase_background: bool

    def key(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


def apply_prefix(image: Image.Image, settings: PrefixSettings, bbox: Bbox | None = None) -> Image.Image:
    """Decoded image -> RGB -> optional crop (1-based inclusive bbox) -> Resize -> optional Grayscale."""
    image = image.convert("RGB")
    if settings.crop_to_bbox and bbox is not None:
        x1, y1, x2, y2 = bbox
        # Raw bboxes are 1-based and inclusive; PIL boxes are 0-based with an exclusive end.
        crop = image.crop((max(x1 - 1, 0), max(y1 - 1, 0), min(x2, image.width), min(y2, image.height)))
        if settings.erase_background:
            canvas = Image.new("RGB", image.size, (255, 255, 255))
            canvas.paste(crop, ((image.width - crop.width) // 2, (image.height - crop.height) // 2))
            crop = canvas
        image = crop
    image = F.resize(image, list(settings.image_size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    if settings.grayscale:
        image = image.convert("L")
    return image


def _v2_transform_names() -> list[str]:
    return sorted(
        name for name, obj in vars(v2).items()
        if inspect.isclass(obj) and issubclass(obj, v2.Transform) and not name.startswith("_")
        and name not in {"Transform", "Compose", "RandomApply", "RandomChoice", "RandomOrder"}
    )


def build_v2_pipeline(augmentations: dict[str, dict | None] | None, config_key: str) -> v2.Compose | None:
    """The config's `{TransformName: params}` mapping as a v2.Compose, in order; unknown names and bad params raise."""
    if not augmentations:
        return None
    valid = _v2_transform_names()
    steps = []
    for name, params in augmentations.items():
        if name not in valid:
            raise ConfigError(
                unknown_name_message("transform", name, valid, f"in torchvision.transforms.v2 (key {config_key})")
            )
        try:
            steps.append(FASTER_TRANSFORMS.get(name, getattr(v2, name))(**(params or {})))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{config_key}: {name}({params}) is invalid: {error}") from None
    return v2.Compose(steps)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 tensor (C, H, W); grayscale gives one channel."""
    return F.pil_to_tensor(image)
