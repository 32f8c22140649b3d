"""Find the raw Stanford Cars downloads: which layout (updated release, original devkit release, by-class folders)
and where each part is.

The raw path may be a folder or a `.zip` as Kaggle serves it; the `.zip` files inside a raw folder are read too
(one mirror's images and another's annotations may come as two zips). Each part may be an archive (`.tgz`) or its
extracted folder, including the Kaggle mirrors' nesting `cars_train/cars_train/`; a wrapper folder inside a zip or
folder (`stanford_cars/`, even beside other files) is looked into. Zips are only listed here (their central
directory); images are read later, member by member, by `datasets.raw.image_extraction`.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import re
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import DataError

log = logging.getLogger("cars")

UPDATED = "updated"
ORIGINAL = "original"
BY_CLASS = "by-class"
WITHLABELS = "cars_test_annos_withlabels.mat"
DEVKIT_FILES = ("cars_meta.mat", "cars_train_annos.mat", WITHLABELS)
DEVKIT_DIRS = ("devkit", "car_devkit/devkit", "car_devkit")
IMAGE_SUFFIXES = (".jpg", ".jpeg")
MARKERS = {"car_ims", "car_ims.tgz", "cars_annos.mat", "cars_train", "cars_train.tgz", "cars_test", "cars_test.tgz",
           "devkit", "car_devkit", "car_devkit.tgz", WITHLABELS}
WALK_DEPTH = 6  # folders deep enough for car_data/car_data/train/<class>/x.jpg, shallow enough for a home folder
# the name a browser or Kaggle gives a second download of a file: "x (1).mat"
COPY_SUFFIX = re.compile(r" ?\(\d+\)")


@dataclass(frozen=True)
class ImageSource:
    """The images of one `.tgz` (read as a stream), one extracted folder, or one folder inside a `.zip`.

    `member` is the folder inside the zip (or the `.tgz` inside it); `by_class` sources hold one folder per class.
    """

    path: Path
    kind: str  # "tgz", "folder" or "zip"
    member: str = ""
    by_class: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


@dataclass(frozen=True)
class FileSource:
    """A small file on disk, or a member of an archive when `member` is set (its bytes, read when the archive was
    listed, are `data`)."""

    path: Path
    member: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def read_bytes(self) -> bytes:
        return self.path.read_bytes() if self.data is None else self.data


@dataclass(frozen=True)
class RawLayout:
    """A complete raw download: `images` maps a split name ('all' for the updated release) to its source.

    By-class downloads have no annotation files: `class_files` maps each split to (class folder, file name) pairs.
    """

    name: str
    images: dict[str, ImageSource]
    annotations: dict[str, FileSource]
    meta: FileSource | None = None
    class_files: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


class Tree:
    """The files of a folder or of a zip, by relative POSIX path below `base` (the folder a wrapper folder holds)."""

    def __init__(self, path: Path, files: set[str], zip_file: zipfile.ZipFile | None = None) -> None:
        self.path, self.zip = path, zip_file
        self.all_files = files
        self.children: dict[str, list[str]] = {}  # folder -> base names of its files
        for name in sorted(files):
            self.children.setdefault(posixpath.dirname(name), []).append(posixpath.basename(name))
        self.dirs = set(self.children)
        for folder in list(self.dirs):
            while folder:
                folder = posixpath.dirname(folder)
                self.dirs.add(folder)
        # the shallowest folder (3 deep at most) holding a part of a release: a zip's wrapper folder
        # (stanford_cars/), whatever else lies beside it
        holders = sorted((d for d in self.dirs if d.count("/") < 3 and (
            MARKERS & set(self.files_in(d)) or MARKERS & set(self.subdirs(d)))), key=lambda d: (d.count("/"), d))
        self.base = "" if not holders or "" in holders else holders[0]

    def rel(self, name: str) -> str:
        return posixpath.join(self.base, name) if self.base else name

    def is_file(self, name: str) -> bool:
        return self.rel(name) in self.all_files

    def is_dir(self, name: str) -> bool:
        return self.rel(name) in self.dirs

    def files_in(self, full: str) -> list[str]:
        """Base names of the files directly in the folder `full` (a path from the tree's root)."""
        return self.children.get(full, [])

    def subdirs(self, full: str) -> list[str]:
        return sorted(posixpath.basename(d) for d in self.dirs if d and posixpath.dirname(d) == full)

    def describe(self, name: str) -> str:
        return f"{self.path}:{self.rel(name)}" if self.zip else str(self.path / self.rel(name))

    def file(self, name: str) -> FileSource:
        if self.zip is None:
            return FileSource(self.path / self.rel(name))
        try:
            return FileSource(self.path, self.rel(name), self.zip.read(self.rel(name)))
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise DataError(f"{self.path} is damaged ({error}); download it again") from None

    def images(self, name: str, kind: str, by_class: bool = False) -> ImageSource:
        if self.zip is None:
            return ImageSource(self.path / self.rel(name), kind, "", by_class)
        return ImageSource(self.path, "zip" if kind == "folder" else "tgz", self.rel(name), by_class)


def _refuse_unsafe_zip(path: Path, info: zipfile.ZipInfo) -> None:
    """DataError for a member a crafted zip could use to write elsewhere (nothing is extracted by its name anyway)."""
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    mode = info.external_attr >> 16
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        reason = "an absolute path or '..'"
    elif stat.S_ISLNK(mode):
        reason = "a link"
    else:
        return
    raise DataError(f"{path} holds the unsafe member {name!r} ({reason}); it is not a Stanford Cars download, "
                    "refusing to use it")


def zip_tree(path: Path) -> Tree:
    """The listing of a zip (its central directory only), after refusing unsafe member names."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise DataError(f"{path} is truncated or damaged, or not a zip ({error}); download it again") from None
    files = set()
    for info in archive.infolist():
        _refuse_unsafe_zip(path, info)
        if not info.is_dir():
            files.add(info.filename)
    return Tree(path, files, archive)


def folder_tree(path: Path) -> Tree:
    """The listing of a folder, WALK_DEPTH folders deep, skipping hidden folders."""
    files = set()
    for folder, dirs, names in os.walk(path):
        rel = Path(folder).relative_to(path).as_posix()
        depth = 0 if rel == "." else rel.count("/") + 1
        dirs[:] = [d for d in dirs if not d.startswith(".")] if depth < WALK_DEPTH else []
        files.update(name if rel == "." else f"{rel}/{name}" for name in names)
    return Tree(path, files)


def _one_named(tree: Tree, folder: str, name: str) -> str | None:
    """`folder/name`, or the one copy of it a second download named `name (1).mat`; None when absent."""
    exact = posixpath.join(folder, name) if folder else name
    if tree.is_file(exact):
        return exact
    stem, suffix = posixpath.splitext(name)
    full = tree.rel(folder) if folder else tree.base
    copies = [f for f in tree.files_in(full)
              if f.endswith(suffix) and f.startswith(stem) and COPY_SUFFIX.fullmatch(f[len(stem):-len(suffix)])]
    if len(copies) > 1:
        raise DataError(f"{tree.describe(folder)} holds several copies of {name} ({', '.join(copies)}) and no file "
                        f"of that exact name; keep one (renamed to {name})")
    if copies:
        chosen = posixpath.join(folder, copies[0]) if folder else copies[0]
        log.info("using %s as %s (the only candidate)", tree.describe(chosen), name)
        return chosen
    return None


def _images(tree: Tree, name: str) -> ImageSource | None:
    """The archive `name.tgz` (preferred: an extracted folder may be partial) or the folder `name/`, or
    `name/name/` when the outer folder only wraps the inner one (Kaggle mirrors)."""
    for suffix in (".tgz", ".tar.gz"):
        if tree.is_file(name + suffix):
            return tree.images(name + suffix, "tgz")
    if not tree.is_dir(name):
        return None
    inner = f"{name}/{name}"
    if tree.is_dir(inner) and not any(f.lower().endswith(IMAGE_SUFFIXES) for f in tree.files_in(tree.rel(name))):
        return tree.images(inner, "folder")
    return tree.images(name, "folder")


def _devkit_archive_files(source: FileSource) -> dict[str, FileSource]:
    """Base name -> the devkit files inside `car_devkit.tgz`, read in one pass over the archive."""
    found: dict[str, FileSource] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(source.read_bytes()), mode="r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if name not in DEVKIT_FILES or name in found:
                    continue
                if not member.isfile():
                    raise DataError(f"{source}:{member.name} is not a regular file (a link or a folder); "
                                    "it is not a Stanford Cars devkit, download it again")
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file always has contents
                found[name] = FileSource(source.path, f"{source.member + ':' if source.member else ''}{member.name}",
                                         handle.read())
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{source} is damaged or truncated ({error}); download it again") from None
    return found


def _devkit_files(tree: Tree) -> dict[str, FileSource]:
    """Where each devkit file is: extracted folders first, then `car_devkit.tgz`, then next to them."""
    found: dict[str, FileSource] = {}
    for folder in DEVKIT_DIRS:
        if tree.is_dir(folder):
            for name in DEVKIT_FILES:
                if name not in found and (chosen := _one_named(tree, folder, name)):
                    found[name] = tree.file(chosen)
    if tree.is_file("car_devkit.tgz") and any(name not in found for name in DEVKIT_FILES):
        for name, source in _devkit_archive_files(tree.file("car_devkit.tgz")).items():
            found.setdefault(name, source)
    if WITHLABELS not in found and (chosen := _one_named(tree, "", WITHLABELS)):
        found[WITHLABELS] = tree.file(chosen)
    return found


def _class_files(tree: Tree, split: str) -> list[tuple[str, str]] | None:
    """(class folder, file name) of a by-class split folder `split/<class>/*.jpg`; None when it is not one."""
    if not tree.is_dir(split):
        return None
    full = tree.rel(split)
    classes = tree.subdirs(full)
    if not classes or any(f.lower().endswith(IMAGE_SUFFIXES) for f in tree.files_in(full)):
        return None
    pairs = [(c, f) for c in classes for f in tree.files_in(f"{full}/{c}") if f.lower().endswith(IMAGE_SUFFIXES)]
    return pairs or None


def _by_class(tree: Tree) -> RawLayout | None:
    """By-class folders `train/<class>/` and `test/<class>/`, at the top or inside other folders (3 at most)."""
    prefix = f"{tree.base}/" if tree.base else ""
    parents = sorted({posixpath.dirname(d[len(prefix):]) for d in tree.dirs
                      if d.startswith(prefix) and posixpath.basename(d) == "train"}, key=lambda p: (p.count("/"), p))
    for parent in parents:
        if parent.count("/") >= 3:
            break
        splits = {split: posixpath.join(parent, split) for split in ("train", "test")}
        files = {split: _class_files(tree, path) for split, path in splits.items()}
        if files["train"] and files["test"]:
            return RawLayout(BY_CLASS, {split: tree.images(path, "folder", by_class=True)
                                        for split, path in splits.items()},
                             {}, None, {split: found or [] for split, found in files.items()})
    return None


def _trees(raw: Path) -> list[Tree]:
    if raw.is_file():
        if raw.suffix.lower() != ".zip":
            raise DataError(f"raw data path {str(raw)!r} is a file but not a .zip; set stanford_raw_data_path (or "
                            "pass --raw-data-path) to the Kaggle .zip or to the folder that holds the downloads")
        return [zip_tree(raw)]
    if not raw.is_dir():
        raise DataError(f"raw data folder {str(raw)!r} does not exist; set stanford_raw_data_path (or pass "
                        "--raw-data-path) to the folder holding the Stanford Cars downloads (or the Kaggle .zip)")
    zips = sorted(p for p in raw.iterdir() if p.suffix.lower() == ".zip" and p.is_file())
    return [folder_tree(raw), *(zip_tree(z) for z in zips)]


def _first(trees: list[Tree], find: Callable[[Tree], object]) -> object | None:
    for tree in trees:
        found = find(tree)
        if found:
            return found
    return None


def detect_layout(raw_path: Path) -> RawLayout:
    """The complete download at `raw_path` (a folder or a zip): the updated release when it is complete, else the
    original release, else by-class folders. DataError lists what is missing."""
    raw_path = Path(raw_path)
    trees = _trees(raw_path)
    devkit: dict[str, FileSource] = {}
    for tree in trees:
        for name, source in _devkit_files(tree).items():
            devkit.setdefault(name, source)

    car_ims = _first(trees, lambda t: _images(t, "car_ims"))
    annos = _first(trees, lambda t: (c := _one_named(t, "", "cars_annos.mat")) and t.file(c))
    missing_updated = [] if car_ims else ["car_ims.tgz (or car_ims/)"]
    missing_updated += [] if annos else ["cars_annos.mat"]

    train, test = _first(trees, lambda t: _images(t, "cars_train")), _first(trees, lambda t: _images(t, "cars_test"))
    missing_images = [] if train else ["cars_train.tgz (or cars_train/)"]
    missing_images += [] if test else ["cars_test.tgz (or cars_test/)"]
    missing_annotations = [f"{name} (in car_devkit.tgz or devkit/)"
                           for name in ("cars_train_annos.mat", "cars_meta.mat") if name not in devkit]
    if WITHLABELS not in devkit:
        missing_annotations.append(f"{WITHLABELS} (next to devkit/ or inside it)")
    missing_original = missing_images + missing_annotations

    if not missing_updated:
        if not missing_original:
            log.info("both releases are in %s: using the updated one (car_ims, cars_annos.mat)", raw_path)
        assert isinstance(car_ims, ImageSource) and isinstance(annos, FileSource)
        return RawLayout(UPDATED, {"all": car_ims}, {"annos": annos}, devkit.get("cars_meta.mat"))
    if not missing_original:
        assert isinstance(train, ImageSource) and isinstance(test, ImageSource)
        return RawLayout(ORIGINAL, {"train": train, "test": test},
                         {"train": devkit["cars_train_annos.mat"], "test": devkit[WITHLABELS]},
                         devkit["cars_meta.mat"])
    by_class = _first(trees, _by_class)
    if by_class:
        assert isinstance(by_class, RawLayout)
        return by_class
    if annos and not car_ims and (train or test):
        # the Kaggle mirror that ships the updated release's cars_annos.mat beside the original release's images
        raise DataError(f"{annos} (updated release) names its images car_ims/000001.jpg ..., but there is no "
                        f"car_ims.tgz or car_ims/ here; the images in cars_train/ and cars_test/ are numbered per "
                        f"split by the original release, whose annotations are missing: "
                        f"{', '.join(missing_annotations + missing_images)}; "
                        "add them (see documentation/dataset.md, supported mirrors) instead of renaming images")
    raise DataError(f"no complete Stanford Cars download in {raw_path}: the updated release lacks "
                    f"{', '.join(missing_updated)}; the original release lacks {', '.join(missing_original)}; "
                    "nor are there by-class folders train/<class>/*.jpg and test/<class>/*.jpg "
                    "(see documentation/dataset.md)")
