"""Read the Stanford Cars annotation `.mat` files of both releases into pandas DataFrames.

Every number in the real files is a MATLAB double stored as uint8 or uint16, so `scipy.io.loadmat` returns uint8
for some rows and uint16 for others within one field; numbers are cast to int64 before anything else touches them
(uint8 arithmetic wraps around at 256).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import pandas as pd
import scipy.io

from utils.errors import DataError

MAT_MAGIC = b"MATLAB 5.0 MAT-file"
BBOX_COLUMNS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]


def load_mat(data: bytes, source: str) -> dict[str, Any]:
    """`scipy.io.loadmat` of `data`; anything that is not a readable MAT v5 file is a DataError naming `source`."""
    if not data.startswith(MAT_MAGIC):
        start = data[:40].decode("ascii", errors="replace").strip().splitlines()
        hint = " (it looks like an HTML page: a failed download saves the error page under the .mat name)" \
            if b"<html" in data[:1024].lower() or b"<!doctype" in data[:1024].lower() else ""
        raise DataError(f"{source} is not a MAT file{hint}; it starts with {(start[0] if start else '')!r}; "
                        "download it again")
    try:
        return scipy.io.loadmat(BytesIO(data))
    except Exception as error:  # scipy raises ValueError, TypeError, zlib.error... on damaged files
        raise DataError(f"{source} is a damaged MAT file ({type(error).__name__}: {error}); download it again") \
            from None


def _variable(mat: dict[str, Any], name: str, source: str) -> np.ndarray:
    if name not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{source} has no variable {name!r} (found: {', '.join(found) or 'none'})")
    return mat[name]


def _struct_rows(mat: dict[str, Any], fields: list[str], source: str) -> np.ndarray:
    """The 1xN struct array `annotations`, checked to hold `fields`."""
    annotations = _variable(mat, "annotations", source)
    names = annotations.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise DataError(f"{source}: annotations lack the field(s) {', '.join(missing)} "
                        f"(found: {', '.join(names) or 'none'})")
    return annotations.ravel()


def _ints(rows: np.ndarray, field: str, source: str) -> np.ndarray:
    """One int64 per row; each row's value may be uint8 or uint16 (cast before any arithmetic)."""
    values = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        cell = np.asarray(row[field]).ravel()
        if cell.size != 1:
            raise DataError(f"{source}: annotation {i + 1} has {cell.size} values in {field!r}, expected 1")
        value = cell[0]
        # bool: MATLAB logicals (the `test` field); a float must be a finite whole number, never truncated
        whole = isinstance(value, (np.integer, np.bool_)) or (
            isinstance(value, np.floating) and np.isfinite(value) and float(value).is_integer())
        if not whole:
            raise DataError(f"{source}: annotation {i + 1} has {field} = {value!r}; expected a whole number")
        values[i] = np.int64(value)
    return values


def _strings(rows: np.ndarray, field: str, source: str) -> list[str]:
    out = []
    for i, row in enumerate(rows):
        cell = np.asarray(row[field]).ravel()
        if cell.size != 1 or not isinstance(cell[0], str):
            raise DataError(f"{source}: annotation {i + 1} has no text in {field!r}")
        out.append(str(cell[0]))
    return out


def class_names_from(mat: dict[str, Any], source: str) -> list[str]:
    """The `class_names` cell array (1xC of char arrays) as a list; class id k is `names[k - 1]`."""
    cells = _variable(mat, "class_names", source).ravel()
    names = []
    for cell in cells:
        text = np.asarray(cell).ravel()
        if text.size != 1 or not isinstance(text[0], str):
            raise DataError(f"{source}: class_names must be a cell array of strings")
        names.append(str(text[0]))
    if not names:
        raise DataError(f"{source}: class_names is empty")
    return names


def read_class_names(data: bytes, source: str) -> list[str]:
    """Class names of `cars_meta.mat` (or `cars_annos.mat`, which holds the same list)."""
    return class_names_from(load_mat(data, source), source)


def updated_annotations(mat: dict[str, Any], source: str) -> pd.DataFrame:
    """`cars_annos.mat` rows: relative_im_path, bbox_x1..bbox_y2, class, test (int64; test 0 = train, 1 = test)."""
    fields = ["relative_im_path", *BBOX_COLUMNS, "class", "test"]
    rows = _struct_rows(mat, fields, source)
    frame = pd.DataFrame({"relative_im_path": _strings(rows, "relative_im_path", source)})
    for field in fields[1:]:
        frame[field] = _ints(rows, field, source)
    bad = frame.loc[~frame["test"].isin([0, 1]), "relative_im_path"].tolist()
    if bad:
        raise DataError(f"{source}: 'test' must be 0 or 1; it is not for {len(bad)} image(s), e.g. {bad[:3]}")
    return frame


def original_annotations(mat: dict[str, Any], source: str) -> pd.DataFrame:
    """`cars_train_annos.mat` / `cars_test_annos_withlabels.mat` rows: fname, bbox_x1..bbox_y2, class (int64)."""
    fields = [*BBOX_COLUMNS, "class", "fname"]
    rows = _struct_rows(mat, fields, source)
    frame = pd.DataFrame({"fname": _strings(rows, "fname", source)})
    for field in fields[:-1]:
        frame[field] = _ints(rows, field, source)
    return frame
