"""FastColorJitter: torchvision's v2.ColorJitter on PIL images with the same draws; the same pixels bit for bit
except for hue, which is within a few levels; used by the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from datasets.prepared.fast_color_jitter import (
    FastColorJitter,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
)
from datasets.prepared.transforms import build_v2_pipeline

JITTER_SETTINGS = [
    {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.1},  # the thesis's C-50 setting
    {"brightness": (0.0, 3.0), "contrast": (0.0, 3.0), "saturation": (0.0, 3.0), "hue": (-0.5, 0.5)},
    {"brightness": (0.5, 0.5), "contrast": (2.5, 2.5)},  # fixed factors, one below and one above 1
    {"brightness": 1.0, "contrast": 1.0},  # ranges starting at 0: fully black / fully gray images possible
    {"contrast": (0.9, 1.7), "hue": 0.5},
    {"brightness": (1.2, 1.9)},
]


def random_image(rng: np.random.Generator, mode: str) -> Image.Image:
    """A random-size image with smooth regions (natural-image-like) plus noise covering all byte values."""
    height, width = rng.integers(5, 40, size=2)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    ramp = np.linspace(0, 255, width)[None, :] * rng.uniform(0, 1, (height, 1))
    base = ramp[..., None] if mode == "RGB" else ramp
    noise = rng.integers(-60, 60, size=shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), mode)


def jitter_outputs(transform: v2.Transform, image: Image.Image, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    output = transform(image)
    assert isinstance(output, Image.Image) and output.mode == image.mode
    return np.asarray(output)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("settings", JITTER_SETTINGS)
def test_fast_color_jitter_pixels_equal_v2_color_jitter_for_the_same_seed(settings: dict, mode: str) -> None:
    """Bit for bit without hue (and for L images, which hue leaves alone); within rounding of the HSV round trip
    with hue on RGB images (factors up to 3 after the hue step amplify its rounding)."""
    reference, fast = v2.ColorJitter(**settings), FastColorJitter(**settings)
    rng = np.random.default_rng(len(str(settings)) + len(mode))
    exact = "hue" not in settings or mode == "L"
    for seed in range(60):
        image = random_image(rng, mode)
        ours, theirs = jitter_outputs(fast, image, seed), jitter_outputs(reference, image, seed)
        if exact:
            assert np.array_equal(ours, theirs), seed
        else:
            difference = np.abs(ours.astype(int) - theirs.astype(int))
            assert difference.mean() <= 1.5, seed


def test_hue_through_opencv_stays_within_a_few_levels_of_torchvision_and_turns_the_same_way() -> None:
    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(11)
    images = [random_image(rng, "RGB") for _ in range(8)]
    for factor in np.linspace(-0.5, 0.5, 21):
        for image in images:
            ours = np.asarray(adjust_hue(image, float(factor))).astype(int)
            theirs = np.asarray(F.adjust_hue(image, hue_factor=float(factor))).astype(int)
            difference = np.abs(ours - theirs)
            assert difference.max() <= 13 and difference.mean() <= 1.5, factor
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    for factor, expected in ((1 / 3, (0, 255, 0)), (-1 / 3, (0, 0, 255))):
        for result in (adjust_hue(red, factor), F.adjust_hue(red, hue_factor=factor)):
            assert np.abs(np.asarray(result)[0, 0].astype(int) - expected).max() <= 8
    gray = Image.new("L", (4, 4), 90)
    assert adjust_hue(gray, 0.3) is gray or np.array_equal(np.asarray(adjust_hue(gray, 0.3)), np.asarray(gray))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_brightness_contrast_saturation_equal_image_enhance_at_range_ends(mode: str) -> None:
    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(7)
    images = [random_image(rng, mode) for _ in range(5)]
    images.append(Image.new(mode, (9, 4), 255 if mode == "L" else (255, 0, 128)))  # a constant image: mean at the end
    halves = np.array([[10, 11]], dtype=np.uint8)  # an L mean of exactly 10.5: the rounding of the mean matters
    images.append(Image.fromarray(halves if mode == "L" else np.repeat(halves[..., None], 3, axis=2), mode))
    for factor in (0.0, 1e-6, 0.5, 0.999999, 1.0, 1.000001, 1.5, 2.0, 3.0, 10.0):
        for image in images:
            assert np.array_equal(np.asarray(adjust_brightness(image, factor)),
                                  np.asarray(F.adjust_brightness(image, brightness_factor=factor))), factor
            assert np.array_equal(np.asarray(adjust_contrast(image, factor)),
                                  np.asarray(F.adjust_contrast(image, contrast_factor=factor))), factor
            assert np.array_equal(np.asarray(adjust_saturation(image, factor)),
                                  np.asarray(F.adjust_saturation(image, saturation_factor=factor))), factor


def test_fast_color_jitter_draws_the_parent_parameters_in_the_same_order() -> None:
    settings = {"brightness": 0.3, "contrast": (0.5, 1.5), "saturation": 0.2, "hue": 0.1}
    torch.manual_seed(3)
    expected = v2.ColorJitter(**settings).make_params([])
    torch.manual_seed(3)
    drawn = FastColorJitter(**settings).make_params([])
    assert torch.equal(drawn.pop("fn_idx"), expected.pop("fn_idx"))
    assert drawn == expected


def test_fast_color_jitter_falls_back_to_the_parent_for_tensors_and_other_modes() -> None:
    settings = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.2}
    tensor = torch.randint(0, 256, (3, 12, 10), dtype=torch.uint8)
    torch.manual_seed(5)
    expected = v2.ColorJitter(**settings)(tensor)
    torch.manual_seed(5)
    assert torch.equal(FastColorJitter(**settings)(tensor), expected)
    rgba = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA")
    only_brightness = {"brightness": 0.5}
    assert np.array_equal(jitter_outputs(FastColorJitter(**only_brightness), rgba, 2),
                          jitter_outputs(v2.ColorJitter(**only_brightness), rgba, 2))


def test_pipeline_config_name_color_jitter_builds_fast_color_jitter() -> None:
    pipeline = build_v2_pipeline({"RandomHorizontalFlip": {"p": 0.5}, "ColorJitter": {"brightness": 0.2, "hue": 0.1}},
                                 "image_augmentations")
    jitter = pipeline.transforms[1]
    assert isinstance(jitter, FastColorJitter)
    assert jitter.brightness == (0.8, 1.2) and jitter.hue == (-0.1, 0.1) and jitter.contrast is None
