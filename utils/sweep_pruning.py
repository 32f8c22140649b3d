"""Pruning a sweep's trial: each epoch's validation metric goes to Optuna, whose pruner may stop the run.

Optuna's own PyTorchLightningPruningCallback (optuna-integration 5.0) is written for the `lightning.pytorch` package;
this project trains with `pytorch_lightning`, whose Trainer does not take that package's callbacks, hence this one.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

log = logging.getLogger("cars")


class PruningCallback(Callback):
    """Reports `metric` (valid_acc or valid_loss) after every epoch to `trial`; when the pruner says so, stops
    training at the end of the epoch and says why in `stop_status`, which train() makes the run's status."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.stop_status: str | None = None
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record: dict[str, Any] | None = getattr(pl_module, "epoch_record", None)
        if trainer.sanity_checking or not trainer.is_global_zero or record is None:
            return
        if record["epoch"] != trainer.current_epoch or self.stop_status is not None:
            return
        epoch, value = int(record["epoch"]), float(record[self.metric])
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            self.stop_status, self.pruned_at = "pruned", epoch
            trainer.should_stop = True
            log.info("trial %d pruned after epoch %d (%s %.4g)", self.trial.number, epoch, self.metric, value)
