"""models/evaluate.py: accuracy equal to a direct computation with the module, per-class CSV, confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import run_module
from utils.errors import DataError


@pytest.fixture
def run_dir(trained_run: Path) -> Path:
    """A one-epoch run of the real training code on generated data (3 classes, 2 test images each), once a session."""
    return trained_run


def _direct_predictions(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of the test split through the training DataModule and the module, without models.evaluate."""
    from datasets.prepared.stanford_data_module import StanfordCarsDataModule
    from models.net_module import NetModule
    from utils.configuration import load_config

    config = load_config(str(run_dir / "config.yml"))
    data = StanfordCarsDataModule(config)
    data.setup("validate")
    module = NetModule.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu",
                                            weights_only=False).eval()
    logits, targets = [], []
    with torch.no_grad():
        for images, labels in data.val_dataloader():
            logits.append(module(module.preprocess(images, train=False)))
            targets.append(labels)
    return torch.cat(logits), torch.cat(targets)


def test_cli_accuracy_equals_direct_computation_and_writes_the_reports(run_dir: Path) -> None:
    result = run_module("models.evaluate", ["--checkpoint", str(run_dir / "checkpoints" / "best.ckpt")])
    assert result.returncode == 0, result.stderr
    out = run_dir / "evaluation"
    metrics = json.loads((out / "metrics.json").read_text())

    logits, targets = _direct_predictions(run_dir)
    top1 = (logits.argmax(dim=1) == targets).float().mean().item()
    top3 = (logits.topk(3, dim=1).indices == targets[:, None]).any(dim=1).float().mean().item()
    assert metrics["images"] == len(targets) == 6
    assert metrics["top1_accuracy"] == pytest.approx(top1)
    assert metrics["top3_accuracy"] == pytest.approx(top3) == 1.0  # top-min(5, classes): 3 of 3 classes
    # The checkpoint's epoch was validated on the same split with the same preprocessing during training.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert metrics["checkpoint_epoch"] == summary["best_checkpoint_epoch"] == 0
    assert metrics["top1_accuracy"] == pytest.approx(summary["best_checkpoint_valid_acc"], abs=1e-5)
    assert metrics["top1_accuracy"] == pytest.approx(pd.read_csv(run_dir / "metrics.csv")["valid_acc"].iloc[0],
                                                     abs=1e-5)
    assert "(weights of epoch 0," in result.stdout

    per_class = pd.read_csv(out / "per_class_accuracy.csv")
    assert list(per_class.columns) == ["class_id", "class_name", "images", "correct", "accuracy"]
    predicted = logits.argmax(dim=1)
    for row in per_class.itertuples():
        mine = targets == row.class_id - 1
        assert row.images == int(mine.sum()) and row.correct == int((predicted[mine] == targets[mine]).sum())
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions["predicted_class_id"].tolist() == (predicted + 1).tolist()
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-1 accuracy" in result.stdout and "top-3 accuracy" in result.stdout
    assert f"evaluated on {'cuda' if torch.cuda.is_available() else 'cpu'}" in result.stdout  # --device auto
    worst = per_class.sort_values(["accuracy", "images", "class_id"], ascending=[True, False, True])
    listed = result.stdout.split("worst classes:")[1]
    assert [name for name in worst["class_name"] if name in listed] == list(worst["class_name"])
    assert listed.index(worst["class_name"].iloc[0]) < listed.index(worst["class_name"].iloc[-1])


def test_data_path_override_and_missing_data_are_reported(run_dir: Path, tmp_path: Path) -> None:
    from models.evaluate import default_data_path, evaluate
    from models.inference import load_module

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    saved = default_data_path(checkpoint)
    assert (saved / "test_labels.csv").is_file()
    with pytest.raises(DataError, match="test_labels.csv not found"):
        evaluate(load_module(checkpoint), tmp_path / "nowhere")


def test_per_class_table_and_worst_classes_from_a_confusion_matrix() -> None:
    from models.evaluate import per_class_table, worst_classes

    confusion = torch.tensor([[3, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0], [1, 0, 0, 1]])
    table = per_class_table(confusion, ["a", "b", "c", "d"])
    assert table["images"].tolist() == [4, 2, 0, 2] and table["correct"].tolist() == [3, 0, 0, 1]
    assert table["accuracy"].iloc[[0, 1, 3]].tolist() == [0.75, 0.0, 0.5] and pd.isna(table["accuracy"].iloc[2])
    assert worst_classes(table, 2)["class_name"].tolist() == ["b", "d"]


def test_a_checkpoint_outside_a_run_folder_reports_beside_itself(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    from models.evaluate import default_output_dir

    assert default_output_dir(run_dir / "checkpoints" / "best.ckpt") == run_dir.resolve() / "evaluation"
    loose = Path(shutil.copy(run_dir / "checkpoints" / "best.ckpt", tmp_path / "model.ckpt"))
    assert default_output_dir(loose) == tmp_path.resolve() / "model_evaluation"


def test_a_test_image_that_does_not_decode_is_named_with_what_to_do(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    from models.evaluate import default_data_path, evaluate
    from models.inference import load_module

    data = Path(shutil.copytree(default_data_path(run_dir / "checkpoints" / "best.ckpt"), tmp_path / "data"))
    victim = sorted((data / "test").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"{victim.name} does not decode .*top-1 needs every test image") as caught:
        evaluate(load_module(run_dir / "checkpoints" / "best.ckpt"), data)
    assert "skip_corrupt_images" not in str(caught.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluation_on_the_gpu_agrees_with_the_cpu(run_dir: Path) -> None:
    from models.evaluate import default_data_path, evaluate
    from models.inference import load_module

    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    on_cpu = evaluate(load_module(checkpoint, "cpu"), default_data_path(checkpoint), batch_size=4)
    on_gpu = evaluate(load_module(checkpoint, "cuda"), default_data_path(checkpoint), batch_size=4)
    assert on_gpu.top1 == on_cpu.top1 and torch.equal(on_gpu.confusion, on_cpu.confusion)
    assert on_gpu.predictions["probability"].tolist() == pytest.approx(on_cpu.predictions["probability"].tolist(),
                                                                       abs=1e-4)
