"""The prepared Stanford Cars split as a torch Dataset of (uint8 image tensor, 0-based label).

The prepared-data contract (see `prepare_stanford_dataset.py`): `<data>/<split>/*.jpg` and `<data>/<split>_labels.csv`
with columns `image_fname,class,bbox_x1,bbox_y1,bbox_x2,bbox_y2,class_name`, classes 1-based.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datasets.prepared.image_cache import ImageCache, load_prefixed
from datasets.prepared.transforms import Bbox, PrefixSettings, to_uint8_tensor
from utils.errors import DataError

log = logging.getLogger("cars")

LABEL_COLUMNS = ["image_fname", "class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class_name"]
BBOX_COLUMNS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]


def read_labels(data_path: Path, split: str) -> pd.DataFrame:
    """Read `<split>_labels.csv`; errors name the file and what is wrong."""
    csv_path = data_path / f"{split}_labels.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path} not found: prepare the data first (python prepare_stanford_dataset.py)")
    try:
        labels = pd.read_csv(csv_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{csv_path} is not a valid labels CSV ({error})") from None
    missing = [column for column in LABEL_COLUMNS if column not in labels.columns]
    if missing:
        raise DataError(f"{csv_path} lacks column(s) {', '.join(missing)}")
    if labels.empty:
        raise DataError(f"{csv_path} has no rows")
    # The metrics skip their per-batch range checks (they would stall a GPU), so bad ids must stop here.
    classes = pd.to_numeric(labels["class"], errors="coerce")
    bad = labels["class"][classes.isna() | (classes < 1) | (classes % 1 != 0)]
    if not bad.empty:
        raise DataError(f"{csv_path}: column class must hold whole numbers >= 1 (1-based ids), found "
                        f"{bad.iloc[0]!r} in row {bad.index[0] + 2}")
    if labels[BBOX_COLUMNS].isna().all(axis=None):
        labels[BBOX_COLUMNS] = 0  # prepared from by-class folders, which have no boxes: see require_bboxes
    return labels


def require_bboxes(labels: pd.DataFrame, csv_path: Path) -> None:
    """crop_to_bboxes needs boxes; data prepared from by-class folders has none (all 0 after read_labels)."""
    if (labels[BBOX_COLUMNS] == 0).all(axis=None):
        raise DataError(f"crop_to_bboxes is true, but the prepared data has no bounding boxes ({csv_path} leaves "
                        "them empty: it was prepared from by-class folders); set crop_to_bboxes: false")


def check_folder_matches(labels: pd.DataFrame, image_dir: Path) -> None:
    """The labels CSV and the image folder must list the same files."""
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} not found: prepare the data first")
    on_disk = {path.name for path in image_dir.iterdir() if path.is_file()}
    listed = set(labels["image_fname"])
    missing, unlisted = sorted(listed - on_disk), sorted(on_disk - listed)
    if missing or unlisted:
        parts = []
        if missing:
            parts.append(f"{len(missing)} listed in the CSV but not in the folder (e.g. {', '.join(missing[:3])})")
        if unlisted:
            parts.append(f"{len(unlisted)} in the folder but not in the CSV (e.g. {', '.join(unlisted[:3])})")
        raise DataError(f"{image_dir} and its labels CSV are out of step: " + "; ".join(parts))


def hold_out(labels: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a label table into (kept, held out): round(fraction x images) of each class held out, drawn with
    `seed`, at least one image of each class kept. The same table, fraction and seed give the same split on every
    machine and in every process (DDP ranks, a resumed run)."""
    generator = np.random.default_rng(seed)
    held: list[int] = []
    for _, rows in sorted(labels.groupby("class").groups.items()):
        rows = np.sort(np.asarray(rows))
        count = min(int(round(fraction * len(rows))), len(rows) - 1)
        held.extend(generator.permutation(rows)[:count].tolist())
    mask = labels.index.isin(held)
    return labels[~mask].reset_index(drop=True), labels[mask].reset_index(drop=True)


class StanfordCarsDataset(Dataset):
    """One split. Items are (uint8 tensor (C, H, W) — float in [0, 1] when tensor augmentations run —, label).

    Args:
        data_path: the prepared data folder.
        split: "train" or "test".
        prefix: the deterministic preprocessing (size, grayscale, bbox crop).
        image_augment: random PIL-level augmentations (train only), or None.
        tensor_augment: random tensor-level augmentations (train only), or None.
        cache: the cached prefix pixels of this split, or None to decode every item from its file.
        labels: the split's label table, when already read.
        corrupt_hint: what the error for an image that does not decode tells the user to do.
    """

    def __init__(self, data_path: Path, split: str, prefix: PrefixSettings, image_augment: v2.Compose | None = None,
                 tensor_augment: v2.Compose | None = None, cache: ImageCache | None = None,
                 labels: pd.DataFrame | None = None,
                 corrupt_hint: str = "set skip_corrupt_images: true (with cache_images: true) to skip such files"
                 ) -> None:
        self.image_dir = Path(data_path) / split
        self.corrupt_hint = corrupt_hint
        labels = read_labels(Path(data_path), split) if labels is None else labels
        self.prefix = prefix
        self.image_augment = image_augment
        self.tensor_augment = tensor_augment
        self.cache = cache
        if cache is not None:
            # The cache holds one row per CSV row, in CSV order (it is keyed by the file list).
            keep = ~labels["image_fname"].isin(set(cache.corrupt)).to_numpy()
        else:
            keep = np.ones(len(labels), dtype=bool)
        self.rows = np.flatnonzero(keep)  # dataset index -> row of the labels / cache
        self.fnames: list[str] = list(labels["image_fname"])
        self.targets = torch.as_tensor(labels["class"].to_numpy() - 1, dtype=torch.long)
        self.bboxes: list[Bbox] = [tuple(int(v) for v in row) for row in labels[BBOX_COLUMNS].to_numpy()]
        self.skipped = len(labels) - len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def prefixed_array(self, index: int) -> np.ndarray:
        """The deterministic prefix of item `index` as (H, W, C) uint8, from the cache or the file."""
        row = self.rows[index]
        if self.cache is not None:
            return self.cache.pixels[row]
        path = self.image_dir / self.fnames[row]
        try:
            return load_prefixed(path, self.prefix, self.bboxes[row])
        except OSError as error:
            raise DataError(f"image {path} does not decode ({error}); {self.corrupt_hint}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        array = self.prefixed_array(index)
        if self.image_augment is not None:
            image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else np.asarray(array))
            tensor = to_uint8_tensor(self.image_augment(image))
        else:
            tensor = torch.from_numpy(np.array(array)).permute(2, 0, 1)  # copy: the cache is read-only
        if self.tensor_augment is not None:
            # Tensor augmentations see float pixels in [0, 1], as after ToTensor in the thesis's chain.
            tensor = self.tensor_augment(tensor.float().div_(255))
        return tensor, int(self.targets[self.rows[index]])
