"""What does a sweep trial cost before its first batch? Imports, data module, image cache, model, trainer, tracker.

    python -m benchmarks.trial_start [--train 8144] [--test 8041] [--rounds 3] [--folder /tmp/trial_start]

A sweep worker (`python -m utils.sweep`) pays the imports once; every trial then builds a data module (reads the label
files, checks the folders), opens the image cache (hashes every file's name, size and modification time to find the
cache file, then memory-maps it), builds the model, a Trainer and an MLflow run. The first trial of all workers also
builds the cache: that row is printed too, but it depends on the images' size, and the images written here are one
small JPEG copied `--train + --test` times (the file count is what the later trials' cost depends on). Later trials
are the median of `--rounds`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.common import machine_description, markdown_table, quiet_lightning
from utils.cli import positive_int, run_main

IMPORTS = ("import train, utils.sweep, optuna, pytorch_lightning, mlflow; "
           "import datasets.prepared.stanford_data_module, models.net_module, utils.trackers")


def write_copies(root: Path, train: int, test: int) -> Path:
    """A prepared folder of `train` + `test` copies of one 64x48 JPEG (3 classes)."""
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(0)
    sample = root / "sample.jpg"
    root.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(sample, quality=90)
    for split, count in (("train", train), ("test", test)):
        (root / split).mkdir()
        rows = []
        for index in range(count):
            name = f"{index + 1:05d}.jpg"
            shutil.copyfile(sample, root / split / name)
            cls = index % 3 + 1
            rows.append([name, cls, 1, 1, 64, 48, f"Car {cls}"])
        pd.DataFrame(rows, columns=["image_fname", "class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2",
                                    "class_name"]).to_csv(root / f"{split}_labels.csv", index=False)
    sample.unlink()
    return root


def import_seconds() -> float:
    """Wall time of a fresh interpreter importing what a worker imports."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return time.perf_counter() - started


def trial_start(config: dict, run_dir: Path) -> dict[str, float]:
    """Seconds of each part of one trial's start, as train() runs them."""
    import pytorch_lightning as pl

    from datasets.prepared.stanford_data_module import StanfordCarsDataModule
    from models.net_module import NetModule
    from utils.trackers import build_loggers

    times = {}
    started = time.perf_counter()
    data = StanfordCarsDataModule(config)
    times["data module (labels, folder check)"] = time.perf_counter() - started
    started = time.perf_counter()
    data.setup("fit")
    times["image cache (find, open)"] = time.perf_counter() - started
    started = time.perf_counter()
    model = NetModule.from_config(config, data.num_classes, data.class_names)
    times["model"] = time.perf_counter() - started
    started = time.perf_counter()
    pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=run_dir)
    times["trainer"] = time.perf_counter() - started
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers = build_loggers(config, run_dir, model)
    for logger in loggers:
        logger.close_run({}, "finished", [])
    times["MLflow run"] = time.perf_counter() - started
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=positive_int, default=8144, help="training images (default: Stanford's)")
    parser.add_argument("--test", type=positive_int, default=8041, help="test images (default: Stanford's)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="later trials timed (median)")
    parser.add_argument("--folder", default="/tmp/trial_start", help="scratch folder (replaced)")
    args = parser.parse_args(argv)
    from utils.configuration import validate

    quiet_lightning()
    folder = Path(args.folder)
    data = write_copies(folder / "stanford", args.train, args.test)
    config = validate({"stanford_data_path": str(data), "cache_dir": str(folder / "cache"), "image_size": [64, 64],
                       "num_workers": 2, "accelerator": "cpu", "devices": 1, "log_to_mlflow": True,
                       "mlflow_tracking_uri": f"sqlite:///{folder / 'mlruns.db'}", "output_path": str(folder / "out")})
    import mlflow
    import optuna
    import pytorch_lightning

    print("\n".join(machine_description()))
    print(f"optuna {optuna.__version__}, pytorch_lightning {pytorch_lightning.__version__}, mlflow {mlflow.__version__}")
    print(f"{args.train} + {args.test} images, image_size 64x64, GhostNet\n")
    imports = import_seconds()
    first = trial_start(config, folder / "out" / "first")
    later = [trial_start(config, folder / "out" / f"later{i}") for i in range(args.rounds)]
    rows = [["imports (once per worker)", f"{imports:.2f}", ""]]
    for part in first:
        rows.append([part, f"{first[part]:.3f}", f"{statistics.median(r[part] for r in later):.3f}"])
    rows.append(["total", f"{sum(first.values()):.2f}", f"{statistics.median(sum(r.values()) for r in later):.2f}"])
    print(markdown_table(["part of a trial's start", "first trial (s)", "later trial (s)"], rows))
    return 0


if __name__ == "__main__":
    run_main(main)
