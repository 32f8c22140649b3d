"""Small file helpers shared by data preparation, the image cache and the run folder."""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file, flushed to disk, then renamed: readers never see half a file, and a crash leaves
    either the old file or the new one."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_text_atomic(path: Path, text: str) -> None:
    """`text` as UTF-8, written as `write_bytes_atomic` does."""
    write_bytes_atomic(path, text.encode("utf-8"))


def checkpoint_path_problem(path: Path) -> str | None:
    """Why `path` cannot be a checkpoint file (missing, or a folder), or None."""
    if Path(path).is_dir():
        return f"{path} is a folder; pass a checkpoint file such as <run>/checkpoints/best.ckpt"
    if not Path(path).is_file():
        return f"{path} does not exist; pass a checkpoint such as <run>/checkpoints/best.ckpt"
    return None
