"""Trackers: the 2020 parameter set, MLflow (client and server REST API) and Neptune offline, driven by a real
pl.Trainer on a tiny model; the token never reaches a file or the console."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import ROOT
from utils.configuration import defaults
from utils.errors import ConfigError
from utils.run_params import PARAM_NAMES, detect_runtime, run_params
from utils.trackers import build_loggers, finalize_trackers, neptune_api_token

# Made at run time: Neptune uploads the checkout's uncommitted diff, which would hold a token written in this file.
TOKEN = f"tok-{uuid.uuid4().hex}-unique-secret"
EPOCHS = 2


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class TinyModule(pl.LightningModule):
    """Logs the project's epoch metrics the way NetModule does (lr at epoch start, the rest at validation end)."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"architecture": "tiny", "class_names": ["a", "b", "c"]})
        self.net = TinyNet()

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def on_train_epoch_start(self) -> None:
        self.log("lr", 0.1 / (self.current_epoch + 1), on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        for name in ("train_loss", "train_acc", "valid_loss", "valid_acc"):
            self.log(name, float(self.current_epoch) + 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,))), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 4), torch.randint(0, 3, (4,))), batch_size=4)


def tracker_config(tmp_path: Path, **values) -> dict:
    config = defaults()
    config.update(log_to_mlflow=False, log_to_neptune=False, mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlruns.db",
                  experiment_name="tests", tags=["C-50", "lr-scheduler"], description="best model rerun",
                  neptune_api_token=TOKEN)
    config.update(values)
    return config


def train_tiny(config: dict, run_dir: Path, status: str = "finished") -> tuple[TinyModule, list]:
    """Fit the tiny module with the loggers the config asks for, write a run folder's files, close the trackers."""
    run_dir.mkdir(parents=True, exist_ok=True)
    model = TinyModule()
    loggers = build_loggers(config, run_dir, model)
    trainer = pl.Trainer(max_epochs=EPOCHS, logger=loggers, accelerator="cpu", enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model)
    (run_dir / "config.yml").write_text("neptune_api_token: '***'\n")
    (run_dir / "metrics.csv").write_text("epoch,train_loss\n0,0.5\n1,1.5\n")
    (run_dir / "plots").mkdir(exist_ok=True)
    (run_dir / "plots" / "loss.png").write_bytes(b"\x89PNG fake")
    summary = {"min_valid_loss": 0.5, "max_valid_acc": 1.5, "best_checkpoint_epoch": 0, "test_acc": 0.25,
               "epochs_run": EPOCHS,
               "early_stopped": False, "architecture": "TinyNet"}
    finalize_trackers(loggers, run_dir, summary, status)
    return model, loggers


def assert_token_absent(root: Path, *texts: str, given_in: Path | None = None) -> None:
    """No file under root (but the config that gave the token) and no text holds the token."""
    for path in root.rglob("*"):
        if path.is_file() and path != given_in:
            assert TOKEN.encode() not in path.read_bytes(), f"token found in {path}"
    for text in texts:
        assert TOKEN not in text


# --- the 2020 parameter set ----------------------------------------------------------------------------------------


def test_default_config_gives_the_thesis_best_model_parameter_list() -> None:
    # Thesis §4.1 lists the parameters of C-50, whose recipe is the config default.
    params = run_params(defaults(), "GhostNet", 3041412, runtime="colab")
    assert tuple(params) == PARAM_NAMES
    assert params == {
        "runtime": "colab", "architecture": "GhostNet", "num_params": 3041412, "img_size": [227, 227],
        "grayscale": False, "normalize": True,
        "norm_params_rgb": {"mean": [0.4707, 0.4602, 0.4550], "std": [0.2594, 0.2585, 0.2635]},
        "norm_params_gray": None, "crop_to_bboxes": False, "erase_background": False, "augment_images": True,
        "image_augmentations": {
            "RandomHorizontalFlip": {"p": 0.5},
            "RandomAffine": {"degrees": 25, "translate": [0.1, 0.1], "scale": [0.9, 1.1], "shear": 8},
            "ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.1}},
        "augment_tensors": False, "tensor_augmentations": None, "batch_size": 64, "max_num_epochs": 200,
        "dropout": 0.2, "out_channels": 320, "loss_function": "LabelSmoothingCrossEntropy", "loss_params": None,
        "optimizer": "AdamW", "learning_rate": 0.001, "weight_decay": 0.6,
        "all_optimizer_params": {"lr": 0.001, "weight_decay": 0.6}, "lr_scheduler": "MultiStepLR",
        "lr_scheduler_params": {"gamma": 0.1, "milestones": [67, 82, 95, 107]},
    }


def test_switched_off_settings_are_logged_as_none_like_2020() -> None:
    config = defaults()
    config.update(convert_to_grayscale=True, augment_images=False, augment_tensors=True, optimizer="Adam",
                  optimizer_params={"lr": 0.01}, lr_scheduler=None)
    params = run_params(config, "GhostNet", 1)
    assert params["norm_params_rgb"] is None and params["norm_params_gray"] == {"mean": [0.4627], "std": [0.2545]}
    assert params["image_augmentations"] is None
    assert params["tensor_augmentations"] == {"RandomErasing": {"p": 0.5, "scale": [0.02, 0.25]}}
    assert params["weight_decay"] == 0.0 and params["learning_rate"] == 0.01
    assert params["lr_scheduler"] is None and params["lr_scheduler_params"] is None
    config.update(normalize=False)
    params = run_params(config, "GhostNet", 1)
    assert params["norm_params_rgb"] is None and params["norm_params_gray"] is None


def test_runtime_is_colab_only_inside_colab(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert detect_runtime() == "local"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
    assert detect_runtime() == "colab"


def test_token_comes_from_the_environment_when_the_config_holds_the_placeholder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = defaults()
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    assert neptune_api_token(config) is None
    monkeypatch.setenv("NEPTUNE_API_TOKEN", "from-env")
    assert neptune_api_token(config) == "from-env"
    config["neptune_api_token"] = "from-config"
    assert neptune_api_token(config) == "from-config"


def test_neptune_async_without_a_token_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    config = tracker_config(tmp_path, log_to_neptune=True, neptune_mode="async", log_to_mlflow=True)
    config["neptune_api_token"] = defaults()["neptune_api_token"]
    with pytest.raises(ConfigError, match="neptune_mode: offline"):
        build_loggers(config, tmp_path / "run", TinyModule())
    assert not (tmp_path / "mlruns.db").exists()  # no MLflow run left open behind the failure


# --- MLflow ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One SQLite store (creating one takes seconds) holding an early-stopped and an interrupted tiny run."""
    import logging

    root = tmp_path_factory.mktemp("mlflow")
    config = tracker_config(root, log_to_mlflow=True)
    handler = logging.StreamHandler(stream := __import__("io").StringIO())
    logging.getLogger().addHandler(handler)
    try:
        model, loggers = train_tiny(config, root / "output" / "ghost_20260101000000", status="early_stopped")
        train_tiny(config, root / "output" / "ghost_20260101000001", status="interrupted")
    finally:
        logging.getLogger().removeHandler(handler)
    return {"root": root, "config": config, "model": model, "loggers": loggers, "log": stream.getvalue()}


def find_run(config: dict, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(config["mlflow_tracking_uri"])
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return client, run


def test_mlflow_run_holds_params_epoch_series_tags_note_and_files(mlflow_store: dict) -> None:
    config = mlflow_store["config"]
    client, run = find_run(config, "ghost_20260101000000")
    assert run.info.status == "FINISHED"
    expected = run_params(config, "TinyNet", mlflow_store["model"].num_params)
    assert run.data.params == {k: str(v) for k, v in expected.items()}
    assert run.data.params["norm_params_gray"] == "None"
    for name in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), name
    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
    assert lr == pytest.approx({0: 0.1, 1: 0.05})
    assert run.data.metrics["min_valid_loss"] == 0.5 and run.data.metrics["epochs_run"] == EPOCHS
    assert run.data.metrics["best_checkpoint_epoch"] == 0 and run.data.metrics["test_acc"] == 0.25
    tags = run.data.tags
    assert tags["C-50"] == "" and tags["lr-scheduler"] == "" and tags["ID"] == "C-50"
    assert tags["tags"] == "C-50, lr-scheduler" and tags["mlflow.note.content"] == "best model rerun"
    assert tags["status"] == "early_stopped"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yml", "metrics.csv", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/loss.png"]
    assert (mlflow_store["root"] / "mlartifacts").is_dir()  # beside the database, not in the working directory


def test_mlflow_interrupted_run_is_marked_killed(mlflow_store: dict) -> None:
    _, run = find_run(mlflow_store["config"], "ghost_20260101000001")
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"


def test_mlflow_stays_quiet_and_keeps_the_token_out(mlflow_store: dict) -> None:
    assert "Creating initial MLflow database" not in mlflow_store["log"]
    assert "Experiment with name" not in mlflow_store["log"]
    assert_token_absent(mlflow_store["root"], mlflow_store["log"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the whole group (server and workers); SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if group_alive(process.pid):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if process.poll() is not None and not group_alive(process.pid):
                return
            time.sleep(0.2)


@pytest.mark.slow  # starts an MLflow server
def test_mlflow_server_rest_api_finds_the_run(mlflow_store: dict) -> None:
    config = mlflow_store["config"]
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow_cli), "server", "--backend-store-uri", config["mlflow_tracking_uri"], "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=mlflow_store["root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not answer"
            time.sleep(0.5)
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=tests", timeout=30) as answer:
            experiment_id = json.load(answer)["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{base}/runs/search", data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            runs = json.load(answer)["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        assert set(by_name) == {"ghost_20260101000000", "ghost_20260101000001"}
        params = {p["key"]: p["value"] for p in by_name["ghost_20260101000000"]["data"]["params"]}
        assert params["architecture"] == "TinyNet" and params["lr_scheduler"] == "MultiStepLR"
    finally:
        stop_process_group(server)
    assert server.returncode is not None
    assert not group_alive(server.pid), "mlflow server processes are left running"
    assert not port_open(port)


# --- Neptune offline ------------------------------------------------------------------------------------------------


def read_neptune_offline(data_dir: Path) -> list[dict]:
    (run_dir,) = (data_dir / "offline").iterdir()
    operations = []
    for log_file in sorted(run_dir.glob("data-*.log")):
        operations += [json.loads(line)["obj"] for line in log_file.read_text().splitlines() if line.strip()]
    return operations


def test_neptune_offline_run_is_written_locally_without_token_or_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    data_dir = tmp_path / "neptune-data"
    monkeypatch.setenv("NEPTUNE_DATA_DIRECTORY", str(data_dir))
    monkeypatch.setenv("NEPTUNE_API_TOKEN", TOKEN)
    config = tracker_config(tmp_path, log_to_neptune=True, neptune_mode="offline")
    model, loggers = train_tiny(config, tmp_path / "output" / "ghost_20260101000000")

    operations = read_neptune_offline(data_dir)
    assigned = {"/".join(o["path"]): o.get("value") for o in operations if o["type"].startswith("Assign")}
    assert assigned["sys/name"] == "ghost_20260101000000"
    assert assigned["sys/description"] == "best model rerun"
    assert [sorted(o["values"]) for o in operations if o["type"] == "AddStrings"] == [["C-50", "lr-scheduler"]]
    assert assigned["parameters/architecture"] == "TinyNet"
    assert assigned["parameters/num_params"] == model.num_params
    assert assigned["parameters/norm_params_gray"] == "None"
    assert assigned["parameters/all_optimizer_params"] == "{'lr': 0.001, 'weight_decay': 0.6}"
    assert assigned["summary/min_valid_loss"] == 0.5 and assigned["status"] == "finished"
    for name in ("train_loss", "valid_acc", "lr"):
        steps = [v["step"] for o in operations if o["type"] == "LogFloats" and o["path"] == [name] for v in o["values"]]
        assert steps == list(range(EPOCHS)), name
    uploaded = {"/".join(o["path"]) for o in operations if o["type"].startswith("Upload")}
    assert {"artifacts/config.yml", "artifacts/metrics.csv", "artifacts/plots/loss.png"} <= uploaded
    out, err = capfd.readouterr()
    assert_token_absent(tmp_path, out, err)
    assert TOKEN not in repr(loggers)


# --- train.py end to end ----------------------------------------------------------------------------------------------


@pytest.mark.slow  # a training in a subprocess
def test_train_logs_to_mlflow_and_neptune_offline_and_the_token_appears_nowhere(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from tests.helpers import generated_prepared_data, run_train, tiny_config

    data = generated_prepared_data(tmp_path / "data")
    config = tiny_config(tmp_path, data, log_to_mlflow=True, log_to_neptune=True, neptune_mode="offline",
                         neptune_api_token=TOKEN, mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlruns.db",
                         experiment_name="e2e", tags=["C-50"], description="tiny rerun")
    result = run_train(["--config", str(config)], cwd=tmp_path, env={"NEPTUNE_API_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "output").iterdir())

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["architecture"] == "GhostNet" and run.data.params["img_size"] == "[64, 64]"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "valid_acc")) == [0, 1]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss.png", "plots/accuracy.png", "plots/lr.png"}

    operations = read_neptune_offline(tmp_path / ".neptune")
    assigned = {"/".join(o["path"]): o.get("value") for o in operations if o["type"].startswith("Assign")}
    assert assigned["sys/name"] == run_dir.name and assigned["parameters/architecture"] == "GhostNet"
    assert "Experiment with name" not in result.stdout + result.stderr
    assert_token_absent(tmp_path, result.stdout, result.stderr, given_in=config)


@pytest.mark.slow  # a training in a subprocess, interrupted
def test_an_interrupted_run_still_gets_its_plots_and_a_killed_tracker_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from tests.helpers import generated_prepared_data, tiny_config

    data = generated_prepared_data(tmp_path / "data")
    config = tiny_config(tmp_path, data, num_epochs=200, log_to_mlflow=True,
                         mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlruns.db", experiment_name="stop")
    child = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(config)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(len(p.read_text().splitlines()) > 1 for p in (tmp_path / "output").glob("*/metrics.csv")):
            assert child.poll() is None, child.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    run_dir = next((tmp_path / "output").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert {p.name for p in (run_dir / "plots").iterdir()} == {"loss.png", "accuracy.png", "lr.png"}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("stop").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"


def test_the_neptune_command_that_uploads_offline_runs_starts() -> None:
    """`neptune sync` (documentation/experiment_tracking.md) imports pkg_resources: prod_requirements keeps it."""
    neptune_cli = Path(sys.executable).with_name("neptune")
    result = subprocess.run([str(neptune_cli), "sync", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--offline-only" in result.stdout and "--project" in result.stdout


def test_a_tracker_that_cannot_start_leaves_one_clean_line_and_no_run_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import neptune

    from models.training_run import train
    from tests.helpers import generated_prepared_data, tiny_config
    from utils.configuration import load_config
    from utils.errors import UserError

    def refused(**kwargs):
        raise RuntimeError("\x1b[95m----NeptuneConnectionLostException----\x1b[0m server unreachable")

    monkeypatch.setattr(neptune, "init_run", refused)
    data = generated_prepared_data(tmp_path / "data", classes=2, train_per_class=2, test_per_class=1)
    config = load_config(str(tiny_config(tmp_path, data, log_to_neptune=True, neptune_mode="async",
                                         neptune_username="me", neptune_project_name="cars",
                                         neptune_api_token="token")))
    with pytest.raises(UserError) as caught:
        train(config)
    assert "NeptuneConnectionLostException---- server unreachable" in str(caught.value)
    assert "\x1b" not in str(caught.value)
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())


def test_mlflow_run_is_ended_even_when_logging_its_files_fails(tmp_path: Path) -> None:
    """A plot that vanished (a dangling link) makes the artifact upload fail: the run still ends, not RUNNING."""
    from mlflow.tracking import MlflowClient

    config = tracker_config(tmp_path, log_to_mlflow=True)
    run_dir = tmp_path / "output" / "ghost_20260101000002"
    run_dir.mkdir(parents=True)
    model = TinyModule()
    loggers = build_loggers(config, run_dir, model)
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "loss.png").symlink_to(tmp_path / "gone.png")
    finalize_trackers(loggers, run_dir, {"max_valid_acc": 0.5, "epochs_run": 1}, "failed")
    client = MlflowClient(config["mlflow_tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert run.data.metrics["max_valid_acc"] == 0.5


def test_on_colab_an_mlflow_store_on_drive_is_warned_of(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import logging

    from utils.trackers import warn_of_store_on_drive

    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
    handler = logging.StreamHandler(stream := io.StringIO())
    logging.getLogger("cars").addHandler(handler)  # the project's logger may not propagate (logging_setup)
    try:
        warn_of_store_on_drive("sqlite:////content/local/mlruns.db")
        assert stream.getvalue() == ""
        warn_of_store_on_drive("sqlite:////content/drive/MyDrive/cars/mlruns.db")
    finally:
        logging.getLogger("cars").removeHandler(handler)
    assert "log_to_mlflow: false" in stream.getvalue() and "utils.dashboard" in stream.getvalue()
