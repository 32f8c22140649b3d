"""Bring run folders, and the thesis's 2020 runs, into an MLflow store: the run folder is the record, the store a
view of it.

A run folder becomes the MLflow run of the same name in its config's experiment: parameters (the 2020 set),
per-epoch metrics (epoch as step), tags, status, best values, and config.yml, metrics.csv, summary.json and plots
as artifacts. Importing again adds what is new (a resumed run's later epochs) and changes nothing else; a folder
whose files did not change is skipped. A run that was logged live into the same store is the same run.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from utils.configuration import defaults
from utils.errors import UserError
from utils.mlflow_logger import (
    RUN_STATUS,
    find_run,
    log_files,
    log_params,
    prepare_experiment,
    run_tags,
    summary_metrics,
)
from utils.run_outputs import METRIC_COLUMNS, read_summary, summarize
from utils.run_params import run_params
from utils.thesis_runs import thesis_runs
from utils.trackers import run_files

DIGEST_TAG = "import_digest"  # the digest of the run folder's files when last imported
FOLDER_TAG = "run_folder"  # where the folder was when last imported
THESIS_SOURCE = "thesis-2020"
_NAME_TIME = re.compile(r"_(\d{14})(?:_\d+)?$")  # ghost_20200922060810: the run's start


@dataclass
class ImportReport:
    """What an import did: run names added, updated (new epochs, status, files) and unchanged."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{len(self.added)} runs added, {len(self.updated)} updated, {len(self.unchanged)} unchanged"


def folder_digest(run_dir: Path) -> str:
    """A digest of the files an import reads: it changes when the run goes on, ends or is resumed."""
    digest = hashlib.sha256()
    for path, name in run_files(run_dir):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _start_time(run_name: str, run_dir: Path | None) -> int:
    """The run's start: the time in its generated name, else when its config.yml was written."""
    match = _NAME_TIME.search(run_name)
    if match:
        return _ms(datetime.strptime(match[1], "%Y%m%d%H%M%S").replace(tzinfo=UTC))
    return int((run_dir / "config.yml").stat().st_mtime * 1000) if run_dir else int(time.time() * 1000)


def _series(client: Any, run_id: str | None, metrics: pd.DataFrame, now: int) -> list[Any]:
    """The per-epoch metrics (epoch as step) that the run does not hold yet."""
    from mlflow.entities import Metric

    out = []
    for name in (c for c in METRIC_COLUMNS[1:] if c in metrics.columns):
        held = {m.step for m in client.get_metric_history(run_id, name)} if run_id else set()
        out += [Metric(name, float(value), now, int(epoch)) for epoch, value in zip(metrics["epoch"], metrics[name])
                if pd.notna(value) and int(epoch) not in held]
    return out


def _log_metrics(client: Any, run_id: str, metrics: list[Any]) -> None:
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load((run_dir / "config.yml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"{run_dir / 'config.yml'} cannot be read: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{run_dir / 'config.yml'} does not hold a config")
    return {**defaults(), **raw}  # a folder written before a key existed has that key's default


def import_run_folder(client: Any, experiment_id: str, run_dir: Path) -> str:
    """Bring one run folder into the experiment; returns 'added', 'updated' or 'unchanged'."""
    from mlflow.entities import Metric, RunTag

    config, summary = _read_config(run_dir), read_summary(run_dir)
    digest = folder_digest(run_dir)
    existing = find_run(client, experiment_id, run_dir.name)
    if existing is not None and existing.data.tags.get(DIGEST_TAG) == digest:
        return "unchanged"
    now = int(time.time() * 1000)
    start = _start_time(run_dir.name, run_dir)
    if existing is None:
        run_id = client.create_run(experiment_id, start_time=start, run_name=run_dir.name).info.run_id
        held_params: dict[str, str] = {}
    else:
        run_id, held_params = existing.info.run_id, existing.data.params

    status = summary.get("status")
    try:
        params = run_params(config, summary.get("architecture") or "", summary.get("num_params") or 0,
                            runtime=summary.get("runtime") or "unknown")
        # What the folder does not say is left out; logged params never change (MLflow keeps the first value).
        unknown = {k for k in ("architecture", "num_params", "runtime") if not summary.get(k)}
        log_params(client, run_id, {k: v for k, v in params.items() if k not in held_params and k not in unknown})
        metrics_csv = run_dir / "metrics.csv"
        metrics = pd.read_csv(metrics_csv) if metrics_csv.is_file() else pd.DataFrame(columns=["epoch"])
        series = _series(client, run_id if existing else None, metrics, now)
        _log_metrics(client, run_id, series + [Metric(k, v, now, 0) for k, v in summary_metrics(summary).items()])
        tags = {**run_tags([str(t) for t in config["tags"] or []], config["description"] or ""),
                FOLDER_TAG: str(run_dir.resolve())}
        if status:
            tags["status"] = status
        elif existing is None:
            tags["status"] = "unfinished"  # no summary.json: still training elsewhere, or stopped without writing it
        log_files(client, run_id, run_files(run_dir))
        # the digest last: an import that failed half-way is done again next time
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in {**tags, DIGEST_TAG: digest}.items()])
    finally:
        # never RUNNING: no process of ours is training it
        if status:
            wall = summary.get("wall_time_s")
            end = start + int(1000 * wall) if isinstance(wall, (int, float)) else None
            client.set_terminated(run_id, RUN_STATUS.get(status, "FINISHED"), end_time=end)
        elif existing is None:
            client.set_terminated(run_id, "KILLED")
    return "added" if existing is None else "updated"


def import_run_folders(tracking_uri: str, folders: Iterable[Path], progress: bool = True) -> ImportReport:
    """Import run folders into the store, each into its config's experiment (created when missing)."""
    from tqdm import tqdm

    report = ImportReport()
    experiments: dict[str, tuple[Any, str]] = {}
    folders = list(folders)
    for run_dir in tqdm(folders, desc="importing runs", unit="run", disable=not progress or not folders):
        name = _read_config(run_dir)["experiment_name"]
        if name not in experiments:
            experiments[name] = prepare_experiment(tracking_uri, name)
        client, experiment_id = experiments[name]
        getattr(report, import_run_folder(client, experiment_id, run_dir)).append(run_dir.name)
    return report


def thesis_run_name(experiment: str) -> str:
    """The MLflow run name of a 2020 run: its ID first, so that it sorts and reads beside new runs of it."""
    return f"{experiment} (thesis 2020)"


def import_thesis_runs(tracking_uri: str, experiment_name: str) -> ImportReport:
    """Add the 2020 runs (once) to the experiment, tagged `source: thesis-2020` and with their ID, under the
    parameter and metric names of new runs."""
    from mlflow.entities import Metric, RunTag

    from utils.configuration import PROJECT_ROOT

    client, experiment_id = prepare_experiment(tracking_uri, experiment_name)
    held = {r.data.tags.get("ID") for r in client.search_runs(
        [experiment_id], filter_string=f"tags.source = '{THESIS_SOURCE}'", max_results=1000)}
    report = ImportReport()
    for experiment, record in thesis_runs().items():
        name = thesis_run_name(experiment)
        if experiment in held:
            report.unchanged.append(name)
            continue
        config_file = PROJECT_ROOT / "configs" / "thesis" / f"{experiment}.yml"
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        start = _start_time(record.name, None)
        run_id = client.create_run(experiment_id, start_time=start, run_name=name).info.run_id
        log_params(client, run_id, record.params)
        with tempfile.TemporaryDirectory() as folder:  # the best values as a run of today would compute them
            record.metrics.to_csv(Path(folder) / "metrics.csv", index=False)
            best = summary_metrics(summarize(Path(folder) / "metrics.csv", {}))
        series = [Metric(c, float(v), start, int(e)) for c in record.metrics.columns if c != "epoch"
                  for e, v in zip(record.metrics["epoch"], record.metrics[c])]
        _log_metrics(client, run_id, series + [Metric(k, v, start, 0) for k, v in best.items()])
        tags = {**run_tags([str(t) for t in config.get("tags") or [experiment]], config.get("description") or ""),
                "ID": experiment, "source": THESIS_SOURCE, "thesis_run_name": record.name, "status": "finished"}
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run_id, "FINISHED", end_time=start)  # 2020's durations are not in the records
        report.added.append(name)
    return report
