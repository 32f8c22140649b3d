"""A Lightning logger on the `neptune` 1.x client (Lightning removed its own NeptuneLogger in 2.6.4).

Layout of a run, as the 2020 dashboard had it: `parameters/<name>` (the 2020 parameter set), one series per
metric at the top level (`train_loss`, `valid_acc`, `lr`, ...) with the epoch as the step, `summary/<name>` (best
values), `artifacts/<file>` (config.yml, metrics.csv, plots), `sys/name|tags|description`.
"""

from __future__ import annotations

import logging
import re
import warnings
from argparse import Namespace
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from utils.errors import UserError

log = logging.getLogger("cars")

MODES = ("async", "offline", "debug")
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")  # the client colours its error texts for a terminal


def _neptune_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers, strings and booleans stay typed; None, lists and mappings become text, as 2020 logged them."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}


class NeptuneRunLogger(Logger):
    """Logs one training run to Neptune.

    Args:
        run_name: the run's name (the run folder's name).
        mode: 'async' (a Neptune server; needs `project` and `api_token`), 'offline' (writes under `.neptune/`
            in the working directory, or NEPTUNE_DATA_DIRECTORY; no token, no network) or 'debug' (nothing kept).
        project: 'workspace/project' (async mode only).
        api_token: the API token (async mode only); None lets the client read NEPTUNE_API_TOKEN. It is handed to
            the client and nowhere else.
        tags, description: shown in the run table.
    """

    def __init__(self, run_name: str, mode: str = "async", project: str | None = None,
                 api_token: str | None = None, tags: Iterable[str] = (), description: str = "") -> None:
        super().__init__()
        if mode not in MODES:
            raise UserError(f"neptune_mode {mode!r} is not one of {', '.join(MODES)}")
        self._run_name = run_name
        self._mode = mode
        self._project = project
        self._api_token = api_token
        self._tags = list(tags)
        self._description = description
        self._run: Any = None

    def __repr__(self) -> str:  # never show the token
        return f"NeptuneRunLogger(run_name={self._run_name!r}, mode={self._mode!r}, project={self._project!r})"

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The `neptune.Run`, created on first use (rank 0 only)."""
        if self._run is None:
            self._run = self._init_run()
        return self._run

    def _init_run(self) -> Any:
        # The client warns at import that its package is deprecated, after forcing its warnings to "always":
        # recording them is the way to keep that line off the console.
        with warnings.catch_warnings(record=True):
            import neptune
        online = self._mode == "async"
        try:
            with warnings.catch_warnings(record=True):
                return neptune.init_run(
                    project=self._project if online else None, api_token=self._api_token if online else None,
                    mode=self._mode, name=self._run_name, description=self._description or None,
                    tags=self._tags or None, source_files=[], capture_hardware_metrics=online,
                    # The run folder's name identifies the run: a resumed training continues it (online modes).
                    custom_run_id=self._run_name[-36:] if online else None,
                )
        except Exception as error:  # the client's errors are many; all mean: this tracker cannot start
            message = " ".join(ANSI_CODES.sub("", str(error)).split())[:300]
            if self._api_token:
                message = message.replace(self._api_token, "***")
            raise UserError(
                f"neptune ({self._mode} mode) could not start a run: {type(error).__name__}: {message} — the hosted "
                f"service closed on 2026-03-05; use neptune_mode: offline, a self-hosted server, or "
                f"log_to_neptune: false") from None

    @property
    def name(self) -> str:
        return "neptune"

    @property
    def version(self) -> str:
        return self._run_name

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Skipped: Lightning hands the module's constructor arguments here; the run's parameters are the 2020
        set, logged once with `log_run_params`."""

    @rank_zero_only
    def log_run_params(self, params: Mapping[str, Any]) -> None:
        """Log the run's parameter set under `parameters/`."""
        self.experiment["parameters"] = _neptune_values(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Append each value to its series; the epoch Lightning adds to epoch-level metrics is the step."""
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        x = int(epoch) if epoch is not None else step
        for key, value in metrics.items():
            self.experiment[key].append(float(value), step=x)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Kept open: `close_run` adds the summary and the files after Lightning ends, then stops the run."""

    @rank_zero_only
    def close_run(self, summary: Mapping[str, Any], status: str, files: Iterable[tuple[Path, str]]) -> None:
        """Add the best values and the run's files (path, name in the run), record the status, stop the run."""
        if self._run is None:
            return
        run = self._run
        run["summary"] = _neptune_values({k: v for k, v in summary.items() if v is not None})
        run["status"] = status
        for path, name in files:
            run[f"artifacts/{name}"].upload(str(path), wait=True)
        run.stop()
        self._run = None
