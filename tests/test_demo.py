"""`python train.py --demo`: the README's first command, end to end from an empty folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import run_train


def run_demo(folder: Path, extra: list[str]) -> Path:
    result = run_train(["--demo", *extra], cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("run folder: demo/output/")
    run_dir = folder / last.removeprefix("run folder: ")
    assert (folder / "demo" / "raw" / "car_ims.tgz").is_file()
    assert (folder / "demo" / "stanford" / "train_labels.csv").is_file()
    assert (folder / "demo" / "mlruns.db").is_file()
    return run_dir


@pytest.mark.slow  # generates, prepares and trains in a subprocess; the default run proves each part apart
def test_demo_generates_prepares_and_trains_from_an_empty_folder(tmp_path: Path) -> None:
    run_dir = run_demo(tmp_path, ["--set", "num_epochs=2"])
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_full_demo_learns_well_above_chance(tmp_path: Path) -> None:
    run_dir = run_demo(tmp_path, [])
    summary = json.loads((run_dir / "summary.json").read_text())
    # 10 classes: chance is 10 %.
    assert summary["max_valid_acc"] > 0.7, summary
