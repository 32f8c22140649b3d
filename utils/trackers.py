"""Experiment trackers (MLflow, Neptune) as Lightning loggers, built from the config and closed at the run's end."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger

from utils.configuration import is_placeholder
from utils.errors import ConfigError
from utils.run_params import detect_runtime, run_params

log = logging.getLogger("cars")

TOKEN_ENV = "NEPTUNE_API_TOKEN"
RUN_FILES = ("config.yml", "metrics.csv", "summary.json")


def neptune_api_token(config: dict[str, Any]) -> str | None:
    """The token from the config, or from NEPTUNE_API_TOKEN when the config holds the placeholder."""
    token = config["neptune_api_token"]
    if is_placeholder(token) or not token:
        return os.environ.get(TOKEN_ENV) or None
    return token


def neptune_project(config: dict[str, Any]) -> str | None:
    """'username/project' from the config, or None when either is still the placeholder (NEPTUNE_PROJECT is read)."""
    user, project = config["neptune_username"], config["neptune_project_name"]
    if is_placeholder(user) or is_placeholder(project):
        return None
    return f"{user}/{project}"


def architecture_name(model: Any) -> str:
    """The network's class name (GhostNet), as the 2020 runs logged it."""
    return type(getattr(model, "net", model)).__name__


def check_tracker_config(config: dict[str, Any]) -> None:
    """Fail before any run folder or tracker run exists when Neptune's settings cannot work."""
    if config["log_to_neptune"] and config["neptune_mode"] == "async":
        token, project = neptune_api_token(config), neptune_project(config)
        if token is None or project is None:
            missing = "neptune_api_token (or NEPTUNE_API_TOKEN)" if token is None else \
                "neptune_username and neptune_project_name"
            raise ConfigError(f"log_to_neptune with neptune_mode async needs {missing}; Neptune's hosted service "
                              f"closed on 2026-03-05: use neptune_mode: offline to keep runs locally")


def build_loggers(config: dict[str, Any], run_dir: Path, model: Any, resume: bool = False) -> list[Logger]:
    """The Lightning loggers the config asks for, each with its tracker run created and its parameters logged;
    `resume` continues the run folder's existing tracker runs.

    Runs are created on rank 0 only (Lightning's rank-zero conventions); other ranks get inert loggers.
    """
    from utils.mlflow_logger import MlflowRunLogger
    from utils.neptune_logger import NeptuneRunLogger

    loggers: list[Any] = []
    # Neptune first: when it cannot start, no MLflow run is left open behind it.
    check_tracker_config(config)
    if config["log_to_neptune"]:
        mode = config["neptune_mode"]
        token, project = neptune_api_token(config), neptune_project(config)
        loggers.append(NeptuneRunLogger(run_dir.name, mode=mode, project=project, api_token=token,
                                        tags=config["tags"], description=config["description"]))
    if config["log_to_mlflow"]:
        warn_of_store_on_drive(config["mlflow_tracking_uri"])
        loggers.append(MlflowRunLogger(run_dir.name, config["mlflow_tracking_uri"], config["experiment_name"],
                                       config["tags"], config["description"], resume=resume))
    if loggers:
        params = run_params(config, architecture_name(model), getattr(model, "num_params", 0))
        for logger in loggers:
            logger.log_run_params(params)
    return loggers


def warn_of_store_on_drive(tracking_uri: str) -> None:
    """On Colab, an SQLite store inside the mounted Google Drive is a file that other machines sync too: say so."""
    if tracking_uri.startswith("sqlite:///") and detect_runtime() == "colab" and \
            "/content/drive/" in str(Path(tracking_uri.removeprefix("sqlite:///")).resolve()):
        log.warning("mlflow_tracking_uri %s is on Google Drive: an SQLite file written by two machines breaks; set "
                    "log_to_mlflow: false on Colab and bring the run folders into your own store with "
                    "python -m utils.dashboard (documentation/experiment_tracking.md)", tracking_uri)


def run_files(run_dir: Path) -> list[tuple[Path, str]]:
    """The run folder's files that trackers keep: config.yml, metrics.csv, summary.json and plots/*.png."""
    files = [(run_dir / name, name) for name in RUN_FILES if (run_dir / name).is_file()]
    plots = run_dir / "plots"
    if plots.is_dir():
        files += [(path, f"plots/{path.name}") for path in sorted(plots.glob("*.png"))]
    return files


def finalize_trackers(loggers: list[Logger], run_dir: Path, summary: dict[str, Any], status: str) -> None:
    """Hand the finished run's summary and files to every tracker (status: finished, early_stopped, interrupted,
    failed, pruned).

    A tracker that fails here is reported and skipped: the run folder already holds everything.
    """
    files = run_files(run_dir)
    for logger in loggers:
        close = getattr(logger, "close_run", None)
        if close is None:
            continue
        try:
            close(summary, status, files)
        except Exception as error:  # noqa: BLE001 - a tracker must not turn a finished run into a failure
            log.warning("%s could not close its run: %s: %s", type(logger).__name__, type(error).__name__, error)
