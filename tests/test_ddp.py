"""Lightning DDP with two CPU processes: one run folder, one tracker run, validation over the whole split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import generated_prepared_data, run_train, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 3 classes x 3 test images: 9 validation images, an odd number that 2 processes cannot split evenly.
    return generated_prepared_data(tmp_path_factory.mktemp("data"), train_per_class=4, test_per_class=3)


def single_process_accuracy(checkpoint: Path, config: dict) -> float:
    from datasets.prepared.stanford_data_module import StanfordCarsDataModule
    from models.net_module import NetModule

    model = NetModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    module = StanfordCarsDataModule(config)
    module.setup("validate")
    dataset = module.datasets["test"]
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        predictions = model(model.preprocess(images, train=False)).argmax(1)
    return float((predictions == labels).float().mean())


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
@pytest.mark.slow  # DDP: two training processes
def test_two_process_run_writes_one_run_and_validates_the_whole_split(data: Path, tmp_path: Path,
                                                                      strategy: str) -> None:
    import yaml
    from mlflow.tracking import MlflowClient

    from utils.configuration import validate

    db = tmp_path / "mlruns.db"
    config_path = tiny_config(tmp_path, data, num_epochs=2, log_to_mlflow=True, devices=2, strategy=strategy,
                              mlflow_tracking_uri=f"sqlite:///{db}", num_workers=0)
    result = run_train(["--config", str(config_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list((tmp_path / "output").iterdir())
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1]
    assert len(list((tmp_path / "logs").glob("*.log"))) == 1

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_name for r in runs] == [run_dir.name]

    config = validate(yaml.safe_load(config_path.read_text()))
    expected = single_process_accuracy(run_dir / "checkpoints" / "last.ckpt", config)
    assert metrics["valid_acc"].iloc[-1] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_two_processes_with_a_held_out_split_test_best_ckpt_on_the_whole_test_split(data: Path,
                                                                                    tmp_path: Path) -> None:
    from models.evaluate import evaluate
    from models.inference import load_module

    config_path = tiny_config(tmp_path, data, num_epochs=2, devices=2, strategy="ddp", validation_split=0.25)
    result = run_train(["--config", str(config_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("2 processes train with batch_size 8 each: 16 images per optimizer step") == 1
    run_dir = next((tmp_path / "output").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    # synced over both processes: the whole test split (9 images, which 2 processes cannot share evenly)
    single = evaluate(load_module(run_dir / "checkpoints" / "best.ckpt"), data)
    assert summary["test_acc"] == pytest.approx(single.top1, abs=1e-6)
    assert summary["test_top5"] == pytest.approx(single.topk, abs=1e-6)
