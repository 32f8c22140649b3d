"""Shared fixtures: small prepared datasets written straight in the prepared-data contract."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# A user's own config.yml (README: cp config_template.yml config.yml) must not change what the tests run; the
# scripts the tests start inherit this too. Tests of the local settings unset it.
os.environ["CARS_LOCAL_CONFIG"] = ""

COLUMNS = ["image_fname", "class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class_name"]


def write_prepared(root: Path, classes: int = 3, train_per_class: int = 4, test_per_class: int = 2,
                   seed: int = 0) -> Path:
    """A prepared data folder with random JPEGs of varied sizes (a few grayscale) and 1-based bboxes."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for index in range(classes * per_class):
            cls = index % classes + 1
            width, height = int(rng.integers(70, 130)), int(rng.integers(60, 110))
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if index % 5 == 3:
                image = image.convert("L")
            name = f"{index + 1:05d}.jpg"
            image.save(root / split / name, quality=90)
            x1, y1 = int(rng.integers(1, width // 3)), int(rng.integers(1, height // 3))
            x2, y2 = int(rng.integers(2 * width // 3, width + 1)), int(rng.integers(2 * height // 3, height + 1))
            rows.append([name, cls, x1, y1, x2, y2, f"Car {cls}"])
        pd.DataFrame(rows, columns=COLUMNS).sort_values("image_fname").to_csv(root / f"{split}_labels.csv",
                                                                                index=False)
    return root


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    return write_prepared(tmp_path / "stanford")


@pytest.fixture(scope="session")
def generated_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic raw data prepared by the real code (3 classes, 4 + 2 images each), made once per session.

    Tests only read it: one that needs to change the data copies it first.
    """
    from tests.helpers import generated_prepared_data

    return generated_prepared_data(tmp_path_factory.mktemp("generated"))


@pytest.fixture(scope="session")
def trained_run(generated_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of one one-epoch training of the real code on `generated_data` (tiny CPU config), made once
    per session; tests read its checkpoints and may add files beside them (models/evaluate.py's `evaluation/`)."""
    from models.training_run import train
    from tests.helpers import tiny_config
    from utils.configuration import load_config

    base = tmp_path_factory.mktemp("trained")
    return train(load_config(str(tiny_config(base, generated_data, num_epochs=1))))
