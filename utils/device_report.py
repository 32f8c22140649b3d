"""Saying where a run trains: the device at the start and, on a CPU, how long the whole recipe would take."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger("cars")


def device_description(trainer: pl.Trainer) -> str:
    """'cuda:0 (NVIDIA H100 80GB HBM3)', 'the CPU (2 threads)', ... for the trainer's root device."""
    device = trainer.strategy.root_device
    count = trainer.num_devices * trainer.num_nodes
    several = f", {count} devices" if count > 1 else ""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}){several}"
    if device.type == "cpu":
        return f"the CPU ({torch.get_num_threads()} threads){several}"
    return f"{device}{several}"


def human_duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h', '2.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class CpuTimeEstimate(Callback):
    """On a CPU, after the first epoch of a fit, logs how long the epochs left would take at that pace: a
    thesis recipe that a GPU trains in minutes takes days on a CPU, and `accelerator: auto` falls back to it."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._said = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._said or self._started is None or trainer.strategy.root_device.type != "cpu":
            return
        self._said = True
        seconds = time.monotonic() - self._started
        left = trainer.max_epochs - trainer.current_epoch - 1
        if trainer.is_global_zero and left > 0:
            log.warning("training on the CPU: epoch %d took %s, so the %d epochs left of num_epochs=%d would take "
                        "about %s more (early stopping may end the run sooner); a CUDA GPU trains far faster "
                        "(documentation/setup.md)", trainer.current_epoch + 1, human_duration(seconds), left,
                        trainer.max_epochs, human_duration(seconds * left))
