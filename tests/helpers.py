"""Helpers for end-to-end tests: generated raw data prepared by the real code, tiny configs, running scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def generated_prepared_data(base: Path, classes: int = 3, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    """Raw files from the synthetic generator, prepared by the real preparation code; returns the prepared folder."""
    from datasets.raw.prepare import prepare_dataset
    from datasets.raw.synthetic import make_synthetic

    raw = make_synthetic(base / "raw", layout="updated", classes=classes, train_per_class=train_per_class,
                         test_per_class=test_per_class, seed=1, max_size=160)
    prepare_dataset(raw, base / "stanford")
    return base / "stanford"


def tiny_config(folder: Path, data: Path, name: str = "config.yml", **values: Any) -> Path:
    """A small CPU config file: 64 px, 2 epochs, batch 8, no workers, no trackers; `values` override it."""
    config = {
        "stanford_data_path": str(data), "output_path": str(folder / "output"), "logging_dir": str(folder / "logs"),
        "cache_dir": str(folder / "cache"),
        "image_size": [64, 64], "num_epochs": 2, "batch_size": 8, "num_workers": 0, "accelerator": "cpu",
        "devices": 1, "log_to_mlflow": False, "log_to_neptune": False, **values,
    }
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def run_script(script: str, args: list[str], cwd: Path, timeout: int = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one of the project's scripts with this interpreter, from `cwd`."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_module(module: str, args: list[str], cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m module` (e.g. utils.summary) with this interpreter, from `cwd`."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_train(args: list[str], cwd: Path, timeout: int = 600, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    return run_script("train.py", args, cwd, timeout, env)
