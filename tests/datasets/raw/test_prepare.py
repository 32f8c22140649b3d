"""Preparing both raw releases, as archives or extracted folders, into the prepared-data contract."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import datasets.raw.image_extraction as image_extraction
import datasets.raw.prepare as prepare_module
import prepare_stanford_dataset as prepare_script
from datasets.raw.class_names import STANFORD_CARS_CLASS_NAMES
from datasets.raw.prepare import CSV_COLUMNS, labels_csv, prepare_dataset
from tests import helpers
from tests.datasets.raw.prepare_helpers import ROOT, extract_archives, labels_by_pixels, make_raw
from utils.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def raw_downloads(tmp_path_factory) -> dict[str, Path]:
    """The same tiny synthetic dataset written once in each release's layout."""
    root = tmp_path_factory.mktemp("raw")
    return {layout: make_raw(root / layout, layout) for layout in ("updated", "original")}


def copy_raw(raw_downloads: dict[str, Path], layout: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(raw_downloads[layout], tmp_path / f"raw_{layout}"))


def check_contract(data: Path, train: int, test: int) -> None:
    """The prepared folder holds exactly what the CSVs list, in the documented format."""
    for split, count in (("train", train), ("test", test)):
        table = pd.read_csv(labels_csv(data, split), keep_default_na=False)
        assert list(table.columns) == CSV_COLUMNS
        assert len(table) == count
        assert table["image_fname"].tolist() == sorted(table["image_fname"])
        assert sorted(p.name for p in (data / split).iterdir()) == table["image_fname"].tolist()
        for column in ("class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"):
            assert table[column].dtype.kind == "i"
        assert table["class_name"].tolist() == [STANFORD_CARS_CLASS_NAMES[c - 1] for c in table["class"]]
        for row in table.itertuples():
            with Image.open(data / split / row.image_fname) as image:
                assert 1 <= row.bbox_x1 < row.bbox_x2 <= image.width
                assert 1 <= row.bbox_y1 < row.bbox_y2 <= image.height


@pytest.mark.parametrize("layout", ["updated", "original"])
def test_archives_of_either_release_prepare_into_the_contract(raw_downloads, tmp_path, layout):
    summary = prepare_dataset(raw_downloads[layout], tmp_path / "data")
    check_contract(tmp_path / "data", train=9, test=6)
    assert (summary.layout, summary.train_images, summary.test_images, summary.classes) == (layout, 9, 6, 3)
    assert not summary.skipped_because_complete and not summary.is_full_dataset


@pytest.mark.parametrize("layout", ["updated", "original"])
def test_extracted_folders_prepare_like_the_archives(raw_downloads, tmp_path, layout):
    prepare_dataset(raw_downloads[layout], tmp_path / "from_archives")
    raw = copy_raw(raw_downloads, layout, tmp_path)
    extract_archives(raw)
    assert not list(raw.glob("*.tgz"))
    summary = prepare_dataset(raw, tmp_path / "from_folders")
    assert summary.layout == layout
    for split in ("train", "test"):
        assert labels_csv(tmp_path / "from_folders", split).read_text() == \
            labels_csv(tmp_path / "from_archives", split).read_text()
    assert labels_by_pixels(tmp_path / "from_folders") == labels_by_pixels(tmp_path / "from_archives")


def test_kaggle_nesting_with_labels_inside_devkit_is_found(raw_downloads, tmp_path):
    raw = copy_raw(raw_downloads, "original", tmp_path)
    extract_archives(raw, kaggle=True)
    assert (raw / "cars_train" / "cars_train" / "00001.jpg").is_file()
    (raw / "cars_test_annos_withlabels.mat").rename(raw / "car_devkit" / "devkit" / "cars_test_annos_withlabels.mat")
    summary = prepare_dataset(raw, tmp_path / "data")
    assert summary.layout == "original"
    check_contract(tmp_path / "data", train=9, test=6)


def test_both_releases_hold_the_same_images_classes_and_bboxes(raw_downloads, tmp_path):
    prepare_dataset(raw_downloads["updated"], tmp_path / "updated")
    prepare_dataset(raw_downloads["original"], tmp_path / "original")
    names = {layout: set(pd.read_csv(labels_csv(tmp_path / layout, "train"))["image_fname"])
             for layout in ("updated", "original")}
    assert names["updated"] != names["original"]  # the releases name images differently...
    by_pixels = labels_by_pixels(tmp_path / "updated")
    assert len(by_pixels) == 15
    assert by_pixels == labels_by_pixels(tmp_path / "original")  # ...but hold the same labelled images


def test_updated_release_is_used_when_both_are_present(raw_downloads, tmp_path, caplog):
    raw = copy_raw(raw_downloads, "original", tmp_path)
    for path in raw_downloads["updated"].iterdir():
        if not (raw / path.name).exists():
            shutil.copy(path, raw / path.name)
    with caplog.at_level(logging.INFO, logger="cars"):
        summary = prepare_dataset(raw, tmp_path / "data")
    assert summary.layout == "updated"
    assert "using the updated one" in caplog.text


def test_rerun_on_a_complete_folder_is_a_noop_unless_forced(raw_downloads, tmp_path, caplog):
    data = tmp_path / "data"
    prepare_dataset(raw_downloads["updated"], data)
    marker = data / "train" / sorted(p.name for p in (data / "train").iterdir())[0]
    marker.write_bytes(marker.read_bytes())  # same content, so the folder stays complete
    before = marker.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="cars"):
        summary = prepare_dataset(raw_downloads["updated"], data)
    assert summary.skipped_because_complete
    assert "already complete" in caplog.text and "--force" in caplog.text
    assert marker.stat().st_mtime_ns == before
    forced = prepare_dataset(raw_downloads["updated"], data, force=True)
    assert not forced.skipped_because_complete
    check_contract(data, train=9, test=6)


def test_a_deleted_image_makes_the_folder_incomplete_again(raw_downloads, tmp_path):
    data = tmp_path / "data"
    prepare_dataset(raw_downloads["original"], data)
    victim = next((data / "test").iterdir())
    victim.unlink()
    summary = prepare_dataset(raw_downloads["original"], data)
    assert not summary.skipped_because_complete and victim.is_file()


def test_interrupted_run_leaves_no_csv_and_a_rerun_completes(raw_downloads, tmp_path, monkeypatch):
    data = tmp_path / "data"
    prepare_dataset(raw_downloads["updated"], data)  # a complete folder, as before a forced rerun
    real_write = image_extraction.write_image
    calls = []

    def interrupted_write(payload: bytes, destination: Path) -> None:
        calls.append(destination)
        if len(calls) == 5:
            destination.write_bytes(payload[: len(payload) // 2])  # a half-written file, as a kill leaves it
            raise KeyboardInterrupt
        real_write(payload, destination)

    monkeypatch.setattr(image_extraction, "write_image", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(raw_downloads["updated"], data, force=True)
    assert not labels_csv(data, "train").exists() and not labels_csv(data, "test").exists()
    monkeypatch.setattr(image_extraction, "write_image", real_write)
    summary = prepare_dataset(raw_downloads["updated"], data)
    assert not summary.skipped_because_complete
    check_contract(data, train=9, test=6)
    prepare_dataset(raw_downloads["updated"], tmp_path / "uninterrupted")
    assert labels_by_pixels(data) == labels_by_pixels(tmp_path / "uninterrupted")  # the half-written image too


def run_script(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return helpers.run_script("prepare_stanford_dataset.py", list(args), cwd)


def test_script_makes_synthetic_data_prepares_it_and_reruns_as_a_noop(tmp_path):
    made = run_script("--make-synthetic", str(tmp_path / "raw"), "--layout", "original", "--classes", "2",
                      "--train-per-class", "2", "--test-per-class", "1", "--seed", "3")
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == \
        ["car_devkit.tgz", "cars_test.tgz", "cars_test_annos_withlabels.mat", "cars_train.tgz"]
    args = ("--raw-data-path", str(tmp_path / "raw"), "--data-path", str(tmp_path / "data"))
    first = run_script(*args)
    assert first.returncode == 0, first.stderr
    assert "prepared 4 train and 2 test images of 2 classes" in first.stdout
    assert "not the full Stanford Cars dataset" in first.stdout
    again = run_script(*args)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_script_failures_are_one_line_with_exit_code_2(tmp_path):
    missing = run_script("--raw-data-path", str(tmp_path / "nowhere"), "--data-path", str(tmp_path / "data"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("data error: raw data folder") and "nowhere" in last


def test_script_says_which_key_to_set_when_the_raw_path_is_a_placeholder(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("stanford_raw_data_path: <path to the raw downloads>\n")
    result = run_script("--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "stanford_raw_data_path" in result.stderr and "--raw-data-path" in result.stderr


def test_the_summary_recognises_the_full_dataset_counts(caplog):
    def table(rows: int) -> pd.DataFrame:
        return pd.DataFrame({"class": [i % 196 + 1 for i in range(rows)]})

    full = prepare_module._summary("updated", {"train": table(8144), "test": table(8041)}, 1.0, skipped=False)
    assert (full.train_images, full.test_images, full.classes, full.is_full_dataset) == (8144, 8041, 196, True)
    short = prepare_module._summary("updated", {"train": table(8144), "test": table(8040)}, 1.0, skipped=False)
    assert not short.is_full_dataset
    with caplog.at_level(logging.INFO, logger="cars"):
        prepare_module._log_summary(full, Path("data"))
    assert "this is the full Stanford Cars dataset" in caplog.text


def test_a_folder_prepared_from_other_data_is_refused_unless_forced(raw_downloads, tmp_path):
    """Preparing over another download's complete folder would destroy it even if this run failed: refused before
    anything is written; --force replaces it and removes the images the new download does not list."""
    data = tmp_path / "data"
    prepare_dataset(raw_downloads["updated"], data)
    before = {p.name: p.read_bytes() for p in (data / "train").iterdir()}
    with pytest.raises(DataError, match="holds a prepared dataset of other raw data.*--force"):
        prepare_dataset(raw_downloads["original"], data)
    assert {p.name: p.read_bytes() for p in (data / "train").iterdir()} == before
    assert labels_csv(data, "train").is_file() and labels_csv(data, "test").is_file()
    prepare_dataset(raw_downloads["original"], data, force=True)
    check_contract(data, train=9, test=6)  # the updated release's 000001.jpg... are gone
    assert sorted(p.name for p in (data / "train").iterdir()) == [f"{i:05d}.jpg" for i in range(1, 10)]


def test_files_the_download_does_not_list_are_refused_unless_forced(raw_downloads, tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "stray.jpg").write_bytes(b"left over")
    with pytest.raises(DataError, match=r"1 file\(s\) this download does not list: .*stray.jpg"):
        prepare_dataset(raw_downloads["updated"], data)
    prepare_dataset(raw_downloads["updated"], data, force=True)
    assert not (data / "train" / "stray.jpg").exists()
    check_contract(data, train=9, test=6)
    (data / "test" / "stray.jpg").write_bytes(b"added later")  # the folder is no longer what training accepts
    with pytest.raises(DataError, match="stray.jpg"):
        prepare_dataset(raw_downloads["updated"], data)


def test_a_data_path_that_is_a_file_is_named(raw_downloads, tmp_path):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(DataError, match="data path .*data' is a file"):
        prepare_dataset(raw_downloads["updated"], tmp_path / "data")


def test_a_folder_where_an_image_must_go_is_named_in_one_line(raw_downloads, tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "000001.jpg").mkdir()
    result = run_script("--raw-data-path", str(raw_downloads["updated"]), "--data-path", str(data), "--force")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"data error: cannot write {data / 'train' / '000001.jpg'}: Is a directory"


def test_an_image_that_cannot_be_written_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"cannot write .*absent/000001.jpg: No such file or directory"):
        image_extraction.write_image(b"jpeg", tmp_path / "absent" / "000001.jpg")


def test_the_script_expands_a_home_folder_in_config_paths(raw_downloads, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(raw_downloads["original"], home / "raw")
    config = tmp_path / "config.yml"
    config.write_text("stanford_raw_data_path: ~/raw\nstanford_data_path: ~/data\n")
    result = helpers.run_script("prepare_stanford_dataset.py", ["--config", str(config)], tmp_path,
                                env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    check_contract(home / "data", train=9, test=6)


def test_make_synthetic_refuses_to_overwrite_raw_files_unless_forced(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "car_ims.tgz").write_bytes(b"a real download")
    small = ["--classes", "2", "--train-per-class", "1", "--test-per-class", "1"]
    with pytest.raises(DataError, match="already holds car_ims.tgz; choose an empty folder, or pass --force"):
        prepare_script.main(["--make-synthetic", str(raw), *small])
    assert (raw / "car_ims.tgz").read_bytes() == b"a real download"
    assert prepare_script.main(["--make-synthetic", str(raw), *small, "--force"]) == 0
    assert tarfile.is_tarfile(raw / "car_ims.tgz")


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "-1"], "--seed is -1"),
    (["--raw-data-path", "x"], "--make-synthetic only writes raw data; --raw-data-path"),
    (["--min-size", "300", "--max-size", "200"], "--min-size 300 and --max-size 200"),
])
def test_make_synthetic_option_mistakes_are_config_errors(tmp_path, args, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        prepare_script.main(["--make-synthetic", str(tmp_path / "raw"), *args])
    assert not (tmp_path / "raw").exists()
