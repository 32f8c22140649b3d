"""An exact cache of the deterministic preprocessing prefix: one uint8 `.npy` memmap per split.

The key covers every input that changes the cached pixels (the prefix settings, the split, each image's name, size,
modification time and bbox), so a changed setting or image gives a new cache file instead of stale pixels. The file is
built by a thread pool (Pillow releases the GIL while decoding and resizing), written under a temporary name and
renamed when complete; a file lock makes concurrent processes (DDP ranks, parallel runs) build it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image
from tqdm import tqdm

from datasets.prepared.transforms import Bbox, PrefixSettings, apply_prefix
from utils.errors import DataError
from utils.files import write_text_atomic

log = logging.getLogger("cars")

CACHE_FORMAT_VERSION = 1


def load_prefixed(path: Path, settings: PrefixSettings, bbox: Bbox | None) -> np.ndarray:
    """Decode one image file and apply the prefix; (H, W, C) uint8. Raises OSError for undecodable files."""
    with Image.open(path) as image:
        image.load()
        array = np.asarray(apply_prefix(image, settings, bbox))
    return array[:, :, None] if array.ndim == 2 else array


@dataclass
class ImageCache:
    """The cached pixels of one split, in the order of `fnames`; `corrupt` lists files that did not decode."""

    path: Path
    fnames: list[str]
    corrupt: list[str]
    pixels: np.ndarray  # (N, H, W, C) uint8, memory-mapped read-only

    def __len__(self) -> int:
        return len(self.fnames)


def cache_key(split: str, image_dir: Path, fnames: Sequence[str], bboxes: Sequence[Bbox] | None,
              settings: PrefixSettings) -> str:
    """A hash of everything that determines the cached pixels."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_FORMAT_VERSION, "split": split, **settings.key()}).encode())
    for index, name in enumerate(fnames):
        stat = (image_dir / name).stat()
        box = bboxes[index] if bboxes is not None else None
        digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}|{box}\n".encode())
    return digest.hexdigest()[:20]


def open_or_build(cache_dir: Path, split: str, image_dir: Path, fnames: Sequence[str],
                  bboxes: Sequence[Bbox] | None, settings: PrefixSettings, workers: int,
                  skip_corrupt: bool = False) -> ImageCache:
    """Return the cache for these inputs, building it first when it does not exist yet."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(split, image_dir, fnames, bboxes if settings.crop_to_bbox else None, settings)
    data_file = cache_dir / f"{split}-{key}.npy"
    meta_file = data_file.with_suffix(".json")
    with FileLock(str(data_file) + ".lock"):
        if not meta_file.exists():
            _build(data_file, meta_file, image_dir, fnames, bboxes, settings, workers, skip_corrupt)
        else:
            log.info("image cache: using %s", data_file)
    meta = json.loads(meta_file.read_text())
    if meta["corrupt"] and not skip_corrupt:
        raise DataError(f"{len(meta['corrupt'])} image(s) in {image_dir} do not decode, e.g. "
                        f"{meta['corrupt'][0]} (set skip_corrupt_images: true to skip them)")
    return ImageCache(data_file, list(fnames), meta["corrupt"], np.load(data_file, mmap_mode="r"))


def _build(data_file: Path, meta_file: Path, image_dir: Path, fnames: Sequence[str], bboxes: Sequence[Bbox] | None,
           settings: PrefixSettings, workers: int, skip_corrupt: bool) -> None:
    height, width = settings.image_size
    tmp_file = data_file.with_name(f"{data_file.stem}.tmp-{os.getpid()}.npy")
    pixels = np.lib.format.open_memmap(tmp_file, mode="w+", dtype=np.uint8,
                                       shape=(len(fnames), height, width, settings.channels))
    corrupt: list[str] = []

    def fill(index: int, out: np.ndarray = pixels) -> None:
        box = bboxes[index] if bboxes is not None else None
        try:
            out[index] = load_prefixed(image_dir / fnames[index], settings, box)
        except OSError as error:
            if not skip_corrupt:
                raise DataError(f"image {image_dir / fnames[index]} does not decode ({error})") from None
            corrupt.append(fnames[index])

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(tqdm(pool.map(fill, range(len(fnames))), total=len(fnames), unit="img",
                      desc=f"caching {data_file.name.split('-')[0]} images", leave=False))
        pixels.flush()
        del pixels
        os.replace(tmp_file, data_file)
    except BaseException:
        tmp_file.unlink(missing_ok=True)
        raise
    for name in corrupt:
        log.warning("skipping corrupt image %s (skip_corrupt_images: true)", image_dir / name)
    # The metadata is written last: its presence marks a complete cache.
    write_text_atomic(meta_file, json.dumps({"fnames": len(fnames), "corrupt": sorted(corrupt), **settings.key()}))
    size_mb = data_file.stat().st_size / 2**20
    log.info("image cache: built %s (%d images, %.0f MB)", data_file, len(fnames), size_mb)
