"""Interrupting and resuming runs, deterministic reruns, and finding the checkpoint to resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import ROOT, run_train, tiny_config
from utils.configuration import validate
from utils.errors import ConfigError
from utils.resilience import find_resume_checkpoint

EPOCHS = 4
RECIPE = {"num_epochs": EPOCHS, "seed": 7, "lr_scheduler": "MultiStepLR",
          "lr_scheduler_params": {"gamma": 0.1, "milestones": [2, 3]}}


@pytest.fixture(scope="session")
def data(generated_data: Path) -> Path:
    return generated_data  # made once per session (tests/conftest.py); read only


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("uninterrupted")
    result = run_train(["--config", str(tiny_config(folder, data, run_name="whole", **RECIPE))], cwd=folder)
    assert result.returncode == 0, result.stderr
    return learning_metrics(folder / "output" / "whole" / "metrics.csv")


def learning_metrics(metrics_csv: Path) -> pd.DataFrame:
    """metrics.csv without its wall times, which differ from run to run."""
    metrics = pd.read_csv(metrics_csv)
    assert (metrics["epoch_time_s"] > 0).all()
    return metrics.drop(columns="epoch_time_s")


def rows(metrics_csv: Path) -> int:
    try:
        return max(0, len(metrics_csv.read_text().strip().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow  # SIGTERM and resume: three trainings in subprocesses
def test_sigterm_then_resume_gives_contiguous_epochs_and_the_uninterrupted_metrics(
        data: Path, tmp_path: Path, uninterrupted: pd.DataFrame) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = tiny_config(tmp_path, data, run_name="cut", log_to_mlflow=True, mlflow_tracking_uri=tracking_uri,
                         **RECIPE)
    run_dir = tmp_path / "output" / "cut"
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(config)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while rows(run_dir / "metrics.csv") < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "--resume" in stderr and "Traceback" not in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_run"] < EPOCHS
    assert (run_dir / "plots" / "loss.png").is_file()

    resumed = run_train(["--config", str(config), "--resume", "auto"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    metrics = learning_metrics(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(EPOCHS))
    assert metrics["lr"].tolist() == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    # Same seed, num_workers 0 and the RNG state restored from the checkpoint: the same numbers as one whole run.
    pd.testing.assert_frame_equal(metrics, uninterrupted, check_exact=False, rtol=1e-5)
    finished = json.loads((run_dir / "summary.json").read_text())
    assert finished["status"] == "finished"
    assert finished["wall_time_s"] > summary["wall_time_s"]  # both sessions counted
    # A finished run is not resumed again: that would train nothing and overwrite its summary.
    again = run_train(["--config", str(config), "--resume", "auto"], cwd=tmp_path)
    assert again.returncode == 2 and "nothing is left to train" in again.stderr, again.stderr
    assert json.loads((run_dir / "summary.json").read_text()) == finished
    # The resumed training continued the same MLflow run.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.run_name for run in runs] == ["cut"] and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "valid_acc")
    assert sorted({point.step for point in history}) == list(range(EPOCHS))


@pytest.mark.slow  # two 4-epoch trainings in subprocesses
def test_two_runs_with_the_same_seed_write_identical_metrics(data: Path, tmp_path: Path,
                                                              uninterrupted: pd.DataFrame) -> None:
    config = tiny_config(tmp_path, data, run_name="again", deterministic=True, **RECIPE)
    result = run_train(["--config", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    again = learning_metrics(tmp_path / "output" / "again" / "metrics.csv")
    pd.testing.assert_frame_equal(again, uninterrupted, check_exact=True)


def make_run(output: Path, name: str, config: dict, last: bool = True, epochs: int = 0,
             status: str | None = None) -> Path:
    """A run folder with `epochs` rows in metrics.csv and, with `status`, a summary.json."""
    from utils.configuration import dump_yaml

    run_dir = output / name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yml").write_text(dump_yaml(config))
    if last:
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    if epochs:
        pd.DataFrame({"epoch": range(epochs), "valid_acc": 0.5}).to_csv(run_dir / "metrics.csv", index=False)
    if status:
        (run_dir / "summary.json").write_text(json.dumps({"status": status, "wall_time_s": 1.0}))
    return run_dir


def test_resume_auto_picks_the_newest_run_with_the_same_recipe(tmp_path: Path) -> None:
    config = validate({"output_path": str(tmp_path), "num_epochs": 10})
    older = make_run(tmp_path, "ghost_1", config)
    time.sleep(0.01)
    newer = make_run(tmp_path, "ghost_2", {**config, "num_epochs": 20})  # more epochs: still the same recipe
    time.sleep(0.01)
    make_run(tmp_path, "ghost_3", {**config, "dropout": 0.5})  # another recipe
    os.utime(older / "checkpoints" / "last.ckpt", (1, 1))
    assert find_resume_checkpoint("auto", config) == newer / "checkpoints" / "last.ckpt"
    assert find_resume_checkpoint("auto", {**config, "run_name": "ghost_1"}) == older / "checkpoints" / "last.ckpt"


def test_resume_errors_are_clear(tmp_path: Path) -> None:
    config = validate({"output_path": str(tmp_path)})
    with pytest.raises(ConfigError, match="no unfinished run with this config under"):
        find_resume_checkpoint("auto", config)
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        find_resume_checkpoint(str(tmp_path / "missing.ckpt"), config)
    with pytest.raises(ConfigError, match="run 'nope' has no"):
        find_resume_checkpoint("auto", {**config, "run_name": "nope"})


def test_resume_keeps_the_rows_of_a_metrics_csv_written_before_epoch_time_s(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from utils.run_outputs import METRIC_COLUMNS, MetricsCsvWriter

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,train_acc,valid_loss,valid_acc,lr\n0,2.0,0.1,2.1,0.1,0.001\n"
                    "1,1.5,0.3,1.6,0.2,0.001\n2,1.2,0.4,1.4,0.3,0.001\n")
    MetricsCsvWriter(path).on_train_start(SimpleNamespace(is_global_zero=True, current_epoch=2), None)
    kept = pd.read_csv(path)
    assert list(kept.columns) == METRIC_COLUMNS
    assert kept["epoch"].tolist() == [0, 1] and kept["train_loss"].tolist() == [2.0, 1.5]
    assert kept["epoch_time_s"].isna().all()


def test_resume_auto_skips_runs_with_nothing_left_to_train(tmp_path: Path) -> None:
    config = validate({"output_path": str(tmp_path), "num_epochs": 10})
    interrupted = make_run(tmp_path, "ghost_1", config, epochs=4, status="interrupted")
    time.sleep(0.01)
    make_run(tmp_path, "ghost_2", config, epochs=10, status="finished")  # newer, but done
    time.sleep(0.01)
    make_run(tmp_path, "ghost_3", config, epochs=6, status="early_stopped")  # newer, stopped by its own rule
    assert find_resume_checkpoint("auto", config) == interrupted / "checkpoints" / "last.ckpt"
    # a finished run continues when num_epochs grows (explicitly or by --resume auto)
    assert find_resume_checkpoint("auto", {**config, "num_epochs": 20}).parent.parent.name == "ghost_2"
    (interrupted / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(ConfigError, match=r"no unfinished run .*\(2 with this config have nothing left to train\)"):
        find_resume_checkpoint("auto", config)
    done = tmp_path / "ghost_2" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="run ghost_2 has already run 10 epochs .status finished. and num_epochs "
                                          "is 10: nothing is left to train; raise num_epochs"):
        find_resume_checkpoint(str(done), config)
    with pytest.raises(ConfigError, match="nothing is left to train"):
        find_resume_checkpoint("auto", {**config, "run_name": "ghost_2"})


def test_a_signal_before_the_training_loop_stops_the_run_at_once(data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """During data setup (on the real data: minutes of image caching) there is no batch to wait for, and Lightning
    clears its stop flag when it registers its handlers: the signal must stop the run there, not be lost."""
    from datasets.prepared.stanford_data_module import StanfordCarsDataModule
    from models.training_run import Interrupted, train
    from utils.configuration import load_config

    real_setup = StanfordCarsDataModule.setup

    def setup_interrupted(self, stage: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` from a terminal while the cache is built
        time.sleep(0.5)  # the handler runs here
        real_setup(self, stage)

    monkeypatch.setattr(StanfordCarsDataModule, "setup", setup_interrupted)
    config = load_config(str(tiny_config(tmp_path, data, run_name="early", num_epochs=3)))
    with pytest.raises(Interrupted, match="run early stopped before its first epoch finished; nothing was kept"):
        train(config)
    assert not (tmp_path / "output" / "early").exists()  # the same command can start again
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_resume_by_path_refuses_other_settings_than_the_run_was_trained_with(tmp_path: Path) -> None:
    config = validate({"output_path": str(tmp_path), "num_epochs": 10})
    run = make_run(tmp_path, "ghost_1", config, epochs=4, status="interrupted")
    last = run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"run ghost_1 was trained with other settings \(image_size: \[227, 227\] "
                                          r"in the run, \[96, 96\] now\); resume it with its own config: --config"):
        find_resume_checkpoint(str(last), {**config, "image_size": [96, 96]})
    # hardware, data loading, paths and num_epochs may change: a run moves to another machine or gets longer
    moved = {**config, "channels_last": True, "precision": "bf16-mixed", "gpu_augmentations": True,
             "num_workers": 8, "stanford_data_path": "/elsewhere", "num_epochs": 20}
    assert find_resume_checkpoint(str(last), moved) == last
    assert find_resume_checkpoint("auto", moved) == last
