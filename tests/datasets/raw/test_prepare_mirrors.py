"""The Kaggle mirrors as users download them: zips read directly or extracted, each mirror's own layout."""

from __future__ import annotations

import io
import logging
import shutil
import stat
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from datasets.prepared.stanford_data_module import StanfordCarsDataModule
from datasets.raw.class_names import STANFORD_CARS_CLASS_NAMES, class_ids_from_folders
from datasets.raw.prepare import CSV_COLUMNS, labels_csv, prepare_dataset
from datasets.raw.synthetic import class_folder
from tests import helpers
from tests.datasets.raw.prepare_helpers import fails_with, labels_by_pixels, make_raw, rewrite_zip, unzip_all
from utils.configuration import validate
from utils.errors import DataError

MIRRORS = ("torchvision", "kaggle-nested", "by-class")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Path]:
    """The same tiny dataset as each mirror's zip(s), and as the original release prepared (the reference)."""
    root = tmp_path_factory.mktemp("mirrors")
    out = {layout: make_raw(root / layout, layout) for layout in MIRRORS}
    prepare_dataset(make_raw(root / "original", "original"), root / "reference")
    out["reference"] = root / "reference"
    return out


def copy_raw(raw: dict[str, Path], layout: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(raw[layout], tmp_path / f"raw_{layout}"))


def same_labels(data: Path, reference: Path, boxes: bool = True) -> None:
    """Every image of `data` carries the split, class, class name (and boxes) it has in the reference preparation."""
    ours, theirs = labels_by_pixels(data), labels_by_pixels(reference)
    assert len(ours) == 15
    if boxes:
        assert ours == theirs
    else:
        assert {k: (v[0], v[1], v[-1]) for k, v in ours.items()} == {k: (v[0], v[1], v[-1]) for k, v in theirs.items()}



def test_the_recommended_zip_given_as_the_raw_path_prepares_end_to_end(raw, tmp_path):
    zipped = raw["torchvision"] / "torchvision-stanford-cars.zip"
    result = helpers.run_script("prepare_stanford_dataset.py",
                                ["--raw-data-path", str(zipped), "--data-path", str(tmp_path / "data")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "prepared 9 train and 6 test images of 3 classes (original release)" in result.stdout
    assert "torchvision-stanford-cars.zip:stanford_cars/cars_train" in result.stdout  # where the images came from
    same_labels(tmp_path / "data", raw["reference"])
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]  # nothing extracted beside it


@pytest.mark.parametrize("layout", MIRRORS)
def test_each_mirror_prepares_from_its_zips_in_the_raw_folder_or_extracted(raw, tmp_path, layout):
    prepare_dataset(raw[layout], tmp_path / "from_zip")
    same_labels(tmp_path / "from_zip", raw["reference"], boxes=layout != "by-class")
    extracted = copy_raw(raw, layout, tmp_path)
    unzip_all(extracted)
    summary = prepare_dataset(extracted, tmp_path / "from_folders")
    assert summary.layout == ("by-class" if layout == "by-class" else "original")
    for split in ("train", "test"):
        assert labels_csv(tmp_path / "from_folders", split).read_text() == \
            labels_csv(tmp_path / "from_zip", split).read_text()


def test_a_wrapper_folder_beside_other_files_in_the_zip_is_looked_into(raw, tmp_path):
    zipped = copy_raw(raw, "torchvision", tmp_path) / "torchvision-stanford-cars.zip"
    rewrite_zip(zipped, lambda members: [(zipfile.ZipInfo("README.md"), b"a mirror's notes"), *members])
    summary = prepare_dataset(zipped, tmp_path / "data")
    assert (summary.layout, summary.train_images, summary.test_images) == ("original", 9, 6)


def test_by_class_folders_give_class_names_from_folders_and_empty_boxes(raw, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cars"):
        summary = prepare_dataset(raw["by-class"] / "stanford-cars-by-classes-folder.zip", tmp_path / "data")
    assert (summary.layout, summary.train_images, summary.test_images, summary.classes) == ("by-class", 9, 6, 3)
    assert "no bounding boxes" in caplog.text
    table = pd.read_csv(labels_csv(tmp_path / "data", "train"))
    assert list(table.columns) == CSV_COLUMNS
    assert table[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]].isna().all(axis=None)
    assert table["class_name"].tolist() == [STANFORD_CARS_CLASS_NAMES[c - 1] for c in table["class"]]


def test_crop_to_bboxes_on_by_class_data_stops_with_one_line(raw, tmp_path):
    prepare_dataset(raw["by-class"], tmp_path / "data")
    base = {"stanford_data_path": str(tmp_path / "data"), "image_size": [32, 32], "num_workers": 0,
            "cache_images": False}
    with pytest.raises(DataError, match="crop_to_bboxes is true, but the prepared data has no bounding boxes"):
        StanfordCarsDataModule(validate({**base, "crop_to_bboxes": True}))
    module = StanfordCarsDataModule(validate(base))
    module.setup("fit")
    image, label = module.datasets["train"][0]
    assert image.shape == (3, 32, 32) and 0 <= label < 3


def test_class_folders_match_the_real_names_even_where_a_slash_became_a_dash():
    folders = [class_folder(174), class_folder(1), "acura rl sedan 2012"]
    assert folders[0] == "Ram C-V Cargo Van Minivan 2012"
    assert class_ids_from_folders(folders) == {
        "Ram C-V Cargo Van Minivan 2012": (174, "Ram C/V Cargo Van Minivan 2012"),
        "AM General Hummer SUV 2000": (1, "AM General Hummer SUV 2000"),
        "acura rl sedan 2012": (2, "Acura RL Sedan 2012")}
    assert class_ids_from_folders(["AM General Hummer SUV 2000", "my own class"]) is None


def test_by_class_folders_inside_other_folders_beside_other_files_are_found(raw, tmp_path):
    extracted = copy_raw(raw, "by-class", tmp_path)
    unzip_all(extracted)
    (extracted / "car_data" / "car_data").mkdir(parents=True)
    for split in ("train", "test"):
        (extracted / split).rename(extracted / "car_data" / "car_data" / split)
    (extracted / "names.csv").write_text("AM General Hummer SUV 2000\n")
    summary = prepare_dataset(extracted, tmp_path / "data")
    assert (summary.layout, summary.train_images, summary.test_images) == ("by-class", 9, 6)


def test_other_class_folders_are_numbered_in_name_order(raw, tmp_path, caplog):
    extracted = copy_raw(raw, "by-class", tmp_path)
    unzip_all(extracted)
    for split in ("train", "test"):
        for i, folder in enumerate(sorted((extracted / split).iterdir())):
            folder.rename(folder.with_name(f"make {3 - i}"))
    with caplog.at_level(logging.WARNING, logger="cars"):
        prepare_dataset(extracted, tmp_path / "data")
    assert "not all Stanford Cars class names" in caplog.text
    table = pd.read_csv(labels_csv(tmp_path / "data", "test"))
    assert sorted(set(zip(table["class"], table["class_name"]))) == [(1, "make 1"), (2, "make 2"), (3, "make 3")]


def test_a_file_name_in_two_class_folders_is_refused(raw, tmp_path):
    extracted = copy_raw(raw, "by-class", tmp_path)
    unzip_all(extracted)
    first, second = sorted((extracted / "train").iterdir())[:2]
    shutil.copy(next(first.iterdir()), second / next(first.iterdir()).name)
    fails_with(extracted, tmp_path / "data", "the same file name in several class folders")


@pytest.mark.parametrize("extract", [False, True])
def test_cars_annos_beside_original_release_images_is_named_not_mislabelled(raw, tmp_path, extract):
    """jessicali9530's zip alone: the updated release's cars_annos.mat names car_ims/..., its images are the
    original release's cars_train/cars_train/00001.jpg...: no label may be guessed across the two."""
    mirror = tmp_path / "raw"
    mirror.mkdir()
    shutil.copy(raw["kaggle-nested"] / "stanford-cars-dataset.zip", mirror)
    if extract:
        unzip_all(mirror)
    message = fails_with(mirror, tmp_path / "data", "cars_annos.mat (updated release) names its images car_ims/",
                         "there is no car_ims.tgz or car_ims/", "cars_train_annos.mat", "cars_meta.mat",
                         "cars_test_annos_withlabels.mat")
    assert "cars_train.tgz" not in message  # the images are there: only the annotations are missing
    assert not (tmp_path / "data" / "train").exists() or not any((tmp_path / "data" / "train").iterdir())


def test_a_stray_copy_name_is_used_when_it_is_the_only_one_and_named_in_the_log(raw, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cars"):
        prepare_dataset(raw["kaggle-nested"], tmp_path / "data")
    assert "cars_test_annos_withlabels (1).mat as cars_test_annos_withlabels.mat (the only candidate)" in caplog.text
    extracted = copy_raw(raw, "kaggle-nested", tmp_path)
    unzip_all(extracted)
    shutil.copy(extracted / "cars_test_annos_withlabels (1).mat", extracted / "cars_test_annos_withlabels (2).mat")
    fails_with(extracted, tmp_path / "data2", "several copies of cars_test_annos_withlabels.mat",
               "cars_test_annos_withlabels (1).mat, cars_test_annos_withlabels (2).mat", "keep one")


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def crafted(kind: str) -> tuple[zipfile.ZipInfo, bytes]:
    if kind == "symlink":
        info = zipfile.ZipInfo("stanford_cars/cars_train/link.jpg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        return info, b"/etc/passwd"
    name = {"dotdot": "../escaped.jpg", "nested_dotdot": "stanford_cars/cars_train/../../../escaped.jpg",
            "absolute": "/tmp/escaped_zip_absolute.jpg"}[kind]
    return zipfile.ZipInfo(name), jpeg()


@pytest.mark.parametrize("kind", ["dotdot", "nested_dotdot", "absolute", "symlink"])
def test_a_crafted_zip_is_refused_and_writes_nothing_outside_the_data_path(raw, tmp_path, kind):
    mirror = copy_raw(raw, "torchvision", tmp_path)
    zipped = mirror / "torchvision-stanford-cars.zip"
    rewrite_zip(zipped, lambda members: [crafted(kind), *members])
    (tmp_path / "work").mkdir()
    before = set(tmp_path.rglob("*"))
    fails_with(zipped, tmp_path / "work" / "data", "holds the unsafe member", "refusing to use it")
    created = set(tmp_path.rglob("*")) - before
    assert all(p.is_relative_to(tmp_path / "work" / "data") for p in created), created
    assert not Path("/tmp/escaped_zip_absolute.jpg").exists() and not list(tmp_path.rglob("escaped*"))


def test_a_truncated_zip_is_named(raw, tmp_path):
    zipped = copy_raw(raw, "torchvision", tmp_path) / "torchvision-stanford-cars.zip"
    zipped.write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])
    fails_with(zipped, tmp_path / "data", "torchvision-stanford-cars.zip is truncated or damaged", "download it again")


def test_a_damaged_zip_member_fails_its_checksum(raw, tmp_path):
    zipped = copy_raw(raw, "torchvision", tmp_path) / "torchvision-stanford-cars.zip"

    with zipfile.ZipFile(zipped) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_STORED) as out:  # stored: a flipped byte stays local
        for name, data in members:
            out.writestr(name, data)
    with zipfile.ZipFile(zipped) as check:
        info = check.getinfo("stanford_cars/cars_test/00002.jpg")
    damaged = bytearray(zipped.read_bytes())
    damaged[info.header_offset + 30 + len(info.filename) + 200] ^= 0x01  # inside the image's data
    zipped.write_bytes(bytes(damaged))
    fails_with(zipped, tmp_path / "data", "torchvision-stanford-cars.zip is truncated or damaged",
               "Bad CRC-32 for file 'stanford_cars/cars_test/00002.jpg'")


def test_a_missing_image_in_a_zip_is_listed(raw, tmp_path):
    zipped = copy_raw(raw, "torchvision", tmp_path) / "torchvision-stanford-cars.zip"
    rewrite_zip(zipped, lambda members: [m for m in members if m[0].filename != "stanford_cars/cars_test/00001.jpg"])
    fails_with(zipped, tmp_path / "data", "1 annotated image(s) missing from",
               "torchvision-stanford-cars.zip:stanford_cars/cars_test: 00001.jpg")


def test_a_file_that_is_neither_a_folder_nor_a_zip_is_named(tmp_path):
    (tmp_path / "cars.rar").write_bytes(b"Rar!")
    fails_with(tmp_path / "cars.rar", tmp_path / "data", "cars.rar' is a file but not a .zip")
