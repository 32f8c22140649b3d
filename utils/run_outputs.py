"""The run folder: `<output_path>/<run_name>/` with config.yml, metrics.csv, checkpoints/, plots/ and summary.json."""

from __future__ import annotations

import csv
import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from utils.configuration import dump_yaml
from utils.errors import ConfigError
from utils.files import write_text_atomic

log = logging.getLogger("cars")

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "epoch_time_s"]


def default_run_name(architecture: str, now: datetime | None = None) -> str:
    """`<architecture>_<YYYYmmddHHMMSS>`, the 2020 runs' naming."""
    return f"{architecture}_{(now or datetime.now()):%Y%m%d%H%M%S}"


def create_run_dir(output_path: Path, run_name: str | None, architecture: str) -> Path:
    """Create a new, empty run folder. A generated name is made unique; a chosen name that exists is an error."""
    output_path.mkdir(parents=True, exist_ok=True)
    if run_name is not None:
        run_dir = output_path / run_name
        try:
            run_dir.mkdir()
        except FileExistsError:
            if (run_dir / "checkpoints" / "last.ckpt").is_file():
                raise ConfigError(f"run folder {run_dir} already exists: choose another run_name, "
                                  f"or continue it with --resume auto") from None
            raise ConfigError(f"run folder {run_dir} already exists and holds no checkpoint to continue: choose "
                              "another run_name, or remove the folder") from None
        except OSError as error:
            raise ConfigError(f"run_name {run_name!r}: cannot create {run_dir} ({error.strerror})") from None
        return run_dir
    base = default_run_name(architecture)
    for suffix in ["", *(f"_{i}" for i in range(1, 1000))]:
        run_dir = output_path / f"{base}{suffix}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise ConfigError(f"cannot find a free run folder name for {base} in {output_path}")


def remove_unused_run_dir(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but its config.yml (a run that failed before it started)."""
    if run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == ["config.yml"]:
        (run_dir / "config.yml").unlink()
        run_dir.rmdir()


def write_run_config(run_dir: Path, config: dict[str, Any]) -> Path:
    """The resolved config, secrets masked, as `config.yml`."""
    path = run_dir / "config.yml"
    write_text_atomic(path, dump_yaml(config))
    return path


class MetricsCsvWriter(Callback):
    """Appends one row per finished epoch to metrics.csv (rank 0 only), flushed at once so a crash loses nothing.

    On resume, rows of epochs at or after the resumed epoch are dropped first, so no epoch appears twice.
    `epoch_time_s` is the wall time since the previous row (since training started, for the first epoch of a fit):
    training, validation and the previous epoch's checkpoint saving.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._since = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = time.monotonic()
        # on_train_start, not on_fit_start: only then has a resumed run's epoch counter been restored.
        if not trainer.is_global_zero:
            return
        if self.path.exists():
            kept = pd.read_csv(self.path)
            # reindex: a metrics.csv written before a column was added keeps its rows, with that column empty.
            kept = kept[kept["epoch"] < trainer.current_epoch].reindex(columns=METRIC_COLUMNS)
            write_text_atomic(self.path, kept.to_csv(index=False))
        else:
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(METRIC_COLUMNS)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = getattr(pl_module, "epoch_record", None)
        if trainer.sanity_checking or not trainer.is_global_zero or record is None:
            return
        if record["epoch"] != trainer.current_epoch:
            return
        now = time.monotonic()
        record = {**record, "epoch_time_s": now - self._since}
        self._since = now
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([record["epoch"], *(f"{record[c]:.6g}" for c in METRIC_COLUMNS[1:])])


def epochs_done(metrics_csv: Path) -> int:
    """Number of finished epochs recorded in metrics.csv (its last epoch + 1)."""
    if not metrics_csv.is_file():
        return 0
    epochs = pd.read_csv(metrics_csv)["epoch"]
    return int(epochs.max()) + 1 if len(epochs) else 0


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch whose weights a train.py checkpoint holds (0-based, as in metrics.csv); None without the file."""
    import torch

    if not Path(path).is_file():
        return None
    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True).get("epoch")
    except Exception:  # noqa: BLE001 - a damaged file: the summary says nothing about it rather than fail the run
        return None
    return int(epoch) if epoch is not None else None


def summarize(metrics_csv: Path, extras: dict[str, Any], best_checkpoint_epoch: int | None = None) -> dict[str, Any]:
    """The run's results from metrics.csv plus `extras` (architecture, num_params, test_acc, ...).

    Two different "best" results, named apart: the checkpoint `best.ckpt` holds (`best_checkpoint_*`, picked by
    `checkpoint_monitor`: the epoch `best_checkpoint_epoch`, read from the file) and the highest `valid_acc` of any
    epoch (`max_valid_acc`, at `max_valid_acc_epoch`), which needs no checkpoint and is often another epoch.
    """
    metrics = pd.read_csv(metrics_csv) if metrics_csv.is_file() else pd.DataFrame(columns=METRIC_COLUMNS)
    summary: dict[str, Any] = {
        "best_checkpoint_epoch": None, "best_checkpoint_valid_acc": None, "best_checkpoint_valid_loss": None,
        "max_valid_acc": None, "max_valid_acc_epoch": None,
        "min_train_loss": None, "min_valid_loss": None, "max_train_acc": None, "epochs_run": int(len(metrics)),
    }
    finite = metrics.dropna(subset=["valid_loss"])
    if len(finite):
        metrics = finite
        summary.update(
            min_train_loss=float(metrics["train_loss"].min()),
            min_valid_loss=float(metrics["valid_loss"].min()),
            max_train_acc=float(metrics["train_acc"].max()),
            max_valid_acc=float(metrics["valid_acc"].max()),
            max_valid_acc_epoch=int(metrics.loc[metrics["valid_acc"].idxmax(), "epoch"]),
        )
    row = metrics[metrics["epoch"] == best_checkpoint_epoch] if best_checkpoint_epoch is not None else metrics[:0]
    if len(row):
        summary.update(best_checkpoint_epoch=best_checkpoint_epoch,
                       best_checkpoint_valid_acc=float(row["valid_acc"].iloc[-1]),
                       best_checkpoint_valid_loss=float(row["valid_loss"].iloc[-1]))
    summary.update(extras)
    return summary


def result_line(summary: dict[str, Any]) -> str:
    """The run's results in one line, both "best"s named apart, and what the validation images were."""
    parts = []
    if summary.get("best_checkpoint_epoch") is not None:
        picked = "highest valid_acc" if summary.get("checkpoint_monitor") == "valid_acc" else "lowest valid_loss"
        parts.append(f"best.ckpt = epoch {summary['best_checkpoint_epoch']} ({picked}): valid_acc "
                     f"{100 * summary['best_checkpoint_valid_acc']:.2f} %, valid_loss "
                     f"{summary['best_checkpoint_valid_loss']:.4f}")
    if summary.get("max_valid_acc") is not None:
        parts.append(f"max valid_acc {100 * summary['max_valid_acc']:.2f} % (epoch {summary['max_valid_acc_epoch']})")
    if summary.get("test_acc") is not None:
        parts.append(f"best.ckpt on the test split: test_acc {100 * summary['test_acc']:.2f} %, "
                     f"test_top5 {100 * summary['test_top5']:.2f} %")
    split = summary.get("validation_split", "test")
    parts.append("validated on the test split (the thesis's choice: optimistic)" if split == "test"
                 else f"validated on {split} of the training images, held out")
    return "; ".join(parts)


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json, or {} when it has none (a run still going, or killed without a chance to write it)."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def write_summary(run_dir: Path, best_checkpoint_epoch: int | None, extras: dict[str, Any]) -> dict[str, Any]:
    """Write `summary.json` from metrics.csv, the epoch best.ckpt holds and `extras`; returns it."""
    summary = summarize(run_dir / "metrics.csv", extras, best_checkpoint_epoch)
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
