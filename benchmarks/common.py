"""What the benchmarks share: Stanford-Cars-like generated data, a description of the machine, markdown tables.

The generated JPEGs are about 700x480 like the real photos (mean size of Stanford Cars), with smooth gradients,
shapes and mild sensor-like noise so that they compress and decode like photographs rather than like pure noise.
They are written in the prepared-data contract of `datasets/stanford_data.py`.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw

from datasets.stanford_data import LABEL_COLUMNS

NUM_CLASSES = 196  # Stanford Cars


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like RGB image: a two-colour gradient, a few filled shapes, then noise of a few grey levels."""
    top, bottom = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).copy()
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x1, x2 = sorted(rng.integers(0, width, size=2).tolist())
        y1, y2 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x1, y1, x2, y2), fill=colour)
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, size=(height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def generate_prepared(root: Path, train_images: int, test_images: int, seed: int = 0,
                      classes: int = NUM_CLASSES) -> Path:
    """Write `root/{train,test}/*.jpg` and `root/{train,test}_labels.csv` (1-based classes, 1-based inclusive bboxes).

    Image sizes vary around 700x480; classes cycle through 1..classes. An existing folder is replaced.
    """
    rng = np.random.default_rng(seed)
    if root.exists():
        shutil.rmtree(root)
    for split, count in (("train", train_images), ("test", test_images)):
        (root / split).mkdir(parents=True)
        rows = []
        for index in range(count):
            width = int(rng.integers(600, 801))
            height = int(width * rng.uniform(0.6, 0.75))
            name = f"{index + 1:05d}.jpg"
            synthetic_photo(rng, width, height).save(root / split / name, quality=90)
            x1, y1 = int(rng.integers(1, width // 5)), int(rng.integers(1, height // 5))
            x2, y2 = int(rng.integers(4 * width // 5, width + 1)), int(rng.integers(4 * height // 5, height + 1))
            cls = index % classes + 1
            rows.append([name, cls, x1, y1, x2, y2, f"Synthetic car {cls}"])
        pd.DataFrame(rows, columns=LABEL_COLUMNS).to_csv(root / f"{split}_labels.csv", index=False)
    return root


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_driver() -> str:
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True)
        return result.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: timings on a shared machine are only as good as its quiet."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_description() -> list[str]:
    """Lines naming the hardware, the software versions, the load and the date, for the head of a table."""
    cores = len(os.sched_getaffinity(0))
    lines = [f"CPU: {_cpu_model()}, {cores} core(s) usable, {os.cpu_count()} online"]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}, driver {_gpu_driver()}, CUDA {torch.version.cuda}")
    else:
        lines.append("GPU: none")
    lines.append(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}, "
                 f"Python {platform.python_version()}")
    lines.append(f"date: {datetime.date.today().isoformat()}, load average (1, 5, 15 min) at start: {load_average()}")
    return lines


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; the first column left-aligned, the others right-aligned."""
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
