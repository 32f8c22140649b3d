"""Per-channel mean and std of a prepared split, for the config's `normalization_params_*` keys.

The values are the dataset's: mean and standard deviation over every pixel of every image of the split, after the
same Resize (and Grayscale) that training applies. The 2020 notebook averaged each image's own standard deviation
instead, which leaves out the spread *between* images' means and so comes out smaller (documentation/normalization.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from datasets.prepared.stanford_data import read_labels
from datasets.prepared.transforms import PrefixSettings, apply_prefix
from utils.errors import DataError


def compute_normalization(data_path: Path, image_size: tuple[int, int], grayscale: bool,
                          split: str = "train") -> dict[str, list[float]]:
    """Mean and (population) std per channel over all pixels of `split`, scaled to [0, 1] as ToTensor does.

    Args:
        data_path: the prepared data folder (`<split>/` and `<split>_labels.csv`).
        image_size: [height, width] the images are resized to, as in training.
        grayscale: convert to one channel after resizing (the values for `normalization_params_grayscale`).
        split: which split's images to read; the thesis used the training split.

    Returns:
        {"mean": [...], "std": [...]} with 3 values per list, or 1 when `grayscale`.
    """
    data_path = Path(data_path)
    labels = read_labels(data_path, split)
    # Bbox crops are a training-time choice; the coefficients describe the whole resized images.
    settings = PrefixSettings(tuple(image_size), grayscale, False, False)
    channels = settings.channels
    # Chan et al.'s pairwise merge of (count, mean, sum of squared deviations): one pass, float64, and no
    # cancellation as the sum-of-squares shortcut would risk over hundreds of millions of pixels.
    count = 0
    mean = np.zeros(channels, dtype=np.float64)
    m2 = np.zeros(channels, dtype=np.float64)
    for name in tqdm(labels["image_fname"], desc=f"normalization ({split}, {'grayscale' if grayscale else 'RGB'})",
                     unit="img"):
        path = data_path / split / name
        try:
            with Image.open(path) as image:
                prefixed = apply_prefix(image, settings)
        except OSError as error:
            raise DataError(f"image {path} does not decode ({error}); re-run the data preparation") from None
        pixels = np.asarray(prefixed, dtype=np.float64).reshape(-1, channels) / 255.0
        n = pixels.shape[0]
        image_mean = pixels.mean(axis=0)
        image_m2 = ((pixels - image_mean) ** 2).sum(axis=0)
        delta = image_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + image_m2 + delta ** 2 * (count * n / total)
        count = total
    std = np.sqrt(m2 / count)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def format_for_config(rgb: dict[str, list[float]], gray: dict[str, list[float]]) -> str:
    """The two results as the config's YAML lines (4 decimals), ready to paste into config.yml."""

    def values(numbers: list[float]) -> str:
        return "[" + ", ".join(f"{v:.4f}" for v in numbers) + "]"

    lines = []
    for key, params in (("normalization_params_rgb", rgb), ("normalization_params_grayscale", gray)):
        lines += [f"{key}:", f"  mean: {values(params['mean'])}", f"  std: {values(params['std'])}"]
    return "\n".join(lines) + "\n"
