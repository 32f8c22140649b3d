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
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from utils.run_params import param_text

EXPERIMENT_ID_PATTERN = re.compile(r"^[A-Z]+-\d+$")  # the thesis's experiment IDs: C-1 ... C-66
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
RUN_STATUS = {"finished": "FINISHED", "early_stopped": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}



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
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlartifacts").as_uri()


class MlflowRunLogger(MLFlowLogger):
    """Logs one training run to MLflow.

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
        self._resume = resume
        super().__init__(experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri,
                         tags=run_tags(list(tags), description),
                         artifact_location=default_artifact_location(tracking_uri))

    @property
    def experiment(self) -> Any:
        # Creating the experiment here (not in the parent) avoids its warning "Experiment ... not found".
        if not self._initialized and self._experiment_id is None and rank_zero_only.rank == 0:
            found = self._mlflow_client.get_experiment_by_name(self._experiment_name)
            if found is not None and found.lifecycle_stage != "deleted":
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = self._mlflow_client.create_experiment(
                    self._experiment_name, artifact_location=self._artifact_location)
            if self._resume and self._run_id is None:
                # A resumed training continues its MLflow run: same metric series, same run in the table.
                runs = self._mlflow_client.search_runs(
                    [self._experiment_id], filter_string=f"attributes.run_name = '{self._run_name}'",
                    order_by=["attributes.start_time DESC"], max_results=1)
                if runs:
                    self._run_id = runs[0].info.run_id
                    self._mlflow_client.update_run(self._run_id, status="RUNNING")
        return super().experiment

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        """Skipped: Lightning hands the module's constructor arguments here; the run's parameters are the 2020
        set, logged once with `log_run_params`."""

    @rank_zero_only
    def log_run_params(self, params: Mapping[str, Any]) -> None:
        """Log the run's parameter set (values as 2020's text: None, True, {'lr': 0.001})."""
        from mlflow.entities import Param

        items = [Param(k, param_text(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.experiment.log_batch(self.run_id, params=items[start:start + 100])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Epoch-level metrics carry the epoch (added by Lightning): it becomes the step, so charts are per epoch."""
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        super().log_metrics(metrics, step=int(epoch) if epoch is not None else step)

    @rank_zero_only
    def close_run(self, summary: Mapping[str, Any], status: str, files: Iterable[tuple[Path, str]]) -> None:
        """Add the best values, the status and the run's files (path, name in the run); end the run."""
        from mlflow.entities import Metric, RunTag

        if not self._initialized:
            return
        client, run_id = self.experiment, self.run_id
        numbers = {k: v for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k.startswith(("min_", "max_", "best_checkpoint_", "test_"))}
        for key in ("epochs_run",):
            if isinstance(summary.get(key), int):
                numbers[key] = summary[key]
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in numbers.items()],
                         tags=[RunTag("status", status)])
        for path, name in files:
            folder = str(Path(name).parent) if Path(name).parent != Path(".") else None
            client.log_artifact(run_id, str(path), artifact_path=folder)
        client.set_terminated(run_id, RUN_STATUS.get(status, "FINISHED"))
