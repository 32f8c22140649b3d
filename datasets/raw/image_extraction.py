"""Copy the annotated images out of one archive (a single streaming pass over a `.tgz`, or over one folder's members
of a `.zip`, in the order they are stored) or one extracted folder, checking each.

Only members whose base name is annotated are written, each to a path this module builds itself
(`<split folder>/<base name>`), so nothing can land outside the data folder; members with absolute paths, `..`,
links or devices make the run fail (tarfile's `data` filter, plus a refusal of anything it would only rewrite).
Each image is checked before it is written (see `decode_error`). Checks and writes run in a small thread pool:
Pillow's decoder, zlib and file writes release the GIL, so decompression and checking overlap as `tar` and `gzip`
do in a shell pipe.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from datasets.raw.jpeg_segments import jpeg_segments_intact
from datasets.raw.layout import ImageSource
from utils.errors import DataError

IN_FLIGHT = 64  # images held in memory between the reader and the checking threads
CHECK_THREADS = max(2, min(8, os.cpu_count() or 2))  # full decode checks are the costly part: use the cores there are
# tarfile's default 10 KiB stream buffer costs a Python call per 10 KiB; a larger one costs copies, because each read
# re-slices what is left of it (a 480 MiB archive read in 3.1-3.6 s with 1 MiB, 2.5-2.8 s with 64 KiB).
READ_BUFFER = 1 << 16


@dataclass
class ExtractionReport:
    """What one source held: annotated base names read and written, and the names of what did not fit."""

    seen: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    unannotated: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)


def decode_error(data: bytes, full: bool = False) -> str | None:
    """Why `data` is not a complete image, or None.

    Pillow parses the header of every file. A JPEG whose segments are intact (`jpeg_segments_intact`: catches every
    truncation) passes without decoding unless `full`; any other file is decoded, at 1/8 scale for JPEGs (`draft`:
    the decoder still reads every entropy-coded byte), and the decoder's verdict counts.
    """
    try:
        with Image.open(BytesIO(data)) as image:
            if image.format == "JPEG":
                if not full and jpeg_segments_intact(data):
                    return None
                image.draft(None, (1, 1))
            image.load()
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... for broken files
        return f"{type(error).__name__}: {error}"
    return None


def write_image(data: bytes, destination: Path) -> None:
    """Write the image bytes as they are (no re-encoding)."""
    try:
        with open(destination, "wb") as handle:
            handle.write(data)
    except OSError as error:
        raise DataError(f"cannot write {destination}: {error.strerror or error}") from None


class _CheckedWriter:
    """Decode-checks and writes images on worker threads, holding at most IN_FLIGHT images in memory."""

    def __init__(self, report: ExtractionReport, progress: tqdm, full_check: bool,
                 workers: int = CHECK_THREADS) -> None:
        self.report, self.progress, self.full_check = report, progress, full_check
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.slots = threading.BoundedSemaphore(IN_FLIGHT)
        self.lock = threading.Lock()
        self.failure: BaseException | None = None

    def submit(self, name: str, base: str, data: bytes, destination: Path) -> None:
        if self.failure is not None:
            raise self.failure
        self.slots.acquire()
        future = self.pool.submit(self._check_and_write, name, base, data, destination)
        future.add_done_callback(self._done)

    def _check_and_write(self, name: str, base: str, data: bytes, destination: Path) -> None:
        error = decode_error(data, self.full_check)
        if error is None:
            write_image(data, destination)
        with self.lock:
            if error is None:
                self.report.written.add(base)
            else:
                self.report.undecodable.append(f"{name} ({error})")
            self.progress.update(1)

    def _done(self, future: Future) -> None:
        self.slots.release()
        if not future.cancelled() and future.exception() is not None and self.failure is None:
            self.failure = future.exception()

    def close(self, cancel: bool = False) -> None:
        """Wait for the queued images (or drop them when `cancel`); re-raise a worker's failure unless cancelled."""
        self.pool.shutdown(wait=True, cancel_futures=cancel)
        if not cancel and self.failure is not None:
            raise self.failure


def _refuse_unsafe(member: tarfile.TarInfo, archive: Path, destination: Path) -> None:
    """DataError for members a crafted archive could use to write elsewhere (we never extract them anyway).

    Plain files and folders with relative names are what the real archives hold and pass at once (the filter's
    two `realpath` calls per member would cost a quarter of the extraction time); anything else is diagnosed by
    tarfile's `data` filter and refused, even where the filter would only rewrite it (a leading '/', an inner link).
    """
    name = member.name
    parts = name.replace("\\", "/").split("/")
    plain = (member.isfile() or member.isdir()) and not name.startswith(("/", "\\")) and ".." not in parts \
        and not (len(name) > 1 and name[1] == ":")
    if plain:
        return
    try:
        tarfile.data_filter(member, str(destination))
        reason = "a link, device or absolute path"
    except tarfile.FilterError as error:
        reason = str(error)
    raise DataError(f"{archive} holds the unsafe member {name!r} ({reason}); it is not a Stanford Cars download, "
                    "refusing to use it")


def _archive_members(source: ImageSource, destination: Path) -> Iterator[tuple[str, str, bytes | None]]:
    """(member name, base name, bytes or None for non-files) in archive order, in one streaming pass.

    The archive is read as a stream (`r|`) through `gzip.GzipFile` rather than tarfile's own `r|gz`, because
    GzipFile checks the CRC-32 and length at the end of the stream: a damaged download fails even where the damage
    would still decode. A `.tgz` inside a zip is streamed from the zip the same way.
    """
    try:
        with ExitStack() as stack:
            if source.member:
                zipped = stack.enter_context(zipfile.ZipFile(source.path))
                raw = stack.enter_context(zipped.open(source.member))
            else:
                raw = stack.enter_context(open(source.path, "rb"))
            unzipped = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            archive = stack.enter_context(tarfile.open(fileobj=unzipped, mode="r|", bufsize=READ_BUFFER))
            for member in archive:
                _refuse_unsafe(member, source.path, destination)
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                handle = archive.extractfile(member)
                yield member.name, base, handle.read() if handle is not None else None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile) as error:
        raise DataError(f"{source} is truncated or damaged ({type(error).__name__}: {error}); "
                        "download it again") from None


def _zip_members(source: ImageSource) -> Iterator[tuple[str, str, bytes | None]]:
    """(member name, base name, bytes) of the files in one folder of a zip (one folder deeper for by-class
    sources), in the order they are stored, each read once (zipfile checks each member's CRC-32)."""
    prefix = source.member.rstrip("/") + "/"
    depth = 1 if source.by_class else 0
    try:
        with zipfile.ZipFile(source.path) as archive:
            infos = [i for i in archive.infolist() if i.filename.startswith(prefix) and not i.is_dir()
                     and i.filename[len(prefix):].count("/") == depth]
            for info in sorted(infos, key=lambda i: i.header_offset):
                yield info.filename, posixpath.basename(info.filename), archive.read(info)
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise DataError(f"{source.path} is truncated or damaged ({type(error).__name__}: {error}); "
                        "download it again") from None


def _folder_members(source: ImageSource) -> Iterator[tuple[str, str, bytes | None]]:
    """(path, base name, None) of the files of an extracted folder (of its class folders when by-class), in name
    order; the bytes are read when the image is wanted."""
    folders = sorted(p for p in source.path.iterdir() if p.is_dir()) if source.by_class else [source.path]
    for folder in folders:
        with os.scandir(folder) as entries:
            files = sorted(entry.name for entry in entries if entry.is_file())
        for name in files:
            yield str(folder / name), name, None


def extract_images(source: ImageSource, wanted: dict[str, Path], destination: Path, label: str,
                   full_check: bool = False) -> ExtractionReport:
    """Write each annotated image of `source` (base name -> target path in `wanted`) after a check (`decode_error`;
    `full_check` decodes every image).

    Everything is read once, in order; the report lists what was unannotated, duplicated or undecodable.
    """
    report = ExtractionReport()
    if source.kind == "tgz":
        members = _archive_members(source, destination)
    else:
        members = _zip_members(source) if source.kind == "zip" else _folder_members(source)
    with tqdm(total=len(wanted), desc=label, unit="img", disable=None) as progress:
        writer = _CheckedWriter(report, progress, full_check)
        try:
            for name, base, data in members:
                target = wanted.get(base)
                if target is None:
                    if base.lower().endswith(".jpg"):
                        report.unannotated.append(name)
                    continue
                if base in report.seen:
                    report.duplicates.append(name)
                    continue
                report.seen.add(base)
                if data is None:
                    data = Path(name).read_bytes()
                writer.submit(name, base, data, target)
        except BaseException:
            writer.close(cancel=True)  # the reader's own error is the one to report
            raise
        writer.close()
    if len(report.written) + len(report.undecodable) != len(report.seen):
        raise RuntimeError(f"{len(report.seen)} images read from {source} but only {len(report.written)} written")
    return report
