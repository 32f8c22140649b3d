"""Find the raw Stanford Cars downloads in a folder: which release (updated or original) and where each part is.

Each part may be an archive or its extracted folder (including the Kaggle mirror's nesting `cars_train/cars_train/`);
the test labels of the original release (`cars_test_annos_withlabels.mat`) may lie next to `devkit/` or inside it.
"""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import DataError

log = logging.getLogger("cars")

UPDATED = "updated"
ORIGINAL = "original"
WITHLABELS = "cars_test_annos_withlabels.mat"
DEVKIT_FILES = ("cars_meta.mat", "cars_train_annos.mat", WITHLABELS)


@dataclass(frozen=True)
class ImageSource:
    """The images of one archive (`.tgz`, read as a stream) or one extracted folder."""

    path: Path
    is_archive: bool

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class FileSource:
    """A small file on disk, or a member of the devkit archive when `member` is set (its bytes, read with the
    archive's other devkit files in one pass, are `data`)."""

    path: Path
    member: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def read_bytes(self) -> bytes:
        return self.path.read_bytes() if self.data is None else self.data


@dataclass(frozen=True)
class RawLayout:
    """A complete raw release: `images` maps a split name ('all' for the updated release) to its source."""

    name: str
    images: dict[str, ImageSource]
    annotations: dict[str, FileSource]
    meta: FileSource | None = None


def _folder(raw_dir: Path, name: str) -> Path | None:
    """`raw_dir/name`, or `raw_dir/name/name` when the outer folder only wraps the inner one (Kaggle mirrors)."""
    outer = raw_dir / name
    if not outer.is_dir():
        return None
    inner = outer / name
    if inner.is_dir() and not any(p.suffix.lower() == ".jpg" for p in outer.iterdir()):
        return inner
    return outer


def _images(raw_dir: Path, name: str) -> ImageSource | None:
    """The archive `name.tgz` (preferred: an extracted folder may be partial) or the folder `name/`."""
    for suffix in (".tgz", ".tar.gz"):
        archive = raw_dir / f"{name}{suffix}"
        if archive.is_file():
            return ImageSource(archive, True)
    folder = _folder(raw_dir, name)
    return ImageSource(folder, False) if folder else None


def _devkit_folders(raw_dir: Path) -> list[Path]:
    candidates = [raw_dir / "devkit", raw_dir / "car_devkit" / "devkit", raw_dir / "car_devkit"]
    return [c for c in candidates if c.is_dir()]


def _devkit_archive_files(archive: Path) -> dict[str, FileSource]:
    """Base name -> the devkit files inside `car_devkit.tgz`, read in one pass over the archive."""
    found: dict[str, FileSource] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if name not in DEVKIT_FILES or name in found:
                    continue
                if not member.isfile():
                    raise DataError(f"{archive}:{member.name} is not a regular file (a link or a folder); "
                                    "it is not a Stanford Cars devkit, download it again")
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file always has contents
                found[name] = FileSource(archive, member.name, handle.read())
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{archive} is damaged or truncated ({error}); download it again") from None
    return found


def _devkit_files(raw_dir: Path) -> dict[str, FileSource]:
    """Where each devkit file is: extracted folders first, then the `car_devkit.tgz` archive, then `raw_dir`."""
    found: dict[str, FileSource] = {}
    for folder in _devkit_folders(raw_dir):
        for name in DEVKIT_FILES:
            if name not in found and (folder / name).is_file():
                found[name] = FileSource(folder / name)
    archive = raw_dir / "car_devkit.tgz"
    if archive.is_file() and any(name not in found for name in DEVKIT_FILES):
        for name, source in _devkit_archive_files(archive).items():
            found.setdefault(name, source)
    if WITHLABELS not in found:
        # next to devkit/; Kaggle mirrors add a ' (1)' when the file was downloaded twice
        for candidate in [raw_dir / WITHLABELS, *sorted(raw_dir.glob("cars_test_annos_withlabels*.mat"))]:
            if candidate.is_file():
                found[WITHLABELS] = FileSource(candidate)
                break
    return found


def detect_layout(raw_dir: Path) -> RawLayout:
    """The complete release in `raw_dir`; the updated one when both are complete. DataError lists what is missing."""
    raw_dir = Path(raw_dir)
    if raw_dir.is_file():
        raise DataError(f"raw data path {str(raw_dir)!r} is a file; set stanford_raw_data_path (or pass "
                        "--raw-data-path) to the folder that holds it and the other Stanford Cars downloads")
    if not raw_dir.is_dir():
        raise DataError(f"raw data folder {str(raw_dir)!r} does not exist; set stanford_raw_data_path (or pass "
                        "--raw-data-path) to the folder holding the Stanford Cars downloads")
    devkit = _devkit_files(raw_dir)

    car_ims = _images(raw_dir, "car_ims")
    annos = raw_dir / "cars_annos.mat"
    missing_updated = [] if car_ims else ["car_ims.tgz (or car_ims/)"]
    missing_updated += [] if annos.is_file() else ["cars_annos.mat"]

    train, test = _images(raw_dir, "cars_train"), _images(raw_dir, "cars_test")
    missing_original = [] if train else ["cars_train.tgz (or cars_train/)"]
    missing_original += [] if test else ["cars_test.tgz (or cars_test/)"]
    for name in ("cars_train_annos.mat", "cars_meta.mat"):
        if name not in devkit:
            missing_original.append(f"{name} (in car_devkit.tgz or devkit/)")
    if WITHLABELS not in devkit:
        missing_original.append(f"{WITHLABELS} (next to devkit/ or inside it)")

    if not missing_updated:
        if not missing_original:
            log.info("both releases are in %s: using the updated one (car_ims.tgz, cars_annos.mat)", raw_dir)
        assert car_ims is not None
        return RawLayout(UPDATED, {"all": car_ims}, {"annos": FileSource(annos)}, devkit.get("cars_meta.mat"))
    if not missing_original:
        assert train is not None and test is not None
        return RawLayout(ORIGINAL, {"train": train, "test": test},
                         {"train": devkit["cars_train_annos.mat"], "test": devkit[WITHLABELS]},
                         devkit["cars_meta.mat"])
    raise DataError(f"no complete Stanford Cars download in {raw_dir}: the updated release lacks "
                    f"{', '.join(missing_updated)}; the original release lacks {', '.join(missing_original)} "
                    "(see documentation/dataset.md)")
