"""Lightning's MLFlowLogger, with the epoch as the step of every per-epoch series and the run closed by us.

What a run holds: the run folder's name as the run name; the 2020 parameter set as params; the config's tags as
tag keys (value ""), all of them in a `tags` tag, the thesis ID (e.g. C-50) in an `ID` tag and the description as
the run's note (`mlflow.note.content`); per-epoch metrics; at the end the best values (min_valid_loss, ...) as
metrics, a `status` tag and the run folder's config.yml, metrics.csv, summary.json and plots as artifacts.
"""

from __future__ import annotations

import logging
import re
import time
from argparse import Namespace
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from utils.errors import ConfigError
from utils.run_params import param_text

EXPERIMENT_ID_PATTERN = re.compile(r"^[A-Z]+-\d+$")  # the thesis's experiment IDs: C-1 ... C-66
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
# MLflow's run state of each run status; the status itself is the run's `status` tag.
RUN_STATUS = {"finished": "FINISHED", "early_stopped": "FINISHED", "interrupted": "KILLED", "failed": "FAILED",
              "pruned": "KILLED"}
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # the kind whose UI opens on the run table


def quiet_mlflow() -> None:
    """MLflow's store setup and SQLAlchemy migrations talk at INFO; keep the console to our own lines.

    Called after mlflow is imported: its import configures the `mlflow` logger's level.
    """
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def experiment_id_tag(tags: Iterable[str]) -> str | None:
    """The first tag that looks like a thesis experiment ID (C-50), or None."""
    return next((t for t in tags if EXPERIMENT_ID_PATTERN.match(t)), None)


def run_tags(tags: list[str], description: str) -> dict[str, str]:
    """MLflow tags of a run: each config tag as a key, the list, the ID and the description (the run's note)."""
    out = {tag: "" for tag in tags}
    if tags:
        out["tags"] = ", ".join(tags)
    experiment_id = experiment_id_tag(tags)
    if experiment_id:
        out["ID"] = experiment_id
    if description:
        out["mlflow.note.content"] = description
    return out


def default_artifact_location(tracking_uri: str) -> str | None:
    """For an SQLite store, `mlartifacts/` beside the database file (MLflow's default is the working directory)."""
    database = sqlite_path(tracking_uri)
    return None if database is None else (database.resolve().parent / "mlartifacts").as_uri()


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of an `sqlite:///...` store, else None."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a summary.json that a tracker keeps as run metrics: best values (min_*, max_*, best_*),
    the held-out test figures (test_*), epochs_run and wall_time_s."""
    return {k: float(v) for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (k.startswith(("min_", "max_", "best_", "test_")) or k in ("epochs_run", "wall_time_s"))}


def prepare_experiment(tracking_uri: str, experiment_name: str) -> tuple[Any, str]:
    """An MlflowClient on the store and the id of the experiment, both created when missing; returns (client, id).

    For an SQLite store, creating or upgrading the database (MLflow's schema migrations) and creating the
    experiment happen under a file lock beside the database: two processes starting at once on a store that does
    not exist yet would otherwise both migrate it, and the second dies. The experiment is tagged as a model-training
    one, so that MLflow's UI shows its runs (not its GenAI pages).
    """
    from filelock import FileLock
    from mlflow import MlflowClient

    quiet_mlflow()
    database = sqlite_path(tracking_uri)
    lock: Any = nullcontext()
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{database}.lock")
    with lock:
        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment_name)
        if found is None:
            experiment_id = client.create_experiment(experiment_name,
                                                     artifact_location=default_artifact_location(tracking_uri),
                                                     tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        elif found.lifecycle_stage == "deleted":
            raise ConfigError(f"experiment_name {experiment_name!r} is a deleted experiment of {tracking_uri}: "
                              f"restore it (mlflow experiments restore --experiment-id {found.experiment_id}) or "
                              f"choose another experiment_name")
        else:
            experiment_id = found.experiment_id
            if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return client, experiment_id


def find_run(client: Any, experiment_id: str, run_name: str) -> Any | None:
    """The latest run of that name in the experiment, or None."""
    quoted = f'"{run_name}"' if "'" in run_name else f"'{run_name}'"
    runs = client.search_runs([experiment_id], filter_string=f"attributes.run_name = {quoted}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def runs_view_address(base_url: str, experiment_id: str) -> str:
    """The address of the experiment's run table in MLflow's UI (its model-training view, not the GenAI one)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


class MlflowRunLogger(MLFlowLogger):
    """Logs one training run to MLflow.

    The run is created (or, on resume, found again) here, on rank 0, and handed to Lightning's MLFlowLogger by
    its id.

    Args:
        run_name: the run's name (the run folder's name).
        resume: continue the latest MLflow run of that name (a resumed training) instead of starting one.
        tracking_uri: e.g. sqlite:///mlruns.db (embedded, no server) or http://host:port.
        experiment_name: the MLflow experiment the run belongs to (created when missing).
        tags, description: the config's `tags` list and `description`.
    """

    def __init__(self, run_name: str, tracking_uri: str, experiment_name: str, tags: Iterable[str] = (),
                 description: str = "", resume: bool = False) -> None:
        quiet_mlflow()
        run_id = None
        if rank_zero_only.rank == 0:
            client, experiment_id = prepare_experiment(tracking_uri, experiment_name)
            found = find_run(client, experiment_id, run_name) if resume else None
            if found is not None:
                # A resumed training continues its MLflow run: same metric series, same run in the table.
                run_id = found.info.run_id
                client.update_run(run_id, status="RUNNING")
            else:
                run_id = client.create_run(experiment_id, tags=run_tags(list(tags), description),
                                           run_name=run_name).info.run_id
        super().__init__(experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri,
                         artifact_location=default_artifact_location(tracking_uri), run_id=run_id)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        """Skipped: Lightning hands the module's constructor arguments here; the run's parameters are the 2020
        set, logged once with `log_run_params`."""

    @rank_zero_only
    def log_run_params(self, params: Mapping[str, Any]) -> None:
        """Log the run's parameter set (values as 2020's text: None, True, {'lr': 0.001})."""
        log_params(self.experiment, self.run_id, params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Epoch-level metrics carry the epoch (added by Lightning): it becomes the step, so charts are per epoch."""
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        super().log_metrics(metrics, step=int(epoch) if epoch is not None else step)

    @rank_zero_only
    def close_run(self, summary: Mapping[str, Any], status: str, files: Iterable[tuple[Path, str]]) -> None:
        """Add the best values, the status and the run's files (path, name in the run); end the run.

        The run is ended whatever fails before: a run is never left RUNNING once its training has ended.
        """
        from mlflow.entities import Metric, RunTag

        client, run_id = self.experiment, self.run_id
        try:
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in summary_metrics(summary).items()],
                             tags=[RunTag("status", status)])
            log_files(client, run_id, files)
        finally:
            client.set_terminated(run_id, RUN_STATUS.get(status, "FINISHED"))


def log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log parameters as 2020's text (None, True, {'lr': 0.001}), cut to MLflow's length limit."""
    from mlflow.entities import Param

    items = [Param(k, param_text(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start:start + 100])


def log_files(client: Any, run_id: str, files: Iterable[tuple[Path, str]]) -> None:
    """Log files as the run's artifacts: (path, name in the run), e.g. (run_dir/plots/loss.png, plots/loss.png)."""
    for path, name in files:
        folder = str(Path(name).parent) if Path(name).parent != Path(".") else None
        client.log_artifact(run_id, str(path), artifact_path=folder)
