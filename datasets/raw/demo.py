"""The data of `train.py --demo`: a small dataset generated in the real raw formats and prepared, and the overrides
that train the template's recipe on it on the CPU."""

from __future__ import annotations

import logging
from pathlib import Path

from datasets.raw.prepare import prepare_dataset
from datasets.raw.synthetic import make_synthetic
from utils.configuration import literal

log = logging.getLogger("cars")

DEMO_CLASSES = 10


def prepare_demo(base: Path) -> list[str]:
    """Generate raw data under `base/raw` (once), prepare it into `base/stanford`; return the demo's overrides.

    The overrides keep the template's recipe (GhostNet, label smoothing, AdamW, MultiStepLR, the C-50 augmentations)
    and shrink what makes it slow: 64 px images, 30 epochs of 240 images with milestones scaled to them, no DataLoader
    workers (on 2 cores they would compete with the training threads).
    """
    raw, prepared = base / "raw", base / "stanford"
    # cars_annos.mat is written last: without it, an earlier generation was interrupted and is redone
    if not (raw / "cars_annos.mat").exists():
        log.info("demo: generating a synthetic raw dataset (%d classes) in %s", DEMO_CLASSES, raw)
        make_synthetic(raw, layout="updated", classes=DEMO_CLASSES, train_per_class=24, test_per_class=8, seed=0,
                       overwrite=True)
    prepare_dataset(raw, prepared)
    return [
        f"stanford_raw_data_path={literal(str(raw))}",
        f"stanford_data_path={literal(str(prepared))}",
        f"output_path={literal(str(base / 'output'))}",
        f"logging_dir={literal(str(base / 'logs'))}",
        f"mlflow_tracking_uri={literal('sqlite:///' + (base / 'mlruns.db').as_posix())}",
        "image_size=[64, 64]",
        "batch_size=32",
        "num_epochs=30",
        "lr_scheduler_params.milestones=[20, 26]",
        "num_workers=0",
        "accelerator=cpu",
        "devices=1",
        "tags=[demo]",
        "description=train.py --demo on generated data",
    ]
