"""torchvision's v2.ColorJitter with a faster PIL path: same random draws and order, the same pixels for brightness,
contrast and saturation, and OpenCV's HSV conversions for hue.

For a PIL image, torchvision runs Pillow's ImageEnhance: brightness and contrast are `Image.blend(degenerate, image,
factor)` with a constant degenerate image (black, or the rounded mean of the image's L channel), so each output byte
depends on its input byte alone. The 256-entry table of that map is computed by Pillow itself (the same blend applied
to a 0..255 ramp) and applied with `Image.point`: identical by construction, without building the constant images.
Contrast followed by brightness composes the two tables into one pass. Saturation mixes each band with the pixel's
L value (two inputs per byte): it keeps Pillow's blend but builds the gray image by merging the L band thrice instead
of converting L to RGB.

Hue is the one step that is not bit-identical. torchvision converts to Pillow's HSV, adds the shift to the hue byte
and converts back; Pillow's two conversions were most of the jitter's time (exact NumPy re-implementations and
16.7-million-entry lookup tables measured no faster). OpenCV's 8-bit full-range HSV conversions do the same round
trip about 4x faster, with the same shift on the same 0..255 hue circle; the pixels differ from torchvision's by
rounding (both round trips already move pixels by a few levels at a zero shift; between the two, at most 13 of 255
levels and about 1.2 on average in tests/datasets/prepared/test_fast_color_jitter.py's images, all shifts of
[-0.5, 0.5]).
"""

from __future__ import annotations

import operator
from typing import Any

import cv2
import numpy as np
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# The DataLoader's worker processes are the parallelism: OpenCV threads inside each would oversubscribe the cores
# (and make the per-core benchmark figures per several cores).
cv2.setNumThreads(1)

_RAMP = Image.frombytes("L", (256, 1), bytes(range(256)))
_LEVELS = range(256)
_FAST_MODES = ("L", "RGB")
_FACTORS = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")


def _blend_table(degenerate_value: int, factor: float) -> list[int]:
    """Pillow's blend of a constant `degenerate_value` with every byte value 0..255, as a 256-entry table."""
    return list(Image.blend(Image.new("L", _RAMP.size, degenerate_value), _RAMP, factor).tobytes())


def _contrast_mean(image: Image.Image) -> int:
    """The degenerate value of ImageEnhance.Contrast: the mean of the L channel, rounded as Pillow rounds it."""
    gray = image if image.mode == "L" else image.convert("L")
    histogram = gray.histogram()
    # ImageStat's exact integer sum and count, then the same int / int division, without its Python loop over bins.
    total, count = sum(map(operator.mul, _LEVELS, histogram)), sum(histogram)
    mean = total / count if count else 0
    return int(mean + 0.5)


def _apply_table(image: Image.Image, table: list[int]) -> Image.Image:
    return image.point(table * len(image.getbands()))


def adjust_saturation(image: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Color(image).enhance(factor), bit for bit, for mode L or RGB."""
    if image.mode == "L":
        return F.adjust_saturation(image, saturation_factor=factor)
    gray = image.convert("L")
    # Merging the L band thrice gives the same (l, l, l) pixels as ImageEnhance's L -> RGB conversion, faster.
    return Image.blend(Image.merge("RGB", (gray, gray, gray)), image, factor)


def adjust_brightness(image: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Brightness(image).enhance(factor), bit for bit, for mode L or RGB."""
    return _apply_table(image, _blend_table(0, factor))


def adjust_contrast(image: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Contrast(image).enhance(factor), bit for bit, for mode L or RGB."""
    return _apply_table(image, _blend_table(_contrast_mean(image), factor))


def adjust_hue(image: Image.Image, factor: float) -> Image.Image:
    """torchvision's adjust_hue for PIL images (the hue byte shifted by int(factor * 255), wrapping), through
    OpenCV's HSV conversions; mode L is returned unchanged, as torchvision does."""
    if image.mode != "RGB":
        return F.adjust_hue(image, hue_factor=factor)
    hsv = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.int32(factor * 255).astype(np.uint8)  # uint8 addition wraps around the hue circle
    return Image.fromarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL))


class FastColorJitter(v2.ColorJitter):
    """v2.ColorJitter (same arguments, same random draws, same order of the four adjustments) with a faster path for
    PIL images of mode L or RGB; other inputs (tensors, other modes) go through the parent unchanged."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, Image.Image) or inpt.mode not in _FAST_MODES:
            return super().transform(inpt, params)
        factors = [params[name] for name in _FACTORS]
        output = inpt
        # A per-byte table not yet applied to `output`: contrast followed by brightness costs one pass, not two.
        pending: list[int] | None = None
        for fn_id in params["fn_idx"].tolist():
            factor = factors[fn_id]
            if factor is None:
                continue
            if fn_id == 0:
                table = _blend_table(0, factor)
                pending = table if pending is None else [table[value] for value in pending]
                continue
            if pending is not None:
                output, pending = _apply_table(output, pending), None
            if fn_id == 1:
                pending = _blend_table(_contrast_mean(output), factor)
            elif fn_id == 2:
                output = adjust_saturation(output, factor)
            else:
                output = adjust_hue(output, factor)
        return output if pending is None else _apply_table(output, pending)
