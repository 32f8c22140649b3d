"""utils.dashboard and utils.run_import on a real MLflow SQLite store (no mocks): run folders of two machines in
one store, imports repeated and resumed, the thesis's 2020 runs added once, the UI's address; concurrent trainings
into a store that does not exist yet; the dashboard in a real browser (slow)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import ROOT, run_module
from utils.configuration import defaults
from utils.mlflow_logger import EXPERIMENT_KIND_TAG, MODEL_TRAINING
from utils.plots import write_plots
from utils.run_outputs import METRIC_COLUMNS, write_run_config, write_summary
from utils.run_params import run_params
from utils.thesis_runs import thesis_runs

EXPERIMENT = "cars-test"
LOCAL_RUN, COLAB_RUN = "ghost_20261201100000", "ghost_20261201110000"


def write_run_folder(run_dir: Path, epochs: range, status: str, tags: list[str], first: int = 0) -> dict:
    """A run folder as train.py leaves it (config.yml, metrics.csv, summary.json, plots), written by the project's
    own writers; epoch e has valid_acc 0.1 * (e + 1)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**defaults(), "run_name": run_dir.name, "experiment_name": EXPERIMENT, "tags": tags,
              "description": f"{run_dir.name} recipe", "image_size": [64, 64], "num_epochs": 10}
    write_run_config(run_dir, config)
    rows = [{"epoch": e, "train_loss": 2.0 - 0.1 * e, "train_acc": 0.05 * (e + 1), "valid_loss": 2.5 - 0.1 * e,
             "valid_acc": 0.1 * (e + 1), "lr": 0.001, "epoch_time_s": 1.5} for e in epochs]
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    old = run_dir / "metrics.csv"
    if first and old.is_file():
        metrics = pd.concat([pd.read_csv(old).query("epoch < @first"), metrics])
    metrics.to_csv(old, index=False)
    write_plots(old, run_dir / "plots", title=run_dir.name)
    best_epoch = int(metrics.loc[metrics["valid_loss"].idxmin(), "epoch"])
    write_summary(run_dir, best_epoch, {"early_stopped": False, "num_params": 12345, "architecture": "GhostNet",
                            "wall_time_s": 60.0, "status": status})
    return config


def store_runs(uri: str) -> tuple:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return client, experiment, runs


def history(client, run, name: str) -> dict[int, float]:
    points = client.get_metric_history(run.info.run_id, name)
    steps = [m.step for m in points]
    assert len(steps) == len(set(steps)), f"{name}: an epoch logged twice"
    return {m.step: m.value for m in points}


def test_runs_of_two_machines_import_into_one_store_again_without_duplicates_and_resumed(tmp_path: Path) -> None:
    from utils.dashboard import find_run_folders
    from utils.run_import import import_run_folders

    # Two machines: a local output folder, and a Colab one on Drive that reaches this machine as a copy.
    local = tmp_path / "laptop" / "output"
    config = write_run_folder(local / LOCAL_RUN, range(3), "finished", ["C-50", "4.2.14"])
    write_run_folder(tmp_path / "colab" / "drive" / "output" / COLAB_RUN, range(2), "interrupted", ["C-1"])
    synced = tmp_path / "laptop" / "drive-sync" / "output"
    shutil.copytree(tmp_path / "colab" / "drive" / "output", synced)
    uri = f"sqlite:///{tmp_path / 'laptop' / 'mlruns.db'}"

    report = import_run_folders(uri, find_run_folders([local, synced]), progress=False)
    assert sorted(report.added) == [LOCAL_RUN, COLAB_RUN]
    client, experiment, runs = store_runs(uri)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {LOCAL_RUN, COLAB_RUN}
    run = by_name[LOCAL_RUN]
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert run.data.tags["ID"] == "C-50" and run.data.tags["mlflow.note.content"] == f"{LOCAL_RUN} recipe"
    expected = {k: str(v) for k, v in run_params(config, "GhostNet", 12345).items() if k != "runtime"}
    assert run.data.params == expected
    assert history(client, run, "valid_acc") == pytest.approx({0: 0.1, 1: 0.2, 2: 0.3})
    assert history(client, run, "lr") == pytest.approx({0: 0.001, 1: 0.001, 2: 0.001})
    assert run.data.metrics["max_valid_acc"] == pytest.approx(0.3) and run.data.metrics["epochs_run"] == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yml", "metrics.csv", "summary.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss.png", "plots/accuracy.png", "plots/lr.png"}
    colab = by_name[COLAB_RUN]
    assert colab.info.status == "KILLED" and colab.data.tags["status"] == "interrupted"
    assert colab.data.tags["run_folder"] == str((synced / COLAB_RUN).resolve())

    # The same import again adds nothing.
    report = import_run_folders(uri, find_run_folders([local, synced]), progress=False)
    assert sorted(report.unchanged) == [LOCAL_RUN, COLAB_RUN] and not report.added and not report.updated
    client, _, runs = store_runs(uri)
    assert len(runs) == 2 and len(client.get_metric_history(run.info.run_id, "valid_acc")) == 3

    # The Colab run is resumed there (epochs 2-4) and synced again: its MLflow run continues.
    write_run_folder(synced / COLAB_RUN, range(2, 5), "finished", ["C-1"], first=2)
    report = import_run_folders(uri, find_run_folders([local, synced]), progress=False)
    assert report.updated == [COLAB_RUN] and report.unchanged == [LOCAL_RUN]
    client, _, runs = store_runs(uri)
    (colab,) = [r for r in runs if r.info.run_name == COLAB_RUN]
    assert len(runs) == 2 and colab.info.run_id == by_name[COLAB_RUN].info.run_id
    assert history(client, colab, "valid_acc") == pytest.approx({e: 0.1 * (e + 1) for e in range(5)})
    assert colab.info.status == "FINISHED" and colab.data.tags["status"] == "finished"
    assert colab.data.metrics["epochs_run"] == 5


@pytest.mark.slow
def test_thesis_runs_are_added_once_beside_new_runs_with_the_same_names(tmp_path: Path) -> None:
    from utils.run_import import import_thesis_runs, thesis_run_name

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert len(import_thesis_runs(uri, EXPERIMENT).added) == 56
    again = import_thesis_runs(uri, EXPERIMENT)
    assert not again.added and len(again.unchanged) == 56
    client, _, runs = store_runs(uri)
    assert len(runs) == 56
    (c50,) = [r for r in runs if r.data.tags.get("ID") == "C-50"]
    record = thesis_runs()["C-50"]
    assert c50.info.run_name == thesis_run_name("C-50") and c50.data.tags["source"] == "thesis-2020"
    assert c50.data.tags["thesis_run_name"] == "ghost_20200922060810" and c50.info.status == "FINISHED"
    assert c50.data.params == {k: str(v) for k, v in record.params.items()}
    # the same parameter names and texts as a new run of the C-50 config
    ours = run_params(__import__("utils.configuration", fromlist=["load_config"]).load_config(
        str(ROOT / "configs" / "thesis" / "C-50.yml")), "GhostNet", 3041412, runtime="colab")
    assert c50.data.params == {k: str(v) for k, v in ours.items()}
    valid_acc = history(client, c50, "valid_acc")
    assert len(valid_acc) == record.epochs and max(valid_acc.values()) == pytest.approx(0.837946)
    assert c50.data.metrics["max_valid_acc"] == pytest.approx(0.837946)


@pytest.mark.slow
def test_dashboard_prints_the_runs_view_address_and_the_ui_command(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "output" / LOCAL_RUN, range(2), "early_stopped", ["C-50"])
    uri = f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}"
    (tmp_path / "config.yml").write_text(f"experiment_name: {EXPERIMENT}\noutput_path: {tmp_path / 'output'}\n"
                                         f"mlflow_tracking_uri: {uri}\n")
    result = run_module("utils.dashboard", ["--config", str(tmp_path / "config.yml"), "--no-ui"])
    assert result.returncode == 0, result.stderr
    _, experiment, runs = store_runs(uri)
    assert [r.info.run_name for r in runs] == [LOCAL_RUN] and runs[0].info.status == "FINISHED"
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000" in result.stdout
    assert (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
            in result.stdout)
    assert "1 runs added" in result.stdout


def test_dashboard_refuses_a_folder_that_does_not_exist_in_one_line(tmp_path: Path) -> None:
    result = run_module("utils.dashboard", [str(tmp_path / "nowhere"), "--no-ui",
                                            "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_processes_creating_one_new_store_at_once_both_succeed(tmp_path: Path) -> None:
    """MLflow's schema migration of a new SQLite store is done under a file lock: without it the second process
    dies with alembic's 'Online migration expected to match one row'."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlruns.db'}"
    code = ("import sys; from utils.mlflow_logger import prepare_experiment; "
            f"client, eid = prepare_experiment({uri!r}, 'race'); "
            "print(client.create_run(eid, run_name=sys.argv[1]).info.run_id)")
    children = [subprocess.Popen([sys.executable, "-c", code, f"run{i}"], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "race"]
    assert len(client.search_runs([experiment.experiment_id])) == 2


@pytest.mark.slow
def test_two_trainings_started_at_once_into_a_new_store_both_finish(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tests.helpers import generated_prepared_data, tiny_config

    data = generated_prepared_data(tmp_path / "data", classes=2, train_per_class=4, test_per_class=2)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}"
    children = []
    for name in ("first", "second"):
        config = tiny_config(tmp_path, data, name=f"{name}.yml", num_epochs=1, run_name=name, log_to_mlflow=True,
                             mlflow_tracking_uri=uri, experiment_name="together")
        children.append(subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(config)],
                                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for child in children:
        out, _ = child.communicate(timeout=600)
        assert child.returncode == 0, out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("first", "FINISHED"), ("second", "FINISHED")]
    for name in ("first", "second"):
        assert json.loads((tmp_path / "output" / name / "summary.json").read_text())["status"] == "finished"


def test_summary_with_thesis_adds_the_2020_best_accuracy_epochs_and_difference(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "output" / LOCAL_RUN, range(3), "finished", ["C-50", "4.2.14"])
    write_run_folder(tmp_path / "output" / COLAB_RUN, range(2), "finished", ["mine"])
    result = run_module("utils.summary", ["--output-path", str(tmp_path / "output"), "--with-thesis",
                                          "--format", "csv"])
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(__import__("io").StringIO(result.stdout)).set_index("run")
    c50 = thesis_runs()["C-50"]
    assert table.loc[LOCAL_RUN, "thesis_max_valid_acc"] == pytest.approx(c50.max_valid_acc)
    assert table.loc[LOCAL_RUN, "thesis_epochs"] == c50.epochs
    assert table.loc[LOCAL_RUN, "vs_thesis_acc"] == pytest.approx(0.3 - c50.max_valid_acc)
    assert pd.isna(table.loc[COLAB_RUN, "thesis_max_valid_acc"])
    markdown = run_module("utils.summary", ["--output-path", str(tmp_path / "output"), "--with-thesis"])
    assert f"{100 * c50.max_valid_acc:.2f}%" in markdown.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian: apt-get install chromium)")
def test_the_printed_address_shows_the_imported_runs_and_a_thesis_run_in_a_browser(tmp_path: Path) -> None:
    import os
    import signal

    write_run_folder(tmp_path / "output" / LOCAL_RUN, range(2), "finished", ["C-50"])
    write_run_folder(tmp_path / "colab" / COLAB_RUN, range(2), "interrupted", ["C-1"])
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    (tmp_path / "config.yml").write_text(f"experiment_name: {EXPERIMENT}\noutput_path: {tmp_path / 'output'}\n"
                                         f"mlflow_tracking_uri: {uri}\n")
    port = free_port()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "utils.dashboard", str(tmp_path / "output"), str(tmp_path / "colab"), "--thesis",
         "--config", str(tmp_path / "config.yml"), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        address, seen, deadline = None, [], time.monotonic() + 300
        while address is None:
            line = dashboard.stdout.readline()
            assert line or dashboard.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            seen.append(line)
            if line.startswith("dashboard: http"):
                address = line.split()[1]
        assert address.endswith("?workflowType=machine_learning")
        dom = ""
        for _ in range(3):  # the first visit may find the UI's scripts still loading
            page = subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,6000",
                 "--virtual-time-budget=20000", "--dump-dom", address],
                capture_output=True, text=True, timeout=180)
            dom = page.stdout
            if LOCAL_RUN in dom and COLAB_RUN in dom:
                break
        assert LOCAL_RUN in dom and COLAB_RUN in dom, dom[-3000:]
        assert "C-50 (thesis 2020)" in dom
    finally:
        os.killpg(dashboard.pid, signal.SIGTERM)
        dashboard.wait(timeout=60)
