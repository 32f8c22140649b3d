"""compute_normalization: the dataset's per-channel mean and std after the training resize, in the config's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from datasets.prepared.normalization import compute_normalization, format_for_config
from datasets.prepared.transforms import PrefixSettings, apply_prefix
from tests.conftest import COLUMNS
from utils.configuration import validate
from utils.errors import DataError

SIZE = (24, 32)


def resized_pixels(data: Path, grayscale: bool) -> np.ndarray:
    """All pixels of the train split after the training prefix (RGB -> Resize -> Grayscale), as (N, C) in [0, 1]."""
    settings = PrefixSettings(SIZE, grayscale, False, False)
    arrays = []
    for name in pd.read_csv(data / "train_labels.csv")["image_fname"]:
        with Image.open(data / "train" / name) as image:
            array = np.asarray(apply_prefix(image, settings), dtype=np.float64) / 255
        arrays.append(array.reshape(-1, settings.channels))
    return np.concatenate(arrays)


@pytest.mark.parametrize("grayscale", [False, True])
def test_values_equal_numpy_over_all_resized_pixels(prepared: Path, grayscale: bool) -> None:
    result = compute_normalization(prepared, SIZE, grayscale)
    pixels = resized_pixels(prepared, grayscale)
    channels = 1 if grayscale else 3
    assert len(result["mean"]) == len(result["std"]) == channels
    np.testing.assert_allclose(result["mean"], pixels.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(result["std"], pixels.std(axis=0), rtol=1e-10)


def write_flat_images(root: Path, levels: list[int], size: int = 16) -> Path:
    """A prepared train split of uniform images, one grey level each, a pixel-sized speck in one corner."""
    (root / "train").mkdir(parents=True)
    rows = []
    for index, level in enumerate(levels):
        name = f"{index + 1:05d}.png"
        Image.new("RGB", (size, size), (level, level, level)).save(root / "train" / name)
        rows.append([name, 1, 1, 1, size, size, "Car 1"])
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "train_labels.csv", index=False)
    return root


def test_std_is_the_datasets_not_the_mean_of_per_image_stds(tmp_path: Path) -> None:
    # Each image is uniform, so every per-image std is 0, while the dataset's pixels spread from black to white.
    data = write_flat_images(tmp_path / "flat", [0, 255, 0, 255])
    result = compute_normalization(data, (16, 16), grayscale=False)
    np.testing.assert_allclose(result["mean"], [0.5, 0.5, 0.5], atol=1e-9)
    np.testing.assert_allclose(result["std"], [0.5, 0.5, 0.5], atol=1e-9)
    gray = compute_normalization(data, (16, 16), grayscale=True)
    np.testing.assert_allclose(gray["std"], [0.5], atol=1e-9)


def test_same_resize_as_training_so_values_change_with_image_size(tmp_path: Path) -> None:
    # A sharp black/white edge: downscaling blends it, which lowers the std; the function must see the resized image.
    (tmp_path / "edge" / "train").mkdir(parents=True)
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, 31:] = 255
    Image.fromarray(pixels).save(tmp_path / "edge" / "train" / "00001.png")
    pd.DataFrame([["00001.png", 1, 1, 1, 64, 64, "Car 1"]], columns=COLUMNS).to_csv(
        tmp_path / "edge" / "train_labels.csv", index=False)
    full = compute_normalization(tmp_path / "edge", (64, 64), grayscale=False)
    small = compute_normalization(tmp_path / "edge", (3, 3), grayscale=False)
    assert small["std"][0] < full["std"][0] - 0.01


def test_undecodable_image_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    data = write_flat_images(tmp_path / "flat", [10, 20])
    (data / "train" / "00002.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="00002.png"):
        compute_normalization(data, (8, 8), grayscale=False)


def test_format_for_config_is_valid_config_yaml_with_four_decimals() -> None:
    rgb = {"mean": [0.47071, 0.46019, 0.455], "std": [0.25944, 0.25851, 0.26349]}
    gray = {"mean": [0.46274], "std": [0.25449]}
    text = format_for_config(rgb, gray)
    assert "  mean: [0.4707, 0.4602, 0.4550]" in text
    assert "  std: [0.2545]" in text
    parsed = yaml.safe_load(text)
    config = validate(parsed)
    assert config["normalization_params_rgb"]["std"] == [0.2594, 0.2585, 0.2635]
    assert config["normalization_params_grayscale"]["mean"] == [0.4627]
