"""Raw Stanford Cars downloads (either release, or by-class folders; folders or zips) -> `train/`, `test/`,
`train_labels.csv`, `test_labels.csv`.

The label CSVs are written last, each through a temporary file and a rename: a data folder holding both is
complete, one without them is not (an interrupted run is simply run again). A complete folder is left alone
unless `force` is set.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from datasets.raw import mat_annotations as mat
from datasets.raw.class_names import class_ids_from_folders
from datasets.raw.image_extraction import ExtractionReport, extract_images
from datasets.raw.layout import BY_CLASS, ORIGINAL, UPDATED, RawLayout, detect_layout
from utils.errors import DataError
from utils.files import write_text_atomic

log = logging.getLogger("cars")

SPLITS = ("train", "test")
CSV_COLUMNS = ["image_fname", "class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class_name"]
FULL_DATASET = {"train": 8144, "test": 8041, "classes": 196}
SHOWN = 5  # names listed in an error before "... (N in all)"
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class PrepareSummary:
    """What `prepare_dataset` did (or found already done)."""

    layout: str
    train_images: int
    test_images: int
    classes: int
    seconds: float
    skipped_because_complete: bool
    is_full_dataset: bool


def labels_csv(data_dir: Path, split: str) -> Path:
    """`<data_dir>/<split>_labels.csv`."""
    return Path(data_dir) / f"{split}_labels.csv"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")


def _class_names(layout: RawLayout, annos_mat: dict | None) -> list[str]:
    """From the devkit's cars_meta.mat; cars_annos.mat's own `class_names` (the same list) when there is no devkit."""
    if layout.meta is not None:
        return mat.read_class_names(layout.meta.read_bytes(), str(layout.meta))
    assert annos_mat is not None
    return mat.class_names_from(annos_mat, str(layout.annotations["annos"]))


def _by_class_frames(layout: RawLayout) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Per split: image_fname, class, empty bboxes, class_name from the class folders; plus the class names.

    Folders that all name Stanford Cars classes keep the devkit's class ids and names; other folder sets are
    numbered 1..K in name order under their own names.
    """
    folders = sorted({folder for files in layout.class_files.values() for folder, _ in files})
    known = class_ids_from_folders(folders)
    if known is None:
        log.warning("the class folders of %s are not all Stanford Cars class names: numbering %d classes 1..%d in "
                    "name order", layout.images["train"], len(folders), len(folders))
        known = {folder: (i, folder) for i, folder in enumerate(folders, 1)}
    frames = {}
    for split, files in layout.class_files.items():
        frame = pd.DataFrame({"image_fname": [name for _, name in files],
                              "class": [known[folder][0] for folder, _ in files],
                              "class_name": [known[folder][1] for folder, _ in files]})
        names = frame["image_fname"]
        twice = sorted(set(names[names.duplicated()]))
        if twice:
            raise DataError(f"{layout.images[split]}: the same file name in several class folders (the prepared "
                            f"split folder cannot hold both): {_listing(twice)}")
        for column in mat.BBOX_COLUMNS:
            frame[column] = pd.array([pd.NA] * len(frame), dtype="Int64")  # these mirrors have no boxes
        frames[split] = frame
    names_by_id = dict(known.values())
    return frames, [names_by_id.get(i, f"class {i}") for i in range(1, max(names_by_id) + 1)]


def _annotation_frames(layout: RawLayout) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Per split: image_fname (base name), class, bboxes; plus the class names."""
    if layout.name == BY_CLASS:
        return _by_class_frames(layout)
    if layout.name == UPDATED:
        source = layout.annotations["annos"]
        annos_mat = mat.load_mat(source.read_bytes(), str(source))
        table = mat.updated_annotations(annos_mat, str(source))
        table["image_fname"] = table["relative_im_path"].map(lambda p: p.replace("\\", "/").rsplit("/", 1)[-1])
        frames = {"train": table[table["test"] == 0], "test": table[table["test"] == 1]}
        names = _class_names(layout, annos_mat)
    else:
        frames = {}
        for split in SPLITS:
            source = layout.annotations[split]
            table = mat.original_annotations(mat.load_mat(source.read_bytes(), str(source)), str(source))
            frames[split] = table.rename(columns={"fname": "image_fname"})
        names = _class_names(layout, None)
    return frames, names


def expected_tables(layout: RawLayout) -> dict[str, pd.DataFrame]:
    """The label tables (CSV_COLUMNS, sorted by image_fname) the raw annotations call for, after checking them."""
    frames, names = _annotation_frames(layout)
    tables = {}
    for split, frame in frames.items():
        source = layout.annotations["annos" if layout.name == UPDATED else split] if layout.annotations \
            else layout.images[split]
        unsafe = [n for n in frame["image_fname"] if not SAFE_NAME.fullmatch(n)]
        if unsafe:
            raise DataError(f"{source}: image names must be plain file names; not so: {_listing(unsafe)}")
        outside = frame[(frame["class"] < 1) | (frame["class"] > len(names))]
        if len(outside):
            found = [f"{row.image_fname} (class {row['class']})" for _, row in outside.iterrows()]
            raise DataError(f"{source}: class ids must be 1..{len(names)} (the class names of "
                            f"{layout.meta or source}); outside it: {_listing(found)}")
        bad_box = frame.dropna(subset=mat.BBOX_COLUMNS)
        bad_box = bad_box[(bad_box["bbox_x1"] < 1) | (bad_box["bbox_y1"] < 1)
                          | (bad_box["bbox_x2"] < bad_box["bbox_x1"]) | (bad_box["bbox_y2"] < bad_box["bbox_y1"])]
        if len(bad_box):
            found = [f"{row.image_fname} ({row.bbox_x1}, {row.bbox_y1}, {row.bbox_x2}, {row.bbox_y2})"
                     for row in bad_box.itertuples()]
            raise DataError(f"{source}: bounding boxes must be 1-based with x1 <= x2 and y1 <= y2; not so: "
                            f"{_listing(found)}")
        table = frame.copy()
        table["class_name"] = [names[c - 1] for c in table["class"]]
        tables[split] = table[CSV_COLUMNS].sort_values("image_fname").reset_index(drop=True)
    for split, table in tables.items():
        names_in = table["image_fname"]
        twice = sorted(set(names_in[names_in.duplicated()]))
        if twice:
            raise DataError(f"the {split} annotations list some images more than once: {_listing(twice)}")
    if layout.name == UPDATED:
        both = sorted(set(tables["train"]["image_fname"]) & set(tables["test"]["image_fname"]))
        if both:
            raise DataError(f"{layout.annotations['annos']}: images both in train and test: {_listing(both)}")
    return tables


def _csv_text(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, lineterminator="\n")


def is_complete(data_dir: Path, tables: dict[str, pd.DataFrame]) -> bool:
    """True when both CSVs hold exactly `tables` and each split folder holds exactly the images they list."""
    for split, table in tables.items():
        csv = labels_csv(data_dir, split)
        if not csv.is_file() or csv.read_text(encoding="utf-8") != _csv_text(table):
            return False
        folder = Path(data_dir) / split
        if not all((folder / name).is_file() for name in table["image_fname"]):
            return False
    return not _extra_files(data_dir, tables)


def _extra_files(data_dir: Path, tables: dict[str, pd.DataFrame]) -> list[Path]:
    """What the split folders hold besides the images `tables` list (training refuses such folders)."""
    extra = []
    for split, table in tables.items():
        folder = Path(data_dir) / split
        if folder.is_dir():
            listed = set(table["image_fname"])
            extra += sorted(p for p in folder.iterdir() if p.name not in listed)
    return extra


def _check_replaceable(data_dir: Path, tables: dict[str, pd.DataFrame], force: bool) -> None:
    """Refuse to overwrite a folder that holds other data, unless `force` (which removes the other images).

    A folder with label CSVs of other data is a complete preparation of another download: preparing over it would
    destroy it even when this run fails. Files the new tables do not list would make training refuse the folder.
    """
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"data path {str(data_dir)!r} is a file; set stanford_data_path (or pass --data-path) to a "
                        "folder")
    csvs = {split: labels_csv(data_dir, split) for split in tables}
    other = [csv.name for split, csv in csvs.items()
             if csv.is_file() and csv.read_text(encoding="utf-8") != _csv_text(tables[split])]
    extra = _extra_files(data_dir, tables)
    if force:
        for path in extra:
            if path.is_dir() and not path.is_symlink():
                raise DataError(f"{path} is a folder; the split folders of {data_dir} may only hold images: "
                                "remove it")
            path.unlink()
        return
    if other:
        raise DataError(f"{data_dir} holds a prepared dataset of other raw data (its {' and '.join(other)} "
                        f"differ from what this download calls for); pass --force to replace it, or choose "
                        "another data path")
    if extra:
        raise DataError(f"the split folders of {data_dir} hold {len(extra)} file(s) this download does not list: "
                        f"{_listing([str(p) for p in extra])}; pass --force to remove them, or choose another "
                        "data path")


def _wanted(layout: RawLayout, tables: dict[str, pd.DataFrame], data_dir: Path) -> dict[str, dict[str, Path]]:
    """Per image source: base name -> where the image goes."""
    def targets(split: str) -> dict[str, Path]:
        return {name: data_dir / split / name for name in tables[split]["image_fname"]}

    if layout.name in (ORIGINAL, BY_CLASS):
        return {split: targets(split) for split in SPLITS}
    return {"all": {**targets("train"), **targets("test")}}


def _check_reports(reports: dict[str, tuple[ExtractionReport, dict[str, Path]]], layout: RawLayout) -> None:
    """One DataError listing every problem the extraction found."""
    problems = []
    for key, (report, wanted) in reports.items():
        source = layout.images[key]
        missing = sorted(set(wanted) - report.seen)
        if missing:
            problems.append(f"{len(missing)} annotated image(s) missing from {source}: {_listing(missing)}")
        if report.unannotated:
            problems.append(f"{len(report.unannotated)} image(s) in {source} without annotation: "
                            f"{_listing(sorted(report.unannotated))}")
        if report.duplicates:
            problems.append(f"image(s) present more than once in {source}: {_listing(report.duplicates)}")
        if report.undecodable:
            problems.append(f"{len(report.undecodable)} image(s) in {source} do not decode: "
                            f"{_listing(sorted(report.undecodable))}")
    if problems:
        raise DataError("; ".join(problems) + "; the data folder was left incomplete (no label CSVs)")


def _summary(layout: str, tables: dict[str, pd.DataFrame], seconds: float, skipped: bool) -> PrepareSummary:
    classes = len(set(tables["train"]["class"]) | set(tables["test"]["class"]))
    full = (len(tables["train"]), len(tables["test"]), classes) == tuple(FULL_DATASET.values())
    return PrepareSummary(layout, len(tables["train"]), len(tables["test"]), classes, round(seconds, 2), skipped, full)


def _log_summary(summary: PrepareSummary, data_dir: Path) -> None:
    kind = "by-class folders, no bounding boxes" if summary.layout == BY_CLASS else f"{summary.layout} release"
    counts = (f"{summary.train_images} train and {summary.test_images} test images of {summary.classes} classes "
              f"({kind})")
    if summary.skipped_because_complete:
        log.info("%s is already complete: %s; nothing to do (checked in %.1f s; use --force to prepare it again)",
                 data_dir, counts, summary.seconds)
    else:
        log.info("prepared %s in %s in %.1f s", counts, data_dir, summary.seconds)
    if summary.is_full_dataset:
        log.info("this is the full Stanford Cars dataset (8,144 train / 8,041 test images, 196 classes)")
    else:
        log.warning("this is not the full Stanford Cars dataset (which has 8,144 train / 8,041 test images of "
                    "196 classes)")


def prepare_dataset(raw_dir: Path, data_dir: Path, force: bool = False, full_check: bool = False) -> PrepareSummary:
    """Prepare `data_dir` from the raw downloads in `raw_dir`; a complete `data_dir` is kept unless `force`.

    Every image is checked before it is written: its header and JPEG segments, or with `full_check` a decode.
    """
    start = time.perf_counter()
    raw_dir, data_dir = Path(raw_dir), Path(data_dir)
    layout = detect_layout(raw_dir)
    log.info("raw data in %s: %s %s (images: %s; labels: %s)", raw_dir, layout.name,
             "folders" if layout.name == BY_CLASS else "release", ", ".join(map(str, layout.images.values())),
             ", ".join(map(str, layout.annotations.values())) or "the class folders' names")
    tables = expected_tables(layout)
    if not force and is_complete(data_dir, tables):
        summary = _summary(layout.name, tables, time.perf_counter() - start, skipped=True)
        _log_summary(summary, data_dir)
        return summary

    _check_replaceable(data_dir, tables, force)
    for split in SPLITS:
        # the CSVs mark a complete folder: they go first and come back last
        labels_csv(data_dir, split).unlink(missing_ok=True)
        (data_dir / split).mkdir(parents=True, exist_ok=True)
    reports = {}
    for key, wanted in _wanted(layout, tables, data_dir).items():
        source = layout.images[key]
        label = source.member.rsplit("/", 1)[-1] if source.member else source.path.name
        reports[key] = (extract_images(source, wanted, data_dir, label, full_check), wanted)
    _check_reports(reports, layout)
    for split in SPLITS:
        write_text_atomic(labels_csv(data_dir, split), _csv_text(tables[split]))
    summary = _summary(layout.name, tables, time.perf_counter() - start, skipped=False)
    _log_summary(summary, data_dir)
    return summary
