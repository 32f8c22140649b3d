"""Copy the annotated images out of one archive (a single streaming pass) or one extracted folder, checking each.

Only members whose base name is annotated are written, each to a path this module builds itself
(`<split folder>/<base name>`), so nothing can land outside the data folder; members with absolute paths, `..`,
links or devices make the run fail (tarfile's `data` filter, plus a refusal of anything it would only rewrite).
Decompression runs in a `gzip` process where there is one, and decode checks and writes in a small thread pool
(Pillow's decoder and file writes release the GIL), so the three overlap as `tar` and `gzip` do in a shell pipe.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import posixpath
import shutil
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from tqdm import tqdm

from datasets.raw_layout import ImageSource
from utils.errors import DataError

IN_FLIGHT = 64  # images held in memory between the reader and the checking threads
CHECK_THREADS = max(2, min(8, os.cpu_count() or 2))  # decode checks are the costly part: use the cores there are
READ_BUFFER = 1 << 20  # tarfile's default 10 KiB stream buffer costs a Python call per 10 KiB


@dataclass
class ExtractionReport:
    """What one source held: annotated base names read and written, and the names of what did not fit."""

    seen: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    unannotated: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)


def decode_error(data: bytes) -> str | None:
    """Why `data` is not a complete image, or None. JPEGs decode at 1/8 scale (`draft`): the decoder still reads
    every entropy-coded byte, so truncated or corrupt files fail, at a fraction of a full decode's cost."""
    try:
        with Image.open(BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft(None, (1, 1))
            image.load()
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... for broken files
        return f"{type(error).__name__}: {error}"
    return None


def write_image(data: bytes, destination: Path) -> None:
    """Write the image bytes as they are (no re-encoding)."""
    with open(destination, "wb") as handle:
        handle.write(data)


class _CheckedWriter:
    """Decode-checks and writes images on worker threads, holding at most IN_FLIGHT images in memory."""

    def __init__(self, report: ExtractionReport, progress: tqdm, workers: int = CHECK_THREADS) -> None:
        self.report, self.progress = report, progress
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
        error = decode_error(data)
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


@contextlib.contextmanager
def _unzipped(archive: Path) -> Iterator[BinaryIO]:
    """The decompressed bytes of a .tgz, read to the end on success so that the gzip CRC-32 and length are checked:
    a damaged download fails even where the damage would still decode.

    Where a `gzip` program is on the PATH it decompresses in a process of its own, on another core, as `tar -xzf`
    does: Python's zlib in this process would compete for the GIL with the tar parsing and the decode checks.
    Elsewhere `gzip.GzipFile` does the same in this process.
    """
    program = shutil.which("gzip")
    if program is None:
        with gzip.GzipFile(archive, "rb") as stream:
            yield stream
            while stream.read(READ_BUFFER):
                pass
        return
    process = subprocess.Popen([program, "-dc", str(archive)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               bufsize=READ_BUFFER)
    try:
        yield process.stdout
        while process.stdout.read(READ_BUFFER):
            pass
        complaint = process.stderr.read().decode(errors="replace").strip()
        if process.wait() != 0:
            # gzip's last line reads "gzip: <archive>: <what is wrong>"; the archive is named by the caller.
            reason = complaint.splitlines()[-1].rsplit(": ", 1)[-1] if complaint else f"exit {process.returncode}"
            raise zlib.error(f"gzip: {reason}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def _archive_members(source: ImageSource, destination: Path) -> Iterator[tuple[str, str, bytes | None]]:
    """(member name, base name, bytes or None for non-files) in archive order, in one streaming pass (`r|`)."""
    try:
        with _unzipped(source.path) as unzipped, \
                tarfile.open(fileobj=unzipped, mode="r|", bufsize=READ_BUFFER) as archive:
            for member in archive:
                _refuse_unsafe(member, source.path, destination)
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                handle = archive.extractfile(member)
                yield member.name, base, handle.read() if handle is not None else None
    except zlib.error as error:
        raise DataError(f"{source.path} is truncated or damaged ({error}); download it again") from None
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{source.path} is truncated or damaged ({type(error).__name__}: {error}); "
                        "download it again") from None


def _folder_members(source: ImageSource) -> Iterator[tuple[str, str, bytes | None]]:
    """(path, base name, bytes) of the files of an extracted folder, in name order."""
    with os.scandir(source.path) as entries:
        files = sorted(entry.name for entry in entries if entry.is_file())
    for name in files:
        yield str(source.path / name), name, None


def extract_images(source: ImageSource, wanted: dict[str, Path], destination: Path, label: str) -> ExtractionReport:
    """Write each annotated image of `source` (base name -> target path in `wanted`) after a decode check.

    Everything is read once, in order; the report lists what was unannotated, duplicated or undecodable.
    """
    report = ExtractionReport()
    members = _archive_members(source, destination) if source.is_archive else _folder_members(source)
    with tqdm(total=len(wanted), desc=label, unit="img", disable=None) as progress:
        writer = _CheckedWriter(report, progress)
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
