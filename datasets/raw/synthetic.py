"""A small synthetic Stanford Cars download, in the exact raw formats of either release or of a Kaggle mirror's zip.

The real data cannot be downloaded by tests (or by a demo without network), so this writes the same files the real
releases hold: `.tgz` archives of JPEGs and MAT v5 files whose `scipy.io.loadmat` output has the real structure
(1xN struct arrays, numbers stored as uint8 when below 256 and uint16 otherwise, a logical `test`, 1xL char arrays,
the real 196 class names). Both layouts of one seed hold the same images (same pixels, classes and bboxes) under the
releases' different names: the updated release numbers `car_ims/000001.jpg`... over train and test sorted by class,
the original one numbers `cars_train/00001.jpg`... and `cars_test/00001.jpg`... separately, in shuffled order.

Image content depends on the class through its luminance pattern inside the bbox (stripe orientation or
checkerboard or rings, and stripe frequency), which survives flips, +-25 degree rotations, hue jitter and grayscale
conversion, plus a class colour; backgrounds, bbox placement and phase are random.

The mirror layouts write the zips as Kaggle serves them (see documentation/dataset.md, supported mirrors):
`torchvision` (rickyyyyyyy/torchvision-stanford-cars: `stanford_cars/` with cars_train/, cars_test/, devkit/ and
the test labels), `kaggle-nested` (jessicali9530/stanford-cars-dataset: `cars_annos.mat` of the updated release
beside `cars_train/cars_train/` and `cars_test/cars_test/` images of the original one; plus
abdelrahmant11/standford-cars-dataset-meta: `devkit/` and `cars_test_annos_withlabels (1).mat`) and `by-class`
(cyizhuo/stanford-cars-by-classes-folder: `train/<class name>/*.jpg`, `test/<class name>/*.jpg`, no annotations).
"""

from __future__ import annotations

import colorsys
import io
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from datasets.raw.class_names import STANFORD_CARS_CLASS_NAMES
from utils.errors import DataError
from utils.files import write_bytes_atomic

LAYOUTS = ("updated", "original", "torchvision", "kaggle-nested", "by-class")
# Image sides in px: above 255, box coordinates are numbers MATLAB stores as uint16, as in the real files.
MIN_SIZE, MAX_SIZE = 64, 320
RAW_FILES = {"updated": ("car_devkit.tgz", "car_ims.tgz", "cars_annos.mat"),
             "original": ("car_devkit.tgz", "cars_train.tgz", "cars_test.tgz", "cars_test_annos_withlabels.mat"),
             "torchvision": ("torchvision-stanford-cars.zip",),
             "kaggle-nested": ("stanford-cars-dataset.zip", "standford-cars-dataset-meta.zip"),
             "by-class": ("stanford-cars-by-classes-folder.zip",)}
MTIME = 1387000000  # December 2013, when the original devkit was published
FREQUENCIES = (1.5, 4.0, 9.0)  # pattern periods across the bbox, far enough apart to survive bbox size jitter


@dataclass(frozen=True)
class SyntheticImage:
    """One generated image: class id (1-based), split, JPEG bytes and its 1-based inclusive bbox."""

    class_id: int
    test: bool
    jpeg: bytes
    bbox: tuple[int, int, int, int]


def _class_pattern(class_id: int, u: np.ndarray, v: np.ndarray, phase: float) -> np.ndarray:
    """A 0/1 mask over bbox coordinates u, v in [0, 1): kind = class % 4, frequency = class // 4 % 3."""
    index = class_id - 1
    frequency = FREQUENCIES[(index // 4) % len(FREQUENCIES)]
    kind = index % 4
    if kind == 0:
        wave = np.sin(2 * np.pi * (frequency * v + phase))
    elif kind == 1:
        wave = np.sin(2 * np.pi * (frequency * u + phase))
    elif kind == 2:
        wave = np.sin(2 * np.pi * (frequency * u + phase)) * np.sin(2 * np.pi * (frequency * v + phase))
    else:
        wave = np.sin(2 * np.pi * (1.4 * frequency * np.hypot(u - 0.5, v - 0.5) + phase))
    return wave > 0


def _class_colour(class_id: int) -> np.ndarray:
    hue = ((class_id - 1) * 0.618034) % 1.0  # golden-ratio steps keep neighbouring classes' hues apart
    brightness = (1.0, 0.8, 0.6)[((class_id - 1) // 12) % 3]
    return np.array(colorsys.hsv_to_rgb(hue, 0.85, brightness)) * 255


def render_image(class_id: int, width: int, height: int, rng: np.random.Generator,
                 grayscale: bool = False) -> tuple[bytes, tuple[int, int, int, int]]:
    """JPEG bytes of a `width` x `height` image of `class_id` and its 1-based inclusive bbox (x1, y1, x2, y2)."""
    background = rng.uniform(40, 215, size=3)
    pixels = background + rng.normal(0, 14, size=(height, width, 3))
    box_w = int(width * rng.uniform(0.5, 0.85))
    box_h = int(height * rng.uniform(0.45, 0.8))
    left = int(rng.integers(0, width - box_w + 1))
    top = int(rng.integers(0, height - box_h + 1))
    v, u = np.mgrid[0:box_h, 0:box_w]
    mask = _class_pattern(class_id, u / box_w, v / box_h, float(rng.uniform(0, 0.25)))
    bright = _class_colour(class_id)
    box = np.where(mask[..., None], bright, bright * 0.2)
    pixels[top:top + box_h, left:left + box_w] = box + rng.normal(0, 8, size=box.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if grayscale:
        image = image.convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), (left + 1, top + 1, left + box_w, top + box_h)


def generate_images(classes: int, train_per_class: int, test_per_class: int, seed: int, min_size: int,
                    max_size: int, distinct_per_class: int | None = None) -> list[SyntheticImage]:
    """The images of a synthetic dataset, class by class (train first); the same for both layouts.

    `distinct_per_class` renders only that many images per class and repeats them (benchmarks of large sets).
    """
    rng = np.random.default_rng(seed)
    images = []
    for class_id in range(1, classes + 1):
        rendered: list[tuple[bytes, tuple[int, int, int, int]]] = []
        for j, test in enumerate([False] * train_per_class + [True] * test_per_class):
            if distinct_per_class and j >= distinct_per_class:
                jpeg, bbox = rendered[j % distinct_per_class]
            else:
                width, height = (int(x) for x in rng.integers(min_size, max_size + 1, size=2))
                grayscale = len(images) % 9 == 4  # a few grayscale images, as in the real data
                jpeg, bbox = render_image(class_id, width, height, rng, grayscale)
                rendered.append((jpeg, bbox))
            images.append(SyntheticImage(class_id, test, jpeg, bbox))
    return images


def _number(value: int) -> np.ndarray:
    """A 1x1 number as MATLAB stores a double it can compress: uint8 below 256, uint16 otherwise."""
    return np.array([[value]], dtype=np.uint8 if value < 256 else np.uint16)


def _struct_array(rows: list[dict[str, object]], fields: list[str]) -> np.ndarray:
    array = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        array[0, i] = tuple(row[f] for f in fields)
    return array


def _annotation_row(image: SyntheticImage, with_class: bool = True) -> dict[str, object]:
    x1, y1, x2, y2 = image.bbox
    row: dict[str, object] = {"bbox_x1": _number(x1), "bbox_y1": _number(y1), "bbox_x2": _number(x2),
                              "bbox_y2": _number(y2)}
    if with_class:
        row["class"] = _number(image.class_id)
    return row


def _class_names_cell() -> np.ndarray:
    cell = np.empty((1, len(STANFORD_CARS_CLASS_NAMES)), dtype=object)
    cell[0, :] = list(STANFORD_CARS_CLASS_NAMES)
    return cell


def _mat_bytes(variables: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, do_compression=True, oned_as="row")
    return buffer.getvalue()


def _write_tgz(path: Path, folder: str, files: list[tuple[str, bytes]], compresslevel: int = 6) -> None:
    """A gzipped tar holding `folder/` and then `folder/<name>` for each file, as the real archives do; written
    under a temporary name and renamed, so an interrupted run never leaves a truncated archive."""
    temporary = path.with_name(path.name + ".tmp")
    with tarfile.open(temporary, "w:gz", compresslevel=compresslevel) as archive:
        directory = tarfile.TarInfo(folder)
        directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, MTIME
        archive.addfile(directory)
        for name, data in files:
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            archive.addfile(info, io.BytesIO(data))
    os.replace(temporary, path)


def _original_order(images: list[SyntheticImage], test: bool, rng: np.random.Generator) -> list[SyntheticImage]:
    split = [image for image in images if image.test == test]
    return [split[i] for i in rng.permutation(len(split))]


def _devkit_files(train: list[SyntheticImage], test: list[SyntheticImage]) -> list[tuple[str, bytes]]:
    """The devkit: cars_meta.mat, cars_train_annos.mat, cars_test_annos.mat (no labels), README.txt."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    train_rows = [{**_annotation_row(im), "fname": f"{i:05d}.jpg"} for i, im in enumerate(train, 1)]
    test_rows = [{**_annotation_row(im, with_class=False), "fname": f"{i:05d}.jpg"} for i, im in enumerate(test, 1)]
    files = [
        ("README.txt", b"Synthetic Stanford Cars devkit written by datasets/raw/synthetic.py (not the real data).\n"),
        ("cars_meta.mat", _mat_bytes({"class_names": _class_names_cell()})),
        ("cars_train_annos.mat", _mat_bytes({"annotations": _struct_array(train_rows, fields)})),
        ("cars_test_annos.mat", _mat_bytes({"annotations": _struct_array(test_rows, [f for f in fields
                                                                                   if f != "class"])})),
    ]
    return files


def _withlabels(test: list[SyntheticImage]) -> bytes:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    rows = [{**_annotation_row(im), "fname": f"{i:05d}.jpg"} for i, im in enumerate(test, 1)]
    return _mat_bytes({"annotations": _struct_array(rows, fields)})


def _updated_files(images: list[SyntheticImage], order_rng: np.random.Generator
                   ) -> tuple[list[tuple[str, SyntheticImage]], bytes]:
    """The updated release: (car_ims name, image) listed by class, train and test mixed; and cars_annos.mat."""
    mixed = [images[i] for i in order_rng.permutation(len(images))]
    ordered = sorted(mixed, key=lambda im: im.class_id)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = [{**_annotation_row(im), "relative_im_path": f"car_ims/{i:06d}.jpg", "test": np.array([[im.test]])}
            for i, im in enumerate(ordered, 1)]
    annos = {"annotations": _struct_array(rows, fields), "class_names": _class_names_cell()}
    return [(f"{i:06d}.jpg", im) for i, im in enumerate(ordered, 1)], _mat_bytes(annos)


def _write_zip(path: Path, files: list[tuple[str, bytes]]) -> None:
    """A deflated zip of `files` (member name, bytes), written under a temporary name and renamed."""
    temporary = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in files:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2013, 12, 14, 0, 0, 0)), data)
    os.replace(temporary, path)


def class_folder(class_id: int) -> str:
    """The by-class mirrors' folder of a class: its name, with the '/' a folder name cannot hold as '-'."""
    return STANFORD_CARS_CLASS_NAMES[class_id - 1].replace("/", "-")


def _write_mirror(out_dir: Path, layout: str, images: list[SyntheticImage], train: list[SyntheticImage],
                  test: list[SyntheticImage], order_rng: np.random.Generator) -> None:
    devkit = _devkit_files(train, test)
    numbered = {split: [(f"{i:05d}.jpg", im.jpeg) for i, im in enumerate(group, 1)]
                for split, group in (("cars_train", train), ("cars_test", test))}
    car_ims, annos = _updated_files(images, order_rng)
    if layout == "torchvision":
        root = "stanford_cars"
        files = [(f"{root}/{split}/{name}", data) for split, group in numbered.items() for name, data in group]
        files += [(f"{root}/devkit/{name}", data) for name, data in devkit]
        files.append((f"{root}/cars_test_annos_withlabels.mat", _withlabels(test)))
        _write_zip(out_dir / "torchvision-stanford-cars.zip", files)
    elif layout == "kaggle-nested":
        files = [("cars_annos.mat", annos)]
        files += [(f"{split}/{split}/{name}", data) for split, group in numbered.items() for name, data in group]
        _write_zip(out_dir / "stanford-cars-dataset.zip", files)
        meta = [(f"devkit/{name}", data) for name, data in devkit]
        meta.append(("cars_test_annos_withlabels (1).mat", _withlabels(test)))
        _write_zip(out_dir / "standford-cars-dataset-meta.zip", meta)
    else:
        files = [(f"{'test' if im.test else 'train'}/{class_folder(im.class_id)}/{name}", im.jpeg)
                 for name, im in sorted(car_ims, key=lambda pair: (pair[1].test, pair[1].class_id, pair[0]))]
        _write_zip(out_dir / "stanford-cars-by-classes-folder.zip", files)


def make_synthetic(out_dir: Path, layout: str = "updated", classes: int = 10, train_per_class: int = 6,
                   test_per_class: int = 4, seed: int = 0, min_size: int = MIN_SIZE, max_size: int = MAX_SIZE,
                   distinct_per_class: int | None = None, overwrite: bool = False) -> Path:
    """Write a synthetic raw download of `layout` (one of LAYOUTS) into `out_dir`; return `out_dir`.

    Classes 1..`classes` of the real class list are used; `test_per_class` images of each class are test images.
    Image sides are drawn from `min_size`..`max_size`: above 255 px, boxes reach numbers that MATLAB stores as
    uint16, as in the real files. Raw files already in `out_dir` are refused unless `overwrite`. Each file is
    written atomically and the annotations (cars_annos.mat, or cars_test_annos_withlabels.mat) come last: a
    folder holding them holds the whole download.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if not 1 <= classes <= len(STANFORD_CARS_CLASS_NAMES):
        raise ValueError(f"classes must be 1..{len(STANFORD_CARS_CLASS_NAMES)}, not {classes}")
    if min(train_per_class, test_per_class) < 1 or not 16 <= min_size <= max_size:
        raise ValueError("train_per_class and test_per_class must be >= 1 and 16 <= min_size <= max_size")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in 0..{2**32 - 1}, not {seed}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file; --make-synthetic needs a folder to write into")
    present = [name for name in RAW_FILES[layout] if (out_dir / name).exists()]
    if present and not overwrite:
        raise DataError(f"{out_dir} already holds {', '.join(present)}; choose an empty folder, or pass --force "
                        "to overwrite them")
    out_dir.mkdir(parents=True, exist_ok=True)
    images = generate_images(classes, train_per_class, test_per_class, seed, min_size, max_size,
                             distinct_per_class)
    # both orders are drawn whatever the layout, so that both layouts of one seed hold the same images
    order_rng = np.random.default_rng([seed, 1])
    train, test = _original_order(images, False, order_rng), _original_order(images, True, order_rng)
    if layout not in ("updated", "original"):
        _write_mirror(out_dir, layout, images, train, test, order_rng)
        return out_dir
    _write_tgz(out_dir / "car_devkit.tgz", "devkit", _devkit_files(train, test))
    if layout == "original":
        _write_tgz(out_dir / "cars_train.tgz", "cars_train", [(f"{i:05d}.jpg", im.jpeg) for i, im in
                                                               enumerate(train, 1)])
        _write_tgz(out_dir / "cars_test.tgz", "cars_test", [(f"{i:05d}.jpg", im.jpeg) for i, im in
                                                             enumerate(test, 1)])
        write_bytes_atomic(out_dir / "cars_test_annos_withlabels.mat", _withlabels(test))
        return out_dir
    # the updated release lists images by class, train and test mixed
    car_ims, annos = _updated_files(images, order_rng)
    _write_tgz(out_dir / "car_ims.tgz", "car_ims", [(name, im.jpeg) for name, im in car_ims])
    write_bytes_atomic(out_dir / "cars_annos.mat", annos)
    return out_dir
