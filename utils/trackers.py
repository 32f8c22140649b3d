"""Experiment trackers (Neptune, MLflow) as Lightning loggers, built from the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger


def build_loggers(config: dict[str, Any], run_dir: Path, model: Any) -> list[Logger]:
    """The Lightning loggers the config asks for (none yet: trackers are added by the tracking work)."""
    return []


def finalize_trackers(loggers: list[Logger], run_dir: Path, summary: dict[str, Any], status: str) -> None:
    """Hand the finished run's summary and files to every tracker (status: finished, early_stopped, interrupted)."""
