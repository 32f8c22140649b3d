"""Helpers of the preparation tests: tiny synthetic downloads, extracting them as users do, rewriting archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from datasets.raw.synthetic import make_synthetic
from tests.helpers import ROOT

# the real annotation files, where a checkout has them beside it (never copied into the project)
REFERENCE = next((p for p in (ROOT.parent / "shared" / "reference" / "stanford_cars_annotations",
                              Path("/work/shared/reference/stanford_cars_annotations")) if p.is_dir()),
                 ROOT.parent / "shared" / "reference" / "stanford_cars_annotations")

TINY = {"classes": 3, "train_per_class": 3, "test_per_class": 2, "max_size": 96}

Member = tuple[tarfile.TarInfo, bytes | None]


def make_raw(folder: Path, layout: str, **overrides: int) -> Path:
    """A tiny synthetic raw download of `layout` in `folder`."""
    return make_synthetic(folder, layout, **{**TINY, **overrides})


def extract_archives(raw: Path, kaggle: bool = False) -> None:
    """Replace each `.tgz` by its extracted folder; `kaggle` nests them as the Kaggle mirror does."""
    for archive in sorted(raw.glob("*.tgz")):
        stem = archive.name.removesuffix(".tgz")
        target = raw / stem if kaggle else raw
        if archive.name == "car_devkit.tgz":
            target = raw / "car_devkit" if kaggle else raw
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        archive.unlink()


def rewrite_tgz(archive: Path, change: Callable[[list[Member]], list[Member]]) -> None:
    """Rewrite `archive` with its member list passed through `change`."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    members = change(members)
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def pixel_key(path: Path) -> str:
    """A digest of the decoded pixels and mode: equal for the same image under any file name."""
    with Image.open(path) as image:
        return hashlib.sha1(image.mode.encode() + np.asarray(image).tobytes()).hexdigest()


def labels_by_pixels(data: Path) -> dict[str, tuple]:
    """pixel digest -> (split, class, bbox..., class_name) of a prepared data folder."""
    out = {}
    for split in ("train", "test"):
        for row in pd.read_csv(data / f"{split}_labels.csv").itertuples(index=False):
            out[pixel_key(data / split / row.image_fname)] = (split, *row[1:])
    return out


def broken_huffman_table(data: bytes) -> bytes:
    """`data` with its first Huffman table's code lengths made impossible (all codes 1 bit long), lengths intact."""
    start = data.index(b"\xff\xc4") + 5  # marker, length (2 bytes), table class/id: then 16 counts
    counts = data[start:start + 16]
    return data[:start] + bytes([sum(counts)]) + bytes(15) + data[start + 16:]


def unzip_all(raw: Path) -> None:
    """Replace each `.zip` in `raw` by its contents, extracted into `raw` as `unzip` does."""
    for archive in sorted(raw.glob("*.zip")):
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(raw)
        archive.unlink()


def rewrite_zip(archive: Path, change: Callable[[list[tuple[zipfile.ZipInfo, bytes]]],
                                                list[tuple[zipfile.ZipInfo, bytes]]]) -> None:
    """Rewrite `archive` with its member list passed through `change`."""
    with zipfile.ZipFile(archive) as zipped:
        members = [(info, zipped.read(info)) for info in zipped.infolist()]
    members = change(members)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for info, data in members:
            zipped.writestr(info, data)


def fails_with(raw: Path, data: Path, *fragments: str) -> str:
    """Prepare, expect a DataError whose one-line message holds every fragment, and no CSVs."""
    from datasets.raw.prepare import labels_csv, prepare_dataset
    from utils.errors import DataError

    with pytest.raises(DataError) as caught:
        prepare_dataset(raw, data)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not labels_csv(data, "train").exists() and not labels_csv(data, "test").exists()
    return message
