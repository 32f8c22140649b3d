"""The segment check passes the JPEGs Pillow writes in every variant and fails every truncation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from datasets.raw.image_extraction import decode_error
from datasets.raw.jpeg_segments import jpeg_segments_intact
from tests.datasets.raw.prepare_helpers import broken_huffman_table


def noisy(mode: str = "RGB", size: tuple[int, int] = (96, 64)) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def with_exif_thumbnail() -> bytes:
    """A JPEG whose APP1 segment holds a whole JPEG thumbnail, with its own SOS and EOI markers."""
    thumbnail = jpeg(noisy(size=(16, 16)))
    exif = Image.Exif()
    exif[0x010F] = "camera"
    app1 = b"Exif\x00\x00" + exif.tobytes()[6:] + thumbnail  # the thumbnail's bytes, inside the segment's length
    return jpeg(noisy(), exif=app1)


VARIANTS = {
    "baseline": lambda: jpeg(noisy()),
    "grayscale": lambda: jpeg(noisy("L")),
    "progressive": lambda: jpeg(noisy(), progressive=True),
    "restart markers": lambda: jpeg(noisy(), restart_marker_blocks=1),
    "optimized, 4:4:4": lambda: jpeg(noisy(), optimize=True, subsampling=0, quality=95),
    "exif thumbnail": with_exif_thumbnail,
    "bytes after EOI": lambda: jpeg(noisy()) + b"\x00" * 64 + b"trailer",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_jpegs_of_every_kind_pass(variant: str) -> None:
    data = VARIANTS[variant]()
    Image.open(io.BytesIO(data)).load()  # a valid file to begin with
    assert jpeg_segments_intact(data)
    assert decode_error(data) is None


@pytest.mark.parametrize("variant", ["baseline", "progressive", "restart markers", "exif thumbnail"])
def test_every_truncation_fails(variant: str) -> None:
    data = VARIANTS[variant]()
    for cut in [*range(0, len(data) - 1, max(1, len(data) // 97)), len(data) - 2, len(data) - 1]:
        assert not jpeg_segments_intact(data[:cut]), cut


def test_non_jpegs_fail() -> None:
    assert not jpeg_segments_intact(b"")
    assert not jpeg_segments_intact(b"<html>not found</html>")
    png = io.BytesIO()
    noisy().save(png, format="PNG")
    assert not jpeg_segments_intact(png.getvalue())


def test_a_file_the_check_cannot_vouch_for_is_decoded_and_the_decoder_decides() -> None:
    data = VARIANTS["baseline"]()
    truncated = data[: len(data) // 2]
    assert "truncated" in decode_error(truncated)
    # a parameterless marker in the header is unusual enough to fail the segment check, but decoders skip it
    unusual = data[:2] + b"\xff\xd0" + data[2:]
    assert not jpeg_segments_intact(unusual)
    assert decode_error(unusual) is None


def test_damage_inside_intact_segments_takes_a_full_check() -> None:
    data = broken_huffman_table(VARIANTS["baseline"]())
    assert jpeg_segments_intact(data)
    assert decode_error(data) is None
    assert decode_error(data, full=True) is not None
