"""The synthetic download has the real files' formats, and class-dependent, reproducible images."""

from __future__ import annotations

import io
import re
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datasets.raw.class_names import STANFORD_CARS_CLASS_NAMES
from datasets.raw.synthetic import generate_images, make_synthetic
from tests.datasets.raw.prepare_helpers import REFERENCE, make_raw

needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="real annotation files not available")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Path]:
    """Both layouts with images up to 400 px, so that bbox values need uint16 too."""
    root = tmp_path_factory.mktemp("synthetic")
    return {layout: make_raw(root / layout, layout, max_size=400, classes=4, test_per_class=4) for layout in ("updated", "original")}


def devkit_bytes(raw_dir: Path, name: str) -> bytes:
    with tarfile.open(raw_dir / "car_devkit.tgz") as tar:
        return tar.extractfile(f"devkit/{name}").read()


def generated_mat(raw: dict[str, Path], name: str) -> bytes:
    if name == "cars_annos.mat":
        return (raw["updated"] / name).read_bytes()
    if name == "cars_test_annos_withlabels.mat":
        return (raw["original"] / name).read_bytes()
    return devkit_bytes(raw["original"], name)


def structure(data: bytes) -> dict:
    """What `loadmat` shows of a file: variables, struct fields, shapes, per-field dtypes, cell contents."""
    out = {}
    for name, value in scipy.io.loadmat(io.BytesIO(data)).items():
        if name.startswith("__"):
            continue
        entry = {"shape_rows": value.shape[0], "ndim": value.ndim, "fields": value.dtype.names}
        if value.dtype.names:
            entry["dtypes"] = {f: sorted({str(row[f].dtype) if row[f].dtype.kind != "U" else "str"
                                          for row in value.ravel()}) for f in value.dtype.names}
            entry["cell_shapes"] = {f: sorted({row[f].shape for row in value.ravel()}) for f in value.dtype.names}
        else:
            entry["cells"] = sorted({(cell.dtype.kind, cell.shape) for cell in value.ravel()})
        out[name] = entry
    return out


def array_flags(data: bytes) -> dict[str, set[tuple[bool, int]]]:
    """Per struct field (first 100 rows): the (logical, storage type) pairs of the MAT v5 array headers.

    loadmat returns a logical as uint8, so the logical flag is read from the file itself.
    """
    found: dict[str, set[tuple[bool, int]]] = {}

    def elements(buffer: bytes):
        position = 0
        while position < len(buffer):
            kind, size = struct.unpack_from("<II", buffer, position)
            if kind >> 16:  # small element: size and type share the tag
                yield kind & 0xFFFF, buffer[position + 4:position + 4 + (kind >> 16)]
                position += 8
                continue
            yield kind, buffer[position + 8:position + 8 + size]
            position += 8 + size + (-size % 8 if kind != 15 else 0)

    def matrix(buffer: bytes, field: str) -> None:
        parts = list(elements(buffer))
        flags = struct.unpack_from("<I", parts[0][1])[0]
        if flags & 0xFF == 2:  # struct: field names, then one matrix per field per element
            length = struct.unpack("<i", parts[3][1])[0]
            names = [parts[4][1][i:i + length].rstrip(b"\0").decode() for i in range(0, len(parts[4][1]), length)]
            for index, (_, sub) in enumerate(parts[5:5 + 100 * len(names)]):  # 100 rows tell the flags
                matrix(sub, names[index % len(names)])
        elif field and len(parts) > 3:
            found.setdefault(field, set()).add((bool(flags & 0x200), parts[3][0]))

    for kind, payload in elements(data[128:]):
        assert kind == 15, "variables are stored compressed"
        inner = zlib.decompress(payload)
        matrix(inner[8:], "")
    return found


MAT_FILES = ["cars_annos.mat", "cars_meta.mat", "cars_train_annos.mat", "cars_test_annos.mat",
             "cars_test_annos_withlabels.mat"]


@needs_reference
@pytest.mark.parametrize("name", MAT_FILES)
def test_generated_mat_files_have_the_structure_of_the_real_ones(raw, name):
    real, ours = structure((REFERENCE / name).read_bytes()), structure(generated_mat(raw, name))
    assert ours.keys() == real.keys()
    for variable, spec in real.items():
        mine = ours[variable]
        assert (mine["shape_rows"], mine["ndim"], mine["fields"]) == (spec["shape_rows"], spec["ndim"], spec["fields"])
        if spec["fields"]:
            assert mine["cell_shapes"] == spec["cell_shapes"]
            for field, dtypes in spec["dtypes"].items():
                assert set(mine["dtypes"][field]) <= set(dtypes), field
        else:
            assert mine["cells"][0][0] == spec["cells"][0][0] == "U"
    if "annotations" in real:
        numbers = [f for f in real["annotations"]["fields"] if f.startswith("bbox")]
        used = set().union(*(ours["annotations"]["dtypes"][f] for f in numbers))
        assert used == {"uint8", "uint16"}  # mixed within the bbox fields, as in the real file
        real_flags, our_flags = array_flags((REFERENCE / name).read_bytes()), array_flags(generated_mat(raw, name))
        for field in ("test", "relative_im_path", "fname"):
            if field in real_flags:
                assert our_flags[field] == real_flags[field], field  # logical uint8 test; UTF-8 char arrays


@needs_reference
def test_class_names_are_the_real_ones():
    meta = scipy.io.loadmat(REFERENCE / "cars_meta.mat")
    assert list(STANFORD_CARS_CLASS_NAMES) == [str(cell[0]) for cell in meta["class_names"].ravel()]


def test_the_class_names_are_196_and_one_holds_a_slash():
    assert len(STANFORD_CARS_CLASS_NAMES) == 196 == len(set(STANFORD_CARS_CLASS_NAMES))
    assert "Ram C/V Cargo Van Minivan 2012" in STANFORD_CARS_CLASS_NAMES


def test_images_vary_in_size_hold_some_grayscale_and_their_bboxes_are_1_based_inside(raw):
    annotations = scipy.io.loadmat(raw["updated"] / "cars_annos.mat")["annotations"].ravel()
    sizes, modes = set(), set()
    with tarfile.open(raw["updated"] / "car_ims.tgz") as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        assert names == [f"car_ims/{i:06d}.jpg" for i in range(1, len(annotations) + 1)]
        for row in annotations:
            with Image.open(io.BytesIO(tar.extractfile(str(row["relative_im_path"][0])).read())) as image:
                assert image.format == "JPEG"
                sizes.add(image.size)
                modes.add(image.mode)
                x1, y1, x2, y2 = (int(row[f][0, 0]) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
                assert 1 <= x1 < x2 <= image.width and 1 <= y1 < y2 <= image.height
                assert all(64 <= side <= 400 for side in image.size)
    assert len(sizes) > len(annotations) // 2
    assert modes == {"RGB", "L"}
    tests = [int(row["test"][0, 0]) for row in annotations]
    assert tests.count(1) == 4 * 4 and tests.count(0) == 4 * 3


def test_the_same_seed_gives_the_same_images_and_another_seed_others():
    first = generate_images(3, 2, 1, seed=5, min_size=64, max_size=96)
    again = generate_images(3, 2, 1, seed=5, min_size=64, max_size=96)
    other = generate_images(3, 2, 1, seed=6, min_size=64, max_size=96)
    assert first == again
    assert [image.jpeg for image in first] != [image.jpeg for image in other]


def test_the_pattern_inside_the_bbox_depends_on_the_class():
    """Class means of the grayscale bbox crops differ far more between classes than within one."""
    images = generate_images(4, 6, 1, seed=2, min_size=96, max_size=128)
    crops: dict[int, list[np.ndarray]] = {}
    for image in images:
        x1, y1, x2, y2 = image.bbox
        with Image.open(io.BytesIO(image.jpeg)) as decoded:
            crop = decoded.convert("L").crop((x1 - 1, y1 - 1, x2, y2)).resize((24, 24))
        spectrum = np.abs(np.fft.fft2(np.asarray(crop, dtype=float) - np.asarray(crop, dtype=float).mean()))
        crops.setdefault(image.class_id, []).append(spectrum[:12, :12].ravel() / np.linalg.norm(spectrum))
    centroids = {c: np.mean(v, axis=0) for c, v in crops.items()}
    correct = [max(centroids, key=lambda c: f @ centroids[c]) == k for k, fs in crops.items() for f in fs]
    assert np.mean(correct) >= 0.9


def test_default_sizes_give_numbers_stored_both_as_uint8_and_uint16(tmp_path):
    """As in the real files: the generator's default image sizes reach box coordinates above 255."""
    raw = make_synthetic(tmp_path / "raw", "updated", classes=4, train_per_class=4, test_per_class=2)
    rows = scipy.io.loadmat(raw / "cars_annos.mat")["annotations"].ravel()
    kinds = {row[field].dtype for row in rows for field in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")}
    assert kinds == {np.dtype(np.uint8), np.dtype(np.uint16)}


def test_an_interrupted_generation_leaves_no_annotations_and_the_demo_redoes_it(tmp_path, monkeypatch):
    import datasets.raw.synthetic as synthetic
    from datasets.raw.demo import prepare_demo

    real_write_tgz = synthetic._write_tgz

    def interrupted(path, *args, **kwargs):
        if path.name == "car_ims.tgz":
            path.write_bytes(b"half an archive")  # a damaged leftover, which the demo's rerun must replace
            raise KeyboardInterrupt
        real_write_tgz(path, *args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_tgz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path / "demo" / "raw", "updated", classes=2, train_per_class=1, test_per_class=1)
    assert not (tmp_path / "demo" / "raw" / "cars_annos.mat").exists()
    monkeypatch.setattr(synthetic, "_write_tgz", real_write_tgz)
    prepare_demo(tmp_path / "demo")
    assert (tmp_path / "demo" / "stanford" / "train_labels.csv").is_file()


def test_mirror_layouts_write_each_kaggle_mirrors_zips_and_member_names(tmp_path):
    small = {"classes": 2, "train_per_class": 1, "test_per_class": 1, "max_size": 64}
    devkit = ["README.txt", "cars_meta.mat", "cars_train_annos.mat", "cars_test_annos.mat"]
    numbered = [f"{split}/{i:05d}.jpg" for split in ("cars_train", "cars_test") for i in (1, 2)]

    def names(path: Path) -> list[str]:
        with zipfile.ZipFile(path) as archive:
            return sorted(archive.namelist())

    out = make_synthetic(tmp_path / "torchvision", "torchvision", **small)
    assert [p.name for p in out.iterdir()] == ["torchvision-stanford-cars.zip"]
    assert names(out / "torchvision-stanford-cars.zip") == sorted(
        [f"stanford_cars/{n}" for n in numbered] + [f"stanford_cars/devkit/{n}" for n in devkit]
        + ["stanford_cars/cars_test_annos_withlabels.mat"])

    out = make_synthetic(tmp_path / "nested", "kaggle-nested", **small)
    assert sorted(p.name for p in out.iterdir()) == ["standford-cars-dataset-meta.zip", "stanford-cars-dataset.zip"]
    assert names(out / "stanford-cars-dataset.zip") == sorted(
        ["cars_annos.mat"] + [f"{n.split('/')[0]}/{n}" for n in numbered])
    assert names(out / "standford-cars-dataset-meta.zip") == sorted(
        [f"devkit/{n}" for n in devkit] + ["cars_test_annos_withlabels (1).mat"])
    with zipfile.ZipFile(out / "stanford-cars-dataset.zip") as archive:
        paths = [str(r["relative_im_path"][0]) for r in
                 scipy.io.loadmat(io.BytesIO(archive.read("cars_annos.mat")))["annotations"].ravel()]
    assert paths == [f"car_ims/{i:06d}.jpg" for i in range(1, 5)]  # names no file of this zip, as users report

    out = make_synthetic(tmp_path / "by_class", "by-class", **small)
    members = names(out / "stanford-cars-by-classes-folder.zip")
    assert [m.rsplit("/", 1)[0] for m in members] == [
        "test/AM General Hummer SUV 2000", "test/Acura RL Sedan 2012",
        "train/AM General Hummer SUV 2000", "train/Acura RL Sedan 2012"]
    assert all(re.fullmatch(r"\d{6}\.jpg", m.rsplit("/", 1)[1]) for m in members)
    assert not any(m.endswith(".mat") for m in members)
