"""Bad raw data fails with one clear DataError, never a traceback, a complete-looking folder or a file elsewhere."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datasets.prepared.stanford_data_module import StanfordCarsDataModule
from datasets.raw.prepare import labels_csv, prepare_dataset
from tests.datasets.raw.prepare_helpers import Member, broken_huffman_table, fails_with, make_raw, rewrite_tgz
from tests.helpers import run_script
from utils.configuration import validate
from utils.errors import DataError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    return {layout: make_raw(root / layout, layout) for layout in ("updated", "original")}


@pytest.fixture
def updated(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine["updated"], tmp_path / "raw"))


@pytest.fixture
def original(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine["original"], tmp_path / "raw"))



def test_missing_raw_folder_is_named(tmp_path):
    fails_with(tmp_path / "absent", tmp_path / "data", "absent", "does not exist", "stanford_raw_data_path")


def test_incomplete_downloads_list_what_each_release_lacks(original, tmp_path):
    (original / "cars_test.tgz").unlink()
    (original / "cars_test_annos_withlabels.mat").unlink()
    fails_with(original, tmp_path / "data", "updated release lacks car_ims.tgz (or car_ims/), cars_annos.mat",
               "original release lacks cars_test.tgz (or cars_test/), cars_test_annos_withlabels.mat")


def test_an_html_page_saved_as_mat_is_named(updated, tmp_path):
    (updated / "cars_annos.mat").write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    fails_with(updated, tmp_path / "data", "cars_annos.mat is not a MAT file", "HTML page")


def test_a_truncated_archive_is_named(updated, tmp_path):
    archive = updated / "car_ims.tgz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    fails_with(updated, tmp_path / "data", "car_ims.tgz is truncated or damaged")


def test_a_damaged_archive_fails_its_checksum_even_where_images_still_decode(updated, tmp_path):
    archive = updated / "car_ims.tgz"
    damaged = bytearray(archive.read_bytes())
    damaged[-20] ^= 0x01  # inside the compressed end-of-archive padding, which no image check would see
    archive.write_bytes(bytes(damaged))
    fails_with(updated, tmp_path / "data", "car_ims.tgz is truncated or damaged", "CRC check failed")


def test_a_class_id_outside_the_class_names_is_refused(updated, tmp_path):
    annos = scipy.io.loadmat(updated / "cars_annos.mat")
    annos["annotations"][0, 4]["class"] = np.array([[197]], dtype=np.uint8)
    scipy.io.savemat(updated / "cars_annos.mat", {k: v for k, v in annos.items() if not k.startswith("__")},
                     do_compression=True)
    fails_with(updated, tmp_path / "data", "class ids must be 1..196", "000005.jpg (class 197)")


def test_class_ids_stored_as_uint8_and_uint16_do_not_wrap(original, tmp_path):
    """uint8 + anything wraps at 256 in numpy; the reader casts to int64 first, so 300 stays 300 (and is refused)."""
    path = original / "cars_test_annos_withlabels.mat"
    annos = scipy.io.loadmat(path)
    annos["annotations"][0, 0]["class"] = np.array([[300]], dtype=np.uint16)
    scipy.io.savemat(path, {"annotations": annos["annotations"]}, do_compression=True)
    fails_with(original, tmp_path / "data", "(class 300)")


def drop_first_image(members: list[Member]) -> list[Member]:
    first = next(i for i, (info, _) in enumerate(members) if info.isfile())
    return members[:first] + members[first + 1:]


def test_a_missing_image_is_listed(original, tmp_path):
    rewrite_tgz(original / "cars_test.tgz", drop_first_image)
    fails_with(original, tmp_path / "data", "1 annotated image(s) missing from", "cars_test.tgz: 00001.jpg")


def test_an_unannotated_image_is_listed(updated, tmp_path):
    def add_extra(members: list[Member]) -> list[Member]:
        info = tarfile.TarInfo("car_ims/999999.jpg")
        return members + [(info, members[1][1])]

    rewrite_tgz(updated / "car_ims.tgz", add_extra)
    fails_with(updated, tmp_path / "data", "1 image(s) in", "without annotation: car_ims/999999.jpg")


def test_an_image_that_does_not_decode_is_named(updated, tmp_path):
    def truncate_third(members: list[Member]) -> list[Member]:
        info, data = members[3]
        return members[:3] + [(info, data[: len(data) // 2])] + members[4:]

    rewrite_tgz(updated / "car_ims.tgz", truncate_third)
    fails_with(updated, tmp_path / "data", "1 image(s) in", "do not decode: car_ims/000003.jpg", "truncated")


def test_damage_inside_intact_jpeg_segments_is_named_by_the_full_check_or_else_by_the_image_cache(updated, tmp_path):
    def break_huffman_table(members: list[Member]) -> list[Member]:
        info, data = members[3]
        return members[:3] + [(info, broken_huffman_table(data))] + members[4:]

    rewrite_tgz(updated / "car_ims.tgz", break_huffman_table)
    data = tmp_path / "data"
    failed = run_script("prepare_stanford_dataset.py", ["--raw-data-path", str(updated), "--data-path", str(data),
                                                        "--full-check"], cwd=tmp_path, timeout=120)
    assert failed.returncode != 0
    assert "do not decode: car_ims/000003.jpg" in failed.stderr and "Traceback" not in failed.stderr
    assert not labels_csv(data, "train").exists()

    prepare_dataset(updated, data)  # the default check reads segments only: the file passes
    config = validate({"stanford_data_path": str(data), "image_size": [32, 32], "num_workers": 0,
                       "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(DataError, match="000003.jpg does not decode"):
        StanfordCarsDataModule(config).setup("fit")


def test_a_non_image_under_a_jpg_name_is_named(original, tmp_path):
    folder = tmp_path / "extracted"
    with tarfile.open(original / "cars_train.tgz") as tar:
        tar.extractall(folder, filter="data")
    (original / "cars_train.tgz").unlink()
    shutil.move(folder / "cars_train", original / "cars_train")
    (original / "cars_train" / "00002.jpg").write_text("<html>not found</html>")
    fails_with(original, tmp_path / "data", "do not decode", "00002.jpg")


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def crafted_members(kind: str) -> list[Member]:
    if kind == "symlink":
        info = tarfile.TarInfo("car_ims/000001.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        return [(info, None)]
    if kind == "device":
        info = tarfile.TarInfo("car_ims/000001.jpg")
        info.type = tarfile.CHRTYPE
        return [(info, None)]
    name = {"dotdot": "car_ims/../../../escaped.jpg", "absolute": "/tmp/escaped_absolute.jpg"}[kind]
    return [(tarfile.TarInfo(name), jpeg_bytes())]


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_a_crafted_archive_is_refused_and_writes_nothing_elsewhere(updated, tmp_path, kind):
    rewrite_tgz(updated / "car_ims.tgz", lambda members: members[:1] + crafted_members(kind) + members[1:])
    (tmp_path / "work").mkdir()
    before = {p for p in tmp_path.rglob("*")}
    fails_with(updated, tmp_path / "work" / "data", "holds the unsafe member", "refusing to use it")
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(tmp_path / "work" / "data") for p in created), created
    assert not Path("/tmp/escaped_absolute.jpg").exists()
    assert not list(tmp_path.rglob("escaped*"))


@pytest.mark.parametrize("field, value, shown", [
    ("class", np.array(["abc"]), "class = np.str_('abc')"),
    ("class", np.array([[3.5]]), "class = np.float64(3.5)"),
    ("bbox_x1", np.array([[np.nan]]), "bbox_x1 = np.float64(nan)"),
])
def test_a_number_that_is_not_whole_is_refused_not_truncated(updated, tmp_path, field, value, shown):
    annos = scipy.io.loadmat(updated / "cars_annos.mat")
    annos["annotations"][0, 2][field] = value
    scipy.io.savemat(updated / "cars_annos.mat", {k: v for k, v in annos.items() if not k.startswith("__")},
                     do_compression=True)
    fails_with(updated, tmp_path / "data", f"annotation 3 has {shown}; expected a whole number")


@pytest.mark.parametrize("box", [(0, 5, 20, 20), (30, 5, 20, 20), (5, 30, 20, 20)])
def test_a_bounding_box_that_is_not_1_based_or_is_inverted_is_refused(original, tmp_path, box):
    path = original / "cars_test_annos_withlabels.mat"
    annos = scipy.io.loadmat(path)
    for name, value in zip(("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"), box):
        annos["annotations"][0, 0][name] = np.array([[value]], dtype=np.uint8)
    scipy.io.savemat(path, {"annotations": annos["annotations"]}, do_compression=True)
    fails_with(original, tmp_path / "data", "bounding boxes must be 1-based with x1 <= x2 and y1 <= y2",
               f"00001.jpg ({', '.join(map(str, box))})")


def test_a_link_in_the_devkit_archive_is_refused(original, tmp_path):
    def link_meta(members: list[Member]) -> list[Member]:
        info = tarfile.TarInfo("devkit/cars_meta.mat")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        return [(info, None) if m.name == "devkit/cars_meta.mat" else (m, data) for m, data in members]

    rewrite_tgz(original / "car_devkit.tgz", link_meta)
    fails_with(original, tmp_path / "data", "car_devkit.tgz:devkit/cars_meta.mat is not a regular file")


def test_the_devkit_archive_is_read_once(original, tmp_path, monkeypatch):
    opened = []
    real_open = tarfile.open

    def counting_open(name=None, mode="r", *args, **kwargs):
        opened.append(mode)
        return real_open(name, mode, *args, **kwargs)

    monkeypatch.setattr(tarfile, "open", counting_open)
    prepare_dataset(original, tmp_path / "data")
    assert opened.count("r:gz") == 1, opened  # the devkit; the image archives are streamed ("r|")
    assert opened.count("r|") == 2, opened


def test_a_raw_path_that_is_a_file_is_named(updated, tmp_path):
    fails_with(updated / "car_ims.tgz", tmp_path / "data", "car_ims.tgz' is a file but not a .zip",
               "to the Kaggle .zip or to the folder that holds the downloads")
