"""train.py end to end on generated data: the run folder contract, the LR schedule, early stopping, user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import ROOT, run_train, tiny_config
from utils.run_outputs import METRIC_COLUMNS


@pytest.fixture
def data(generated_data: Path) -> Path:
    return generated_data  # made once per session (tests/conftest.py); read only


def test_training_writes_the_run_folder_contract_and_drops_lr_at_milestones(data: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path, data, num_epochs=3, lr_scheduler="MultiStepLR",
                         lr_scheduler_params={"gamma": 0.1, "milestones": [1, 2]},
                         neptune_api_token="secret-token-123")
    result = run_train(["--config", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run folder: "))
    assert run_dir.parent == tmp_path / "output" and run_dir.name.startswith("ghost_")

    saved = yaml.safe_load((run_dir / "config.yml").read_text())
    assert saved["neptune_api_token"] == "***" and saved["num_epochs"] == 3
    # the device options' `auto` defaults, resolved for this CPU run: written as they trained, and logged
    assert [saved[key] for key in ("gpu_augmentations", "channels_last", "cuda_graphs")] == [False] * 3
    assert "auto device options for CPU: gpu_augmentations: false, channels_last: false, cuda_graphs: false" in (
        result.stdout + result.stderr)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS
    assert list(metrics["epoch"]) == [0, 1, 2]
    assert metrics["lr"].tolist() == pytest.approx([1e-3, 1e-4, 1e-5])
    assert metrics[["train_acc", "valid_acc"]].stack().between(0, 1).all()
    for name in ("best.ckpt", "last.ckpt"):
        assert (run_dir / "checkpoints" / name).is_file()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and "secret-token-123" not in json.dumps(last["hyper_parameters"], default=str)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["early_stopped"] is False
    assert summary["architecture"] == "GhostNet" and summary["num_params"] > 1_000_000
    assert summary["max_valid_acc"] == pytest.approx(metrics["valid_acc"].max())
    assert summary["min_valid_loss"] == pytest.approx(metrics["valid_loss"].min())
    # best.ckpt (lowest valid_loss) and the highest valid_acc are reported apart, each with its epoch.
    best_epoch = int(metrics.loc[metrics["valid_loss"].idxmin(), "epoch"])
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert summary["best_checkpoint_epoch"] == best["epoch"] == best_epoch
    assert best["hyper_parameters"]["se_gate"] == "clamp"  # the 2020 runs' GhostNet by default
    assert summary["best_checkpoint_valid_loss"] == pytest.approx(metrics["valid_loss"].min())
    assert summary["best_checkpoint_valid_acc"] == pytest.approx(metrics["valid_acc"][best_epoch])
    assert summary["max_valid_acc_epoch"] == int(metrics.loc[metrics["valid_acc"].idxmax(), "epoch"])
    assert summary["validation_split"] == "test" and "test_acc" not in summary
    assert f"best.ckpt = epoch {best_epoch} (lowest valid_loss)" in result.stdout
    assert "validated on the test split" in result.stdout
    assert {p.name for p in (run_dir / "plots").iterdir()} == {"loss.png", "accuracy.png", "lr.png"}
    assert "secret-token-123" not in result.stdout + result.stderr
    assert list((tmp_path / "logs").glob("*.log"))
    # the device is said at the start; on a CPU, after the first epoch, what the rest would take
    assert "training on the CPU (" in result.stdout and "(accelerator: cpu)" in result.stdout
    assert "so the 2 epochs left of num_epochs=3 would take about" in result.stdout


@pytest.mark.slow  # a training of up to 8 epochs in a subprocess
def test_early_stopping_stops_after_the_patience(data: Path, tmp_path: Path) -> None:
    # A high learning rate makes the validation loss stop improving; the run must stop exactly where the rule says
    # (a non-finite loss stops it at once).
    patience = 1
    config = tiny_config(tmp_path, data, num_epochs=8, early_stopping_patience=patience,
                         optimizer_params={"lr": 0.05}, lr_scheduler=None)
    result = run_train(["--config", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "output").iterdir())
    losses = pd.read_csv(run_dir / "metrics.csv")["valid_loss"].tolist()
    best, stop, waited = float("inf"), None, 0
    for epoch, loss in enumerate(losses):
        if loss != loss:
            stop = epoch
            break
        waited = 0 if loss < best else waited + 1
        best = min(best, loss)
        if waited >= patience:
            stop = epoch
            break
    assert stop is not None, f"validation loss kept improving: {losses}"
    assert len(losses) == stop + 1
    assert json.loads((run_dir / "summary.json").read_text())["early_stopped"] is True


def test_run_name_is_made_unique_when_taken(data: Path, tmp_path: Path, monkeypatch) -> None:
    from utils.run_outputs import create_run_dir

    first = create_run_dir(tmp_path, None, "ghost")
    second = create_run_dir(tmp_path, None, "ghost")
    assert first != second and second.name.startswith(first.name)


@pytest.mark.parametrize("overrides, message", [
    (["batchsize=3"], "unknown key 'batchsize'.*'batch_size'"),
    (["num_epochs=two"], "num_epochs .* expected a positive integer"),
    (["architecture=ghostnet"], "architecture 'ghostnet' is not in models/arch_dict.py.*valid names: .*ghost"),
    (["loss_function=CrossEntropy"], "loss_function 'CrossEntropy' .*'CrossEntropyLoss'"),
    (["optimizer=AdamX"], "optimizer 'AdamX' is not in torch.optim.*'Adam'"),
    (["lr_scheduler=MultiStep"], "lr_scheduler 'MultiStep' is not in torch.optim.lr_scheduler.*MultiStepLR"),
    (["image_augmentations={RandomFlip: {p: 0.5}}"], "transform 'RandomFlip' is not in torchvision.transforms.v2"),
    (["normalization_params_rgb={mean: [0.5], std: [0.2]}"], "needs 3 mean and 3 std"),
    (["architecture=sq_10", "image_size=[16, 16]"], r"image_size \[16, 16\] is too small for architecture 'sq_10'"),
    (["stanford_data_path=/nonexistent/stanford"], "train_labels.csv not found"),
    (["accelerator=gpu"], "this machine cannot run accelerator: 'gpu'"),
    (["strategy=foo"], "this machine cannot run .*strategy: 'foo'.*invalid strategy name"),
    (["accelerator=cpu", "devices=-2"], r"this machine cannot run accelerator: 'cpu', devices: -2"),
    (["loss_function=MSELoss"], r"loss_function MSELoss cannot take logits \(batch, classes\) and class ids"),
    (["batch_size=1"], "batch_size is 1; batch norm"),
    (["run_name=a/b"], "run_name .* is 'a/b'; expected a folder name"),
])
def test_user_errors_are_one_line_with_exit_code_2(data: Path, tmp_path: Path, capsys, overrides: list[str],
                                                   message: str) -> None:
    import train

    config = tiny_config(tmp_path, data)
    with pytest.raises(SystemExit) as exit_info:
        from utils.cli import run_main

        run_main(train.main, ["--config", str(config), "--set", *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())  # no half-made run


@pytest.mark.slow  # a training beyond the main path
def test_an_epoch_that_would_end_with_a_batch_of_one_leaves_that_image_out(data: Path, tmp_path: Path,
                                                                            caplog) -> None:
    """12 training images in batches of 11: batch norm cannot train on the 12th alone (GhostNet's head fails)."""
    import logging

    from models.training_run import train
    from utils.configuration import load_config

    with caplog.at_level(logging.WARNING, logger="cars"):
        run_dir = train(load_config(str(tiny_config(tmp_path, data, batch_size=11, num_epochs=1))))
    assert "would hold 1 image (12 images per process, batch_size 11)" in caplog.text
    assert pd.read_csv(run_dir / "metrics.csv")["epoch"].tolist() == [0]


def test_invalid_yaml_and_missing_config_fail_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("num_epochs: [1,\n")
    for args, message in ((["--config", str(bad)], "not valid YAML at line"),
                          (["--config", str(tmp_path / "none.yml")], "does not exist")):
        result = run_train(args, cwd=tmp_path)
        assert result.returncode == 2
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_print_config_prints_the_resolved_config(tmp_path: Path) -> None:
    data_path = "/data/run #2/cars: v2"  # YAML would cut a comment and make a mapping of this, were it parsed
    result = run_train(["--print-config", "--set", "optimizer_params.lr=0.01", "-d", data_path], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)  # stdout holds the YAML alone: it can be redirected into a config
    assert "config.yml not found" in result.stderr
    assert printed["optimizer_params"] == {"lr": 0.01, "weight_decay": 0.6}
    assert printed["stanford_data_path"] == data_path
    (tmp_path / "printed.yml").write_text(result.stdout)
    again = run_train(["--config", "printed.yml", "--print-config"], cwd=tmp_path)
    assert again.returncode == 0 and yaml.safe_load(again.stdout) == printed


def test_the_demo_trains_the_template_recipe_whatever_config_yml_holds(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("architecture: mob_v2\nlog_to_neptune: true\n")
    result = run_train(["--demo", "--print-config"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["architecture"] == "ghost" and printed["log_to_neptune"] is False
    assert printed["image_size"] == [64, 64]  # the demo's own overrides still apply


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_our_datasets_package_does_not_break_the_libraries_we_import() -> None:
    code = ("import datasets, datasets.prepared.stanford_data_module, mlflow, neptune, pytorch_lightning, "
            "torchmetrics, torchvision; import models.net_module, utils.trackers; print(datasets.__file__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == ROOT / "datasets"


@pytest.mark.parametrize("cache_images, num_workers", [(True, 0), (False, 1)])
@pytest.mark.slow  # a training in a subprocess per case
def test_corrupt_image_fails_the_run_in_one_line_naming_the_file(data: Path, tmp_path: Path, cache_images: bool,
                                                                 num_workers: int) -> None:
    import shutil

    broken = tmp_path / "stanford"
    shutil.copytree(data, broken, ignore=shutil.ignore_patterns(".cache"))
    victim = sorted((broken / "train").iterdir())[1]
    victim.write_bytes(b"<html>not an image</html>")
    config = tiny_config(tmp_path, broken, cache_images=cache_images, num_workers=num_workers)
    result = run_train(["--config", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert err[-1].startswith("data error: image ") and victim.name in err[-1]
    assert "Traceback" not in result.stderr
    run_dir = next((tmp_path / "output").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow  # a training in a subprocess
def test_device_options_train_end_to_end_on_the_cpu(data: Path, tmp_path: Path) -> None:
    # gpu_augmentations runs the per-sample augmenter wherever the batch is (here the CPU); bf16 autocast and
    # channels_last are the GPU speed options, valid on the CPU too.
    config = tiny_config(tmp_path, data, num_epochs=1, gpu_augmentations=True, augment_tensors=True,
                         precision="bf16-mixed", channels_last=True)
    result = run_train(["--config", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = next((tmp_path / "output").iterdir())
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == [0] and metrics["train_loss"].notna().all()


@pytest.mark.slow  # compiling GhostNet's training step takes about 3 minutes on 2 CPU cores
def test_compile_trains_end_to_end_on_the_cpu(data: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path, data, num_epochs=2, gpu_augmentations=True, compile=True)
    result = run_train(["--config", str(config)], cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = next((tmp_path / "output").iterdir())
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1] and metrics["train_loss"].notna().all()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(key.startswith("net.") for key in checkpoint["state_dict"])  # no compiled-wrapper keys


def test_bad_scheduler_parameters_fail_before_any_run_folder_exists(data: Path, tmp_path: Path, capsys) -> None:
    import train
    from utils.cli import run_main

    config = tiny_config(tmp_path, data)
    with pytest.raises(SystemExit) as exit_info:
        run_main(train.main, ["--config", str(config), "--set", "lr_scheduler_params={milestone: [3]}"])
    assert exit_info.value.code == 2
    assert "lr_scheduler_params for MultiStepLR" in capsys.readouterr().err
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("async_checkpoints", [True, False])
@pytest.mark.slow  # two 2-epoch trainings on a slowed disk
def test_checkpoints_are_written_by_a_thread_and_complete_when_train_returns(data: Path, tmp_path: Path, monkeypatch,
                                                                             async_checkpoints: bool) -> None:
    """With async_checkpoints the files are written off the training thread, on a disk slowed down here: train()
    must still return only once both hold the last epoch. Without it, the training thread writes them."""
    import threading
    import time

    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    from models.training_run import train
    from utils.configuration import load_config

    writes = []
    write = TorchCheckpointIO.save_checkpoint

    def slow_write(self, checkpoint, path, storage_options=None):  # noqa: ANN001, ANN202
        time.sleep(0.5)
        write(self, checkpoint, path, storage_options)
        writes.append((Path(path).name, checkpoint["epoch"], threading.current_thread() is threading.main_thread()))

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", slow_write)
    config = tiny_config(tmp_path, data, num_epochs=2, async_checkpoints=async_checkpoints)
    run_dir = train(load_config(str(config)))
    assert ("last.ckpt", 1) in [(name, epoch) for name, epoch, _ in writes]
    assert {on_main for _, _, on_main in writes} == {not async_checkpoints}
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and (run_dir / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_held_out_validation_split_keeps_the_test_split_for_one_final_evaluation(data: Path, tmp_path: Path) -> None:
    from tests.helpers import run_module

    config = tiny_config(tmp_path, data, validation_split=0.25, checkpoint_monitor="valid_acc", cache_images=True,
                         se_gate="hard_sigmoid")
    result = run_train(["--config", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "output").iterdir())
    metrics = pd.read_csv(run_dir / "metrics.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    # best.ckpt is the highest valid_acc's epoch (the first of equals), as checkpoint_monitor says
    assert summary["best_checkpoint_epoch"] == summary["max_valid_acc_epoch"] == int(metrics["valid_acc"].idxmax())
    assert summary["validation_split"] == 0.25 and 0 <= summary["test_acc"] <= 1
    assert summary["test_top5"] == 1.0  # top-3 of 3 classes
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["hyper_parameters"]["se_gate"] == "hard_sigmoid"
    # the test split was evaluated on best.ckpt: models.evaluate on it gives the same accuracy
    evaluation = run_module("models.evaluate", ["--checkpoint", str(run_dir / "checkpoints" / "best.ckpt")])
    assert evaluation.returncode == 0, evaluation.stderr
    top1 = json.loads((run_dir / "evaluation" / "metrics.json").read_text())["top1_accuracy"]
    assert top1 == pytest.approx(summary["test_acc"], abs=1e-6)
    # the held-out images (1 of each class's 4) and the rest of train each have a cache; the test split its own
    caches = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.npy"))
    assert caches == ["test", "train", "train"]
    assert "validated on 0.25 of the training images, held out" in result.stdout
    assert "test_acc" in result.stdout


@pytest.mark.slow
def test_a_resumed_run_holds_out_the_same_images_and_ends_with_the_test_evaluation(data: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path, data, validation_split=0.25, num_epochs=1, run_name="held", seed=3)
    first = run_train(["--config", str(config)], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "output" / "held"
    before = json.loads((run_dir / "summary.json").read_text())
    resumed = run_train(["--config", str(config), "--resume", "auto", "--set", "num_epochs=2"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    metrics = pd.read_csv(run_dir / "metrics.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert metrics["epoch"].tolist() == [0, 1] and summary["epochs_run"] == 2
    # the same 3 held-out images: the first epoch's validation is what the first session validated on
    assert metrics["valid_acc"].iloc[0] == pytest.approx(before["max_valid_acc"])
    assert summary["best_checkpoint_epoch"] in (0, 1) and 0 <= summary["test_acc"] <= 1
    assert "best.ckpt on the test split" in resumed.stdout
