"""Hyperparameter sweeps (utils.sweep): the space file, trials as train() runs, pruning, several workers, stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from tests.conftest import write_prepared
from tests.helpers import ROOT, run_module, run_train, tiny_config
from utils.configuration import load_config, validate
from utils.errors import ConfigError
from utils.sweep import one_device, open_storage, trial_config
from utils.sweep_space import SpaceError, load_space

SPACE = {
    "objective": {"metric": "valid_acc", "direction": "maximize"},
    "sampler": {"name": "RandomSampler", "params": {"seed": 0}},
    "pruner": None,
    "params": {
        "optimizer_params.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "output_channels": {"type": "int", "low": 64, "high": 320, "step": 64},
        "lr_scheduler_params.milestones": {"type": "categorical", "choices": [[67, 82, 95, 107], [40, 70]]},
    },
}


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


def base_config(tmp_path: Path) -> dict:
    return validate({"stanford_data_path": str(tmp_path / "data"), "output_path": str(tmp_path / "output")})


def load_study(output: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{output / 'sweeps' / name / 'study.db'}")


def sweep_args(space: Path, config: Path, *more: str) -> list[str]:
    return ["--space", str(space), "--config", str(config), *more]


BAD_SPACES = [
    ({"params": {"dropuot": {"type": "float", "low": 0.1, "high": 0.3}}}, "'dropuot' is not a config key (did you mean 'dropout'?)"),
    ({"params": {"dropout": {"type": "float", "low": 0.1, "high": 1.5}}}, "params.dropout = 1.5: dropout"),
    ({"params": {"dropout": {"type": "float", "low": 0.4, "high": 0.1}}}, "params.dropout: "),
    ({"params": {"dropout": {"type": "uniform", "low": 0.1, "high": 0.3}}}, "params.dropout: type is 'uniform'"),
    ({"params": {"dropout": {"type": "float", "low": 0.1, "hihg": 0.3}}}, "not 'hihg' (did you mean 'high'?)"),
    ({"params": {"output_channels": {"type": "int", "low": 64.5, "high": 320}}}, "params.output_channels: low is 64.5"),
    ({"params": {"optimizer_params.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
     "params.optimizer_params.lr: "),
    ({"params": {"dropout.rate": {"type": "float", "low": 0.1, "high": 0.3}}}, "dropout does not hold nested values"),
    ({"params": {"scheduler": {"type": "settings", "choices": {"bad": {"lr_scheduler": "NoSuchLR"}}}}},
     "params.scheduler = 'bad': "),
    ({"params": {"lr_scheduler": {"type": "categorical", "choices": ["MultiStepLR", "NoSuchLR"]}}},
     "params.lr_scheduler = 'NoSuchLR': "),
    ({"sampler": {"name": "TPESamplr"}, "params": SPACE["params"]}, "sampler 'TPESamplr' is not in optuna.samplers"),
    ({"pruner": {"name": "MedianPruner", "params": {"warmup": 2}}, "params": SPACE["params"]}, "pruner MedianPruner"),
    ({"objective": {"metric": "test_acc"}, "params": SPACE["params"]}, "objective test_acc needs a validation split"),
    ({"objective": {"metric": "valid_loss", "direction": "maximize"}, "params": SPACE["params"]},
     "objective valid_loss is to minimize"),
    ({"param": SPACE["params"]}, "unknown key 'param' (did you mean 'params'?)"),
    ({"params": {}}, "params is empty"),
]


@pytest.mark.parametrize(("space", "expected"), BAD_SPACES, ids=[e for _, e in BAD_SPACES])
def test_a_bad_space_is_one_line_naming_the_entry(tmp_path: Path, space: dict, expected: str) -> None:
    path = write_space(tmp_path / "space.yml", space)
    with pytest.raises(SpaceError) as error:
        load_space(path, base_config(tmp_path))
    message = str(error.value)
    assert message.startswith("space error: ") and "\n" not in message
    assert expected in message


def test_a_bad_space_file_exits_with_code_2_and_one_line(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "stanford", classes=2, train_per_class=2, test_per_class=1)
    space = write_space(tmp_path / "space.yml", {"params": {"dropuot": {"type": "float", "low": 0.1, "high": 0.3}}})
    result = run_module("utils.sweep", sweep_args(space, tiny_config(tmp_path, data)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dropuot" in lines[0] and "Traceback" not in result.stderr


def test_drawn_values_become_the_trial_config_with_lists_and_grouped_settings(tmp_path: Path) -> None:
    space_file = write_space(tmp_path / "space.yml", {"params": {
        "lr_scheduler_params.milestones": {"type": "categorical", "choices": [[40, 70]]},
        "image_augmentations.RandomAffine.degrees": {"type": "int", "low": 5, "high": 5},
        "schedule": {"type": "settings", "choices": {"annealing": {
            "lr_scheduler": "LambdaLR", "lr_scheduler_params": {"lr_lambda": "lambda epoch: 0.975 ** epoch"}}}},
    }})
    base = {**base_config(tmp_path), "tags": ["C-50"]}
    space = load_space(space_file, base)
    study = optuna.create_study(sampler=space.sampler())
    trial = study.ask()
    config = trial_config(base, space.suggest(trial), "demo", trial.number)
    assert trial.params["lr_scheduler_params.milestones"] == "[40, 70]"  # lists are stored by their text
    assert config["lr_scheduler"] == "LambdaLR"
    assert config["lr_scheduler_params"] == {"lr_lambda": "lambda epoch: 0.975 ** epoch"}
    assert config["image_augmentations"]["RandomAffine"]["degrees"] == 5
    assert config["image_augmentations"]["RandomAffine"]["shear"] == 8  # the rest of the base is kept
    assert config["run_name"] == "demo-trial0" and config["tags"] == ["C-50", "study:demo", "trial:0"]
    milestones_only = load_space(write_space(tmp_path / "m.yml", {"params": {
        "lr_scheduler_params.milestones": {"type": "categorical", "choices": [[40, 70]]}}}), base)
    trial = study.ask()
    assert trial_config(base, milestones_only.suggest(trial), "demo", 1)["lr_scheduler_params"] == {
        "gamma": 0.1, "milestones": [40, 70]}


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yml")), ids=lambda p: p.name)
def test_the_example_spaces_load_against_the_template(path: Path) -> None:
    space = load_space(path, load_config(str(ROOT / "config_template.yml")))
    assert space.params and space.metric == "valid_acc"


def test_a_trial_trains_on_one_device(tmp_path: Path) -> None:
    assert one_device(base_config(tmp_path))["devices"] == 1
    with pytest.raises(ConfigError, match="one worker per GPU"):
        one_device({**base_config(tmp_path), "devices": 2})


def test_a_storage_without_a_scheme_is_a_journal_file_and_a_bad_url_is_one_line(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "shared" / "ghost.journal"))
    assert isinstance(storage, optuna.storages.JournalStorage)
    optuna.create_study(storage=storage, study_name="ghost").optimize(lambda trial: 1.0, n_trials=1)
    assert (tmp_path / "shared" / "ghost.journal").stat().st_size > 0
    with pytest.raises(ConfigError, match="--storage nosuchdb://x: cannot open it") as error:
        open_storage("nosuchdb://x")
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A study of two one-epoch trials, run by the real command."""
    folder = tmp_path_factory.mktemp("sweep")
    data = write_prepared(folder / "stanford", classes=2, train_per_class=3, test_per_class=1)
    config = tiny_config(folder, data, num_epochs=1)
    space = write_space(folder / "ghost.yml", SPACE)
    result = run_module("utils.sweep", sweep_args(space, config, "--n-trials", "2"))
    return folder, config, result


def test_a_study_runs_its_trials_as_runs_and_writes_a_best_config_that_loads(small_study) -> None:
    folder, _, result = small_study
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(folder / "output", "ghost")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for trial in trials:
        run_dir = folder / "output" / f"ghost-trial{trial.number}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert trial.value == pytest.approx(summary["max_valid_acc"]) and summary["status"] == "finished"
        run_config = yaml.safe_load((run_dir / "config.yml").read_text())
        assert run_config["tags"] == ["study:ghost", f"trial:{trial.number}"]
        assert run_config["dropout"] == pytest.approx(trial.params["dropout"])
        assert run_config["lr_scheduler_params"]["milestones"] == json.loads(
            trial.params["lr_scheduler_params.milestones"])
        assert len(pd.read_csv(run_dir / "metrics.csv")) == 1
    # the second trial found the image cache the first one built
    log = result.stdout + result.stderr
    assert log.count("image cache: built") == 2 and log.count("image cache: using") == 2
    best_file = folder / "output" / "sweeps" / "ghost" / "best.yml"
    assert str(best_file) in result.stdout
    best = load_config(str(best_file))
    assert best["run_name"] is None and best["tags"] == []
    assert best["dropout"] == pytest.approx(study.best_trial.params["dropout"])
    assert best["output_channels"] == study.best_trial.params["output_channels"]
    table = pd.read_csv(folder / "output" / "sweeps" / "ghost" / "trials.csv")
    assert table["number"].tolist() == [0, 1] and set(table["status"]) == {"finished"}


@pytest.mark.slow
def test_a_test_acc_objective_with_a_held_out_split_returns_each_runs_test_accuracy(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "stanford", classes=2, train_per_class=4, test_per_class=2)
    config = tiny_config(tmp_path, data, num_epochs=1)
    space = write_space(tmp_path / "held_out.yml", {**SPACE, "objective": {"metric": "test_acc"}})
    result = run_module("utils.sweep", sweep_args(space, config, "--n-trials", "1", "--study", "held",
                                                  "--set", "validation_split=0.5"))
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = load_study(tmp_path / "output", "held").get_trials()
    summary = json.loads((tmp_path / "output" / "held-trial0" / "summary.json").read_text())
    assert summary["validation_split"] == 0.5 and 0 <= summary["test_acc"] <= 1
    assert trial.value == pytest.approx(summary["test_acc"])


@pytest.mark.slow
def test_the_best_config_trains_with_train_py(small_study) -> None:
    folder, _, result = small_study
    assert result.returncode == 0, result.stderr[-3000:]
    best_file = folder / "output" / "sweeps" / "ghost" / "best.yml"
    trained = run_train(["--config", str(best_file), "--set", "run_name=best"], cwd=folder)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((folder / "output" / "best" / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_study_reports_again_without_running_trials(small_study) -> None:
    folder, config, _ = small_study
    again = run_module("utils.sweep", sweep_args(folder / "ghost.yml", config, "--report"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "best trial" in again.stdout and len(load_study(folder / "output", "ghost").get_trials()) == 2


def start_worker(space: Path, config: Path, *more: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "utils.sweep", *sweep_args(space, config, *more)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_two_workers_on_one_storage_run_n_trials_in_all_each_once(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "stanford")
    config = tiny_config(tmp_path, data, num_epochs=1)
    space = write_space(tmp_path / "ghost.yml", {**SPACE, "sampler": {"name": "RandomSampler"}})
    workers = [start_worker(space, config, "--n-trials", "4") for _ in range(2)]  # the default SQLite storage
    outputs = [worker.communicate(timeout=900) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    trials = load_study(tmp_path / "output", "ghost").get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # each trial ran in exactly one worker, and each worker ran some
    started = [[n for n in range(4) if f"trial {n} of study ghost" in out + err] for out, err in outputs]
    assert sorted(started[0] + started[1]) == [0, 1, 2, 3] and started[0] and started[1]
    assert sorted(p.name for p in (tmp_path / "output").glob("ghost-trial*")) == [f"ghost-trial{n}" for n in range(4)]


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_and_its_run_and_tracker_say_so(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "stanford")
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = tiny_config(tmp_path, data, num_epochs=3, log_to_mlflow=True, mlflow_tracking_uri=tracking)
    # a learning rate of 1e4 throws the weights far off at the first step: the validation loss is huge (or NaN),
    # far above the threshold, which ThresholdPruner prunes at once (no warm-up, no randomness involved)
    space = write_space(tmp_path / "hopeless.yml", {
        "objective": {"metric": "valid_loss"}, "pruner": {"name": "ThresholdPruner", "params": {"upper": 50.0}},
        "params": {"optimizer_params.lr": {"type": "categorical", "choices": [1.0e4]}}})
    result = run_module("utils.sweep", sweep_args(space, config, "--n-trials", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    trial = load_study(tmp_path / "output", "hopeless").get_trials()[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["status"] == "pruned"
    run_dir = tmp_path / "output" / "hopeless-trial0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs_run"] == 1 and not summary["early_stopped"]
    assert (run_dir / "plots").is_dir()
    import mlflow

    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("stanford-cars").experiment_id])
    assert [run.data.tags["status"] for run in runs] == ["pruned"]
    assert "no trial has completed yet" in result.stdout


@pytest.mark.slow
def test_a_worker_stopped_by_sigterm_leaves_a_study_the_rerun_continues(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "stanford")
    config = tiny_config(tmp_path, data, num_epochs=3)
    space = write_space(tmp_path / "ghost.yml", SPACE)
    worker = start_worker(space, config, "--n-trials", "2")
    metrics = tmp_path / "output" / "ghost-trial0" / "metrics.csv"
    deadline = time.monotonic() + 600
    while worker.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:  # one epoch done
            break
        time.sleep(0.1)
    assert worker.poll() is None, "the worker ended before it could be stopped"
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=600)
    assert worker.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "continue it with:" in stderr.strip().splitlines()[-1]
    study = load_study(tmp_path / "output", "ghost")
    [trial] = study.get_trials()
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["status"] == "interrupted"
    assert json.loads((tmp_path / "output" / "ghost-trial0" / "summary.json").read_text())["status"] == "interrupted"

    rerun = run_module("utils.sweep", sweep_args(space, config, "--n-trials", "2"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    states = [t.state for t in load_study(tmp_path / "output", "ghost").get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE,
                      optuna.trial.TrialState.COMPLETE]


@pytest.mark.slow
def test_the_trial_start_benchmark_prints_each_part_for_the_first_and_a_later_trial(tmp_path: Path) -> None:
    result = run_module("benchmarks.trial_start", ["--train", "6", "--test", "3", "--rounds", "1",
                                                   "--folder", str(tmp_path / "bench")])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    for part in ("imports (once per worker)", "image cache (find, open)", "model", "MLflow run", "total"):
        assert part in rows
    assert len(list((tmp_path / "bench" / "cache").glob("train-*.npy"))) == 1  # built once, opened after


def test_a_storage_whose_driver_is_missing_names_the_driver_in_one_line() -> None:
    import importlib.util

    if importlib.util.find_spec("pymysql") is not None:
        pytest.skip("PyMySQL is installed here")
    with pytest.raises(ConfigError, match="database driver 'pymysql' is not installed; e.g. pip install"):
        open_storage("mysql+pymysql://optuna:optuna@127.0.0.1:3306/optuna")
