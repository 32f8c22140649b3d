"""Surviving interruptions: finding the checkpoint to resume, exact RNG state in checkpoints, graceful signals."""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from utils.config_schema import SCHEMA, defaults
from utils.configuration import masked
from utils.errors import ConfigError
from utils.run_outputs import epochs_done, read_summary

log = logging.getLogger("cars")

# Keys a run may be resumed with other values for: where things are, what is logged where, on what hardware and how
# data is loaded (so a run can move to another machine), and how many epochs it runs (so it can be extended).
NON_RECIPE_SECTIONS = ("paths", "logging", "hardware", "data_loading")
NON_RECIPE_KEYS = {key.name for key in SCHEMA if key.section in NON_RECIPE_SECTIONS} | {"run_name", "num_epochs"}


def recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that decides what a run computes."""
    return {key: value for key, value in masked(config).items() if key not in NON_RECIPE_KEYS}


def run_dir_of(checkpoint: Path) -> Path:
    """`<run>/checkpoints/last.ckpt` -> `<run>`."""
    return checkpoint.resolve().parent.parent


def _saved_recipe(run_dir: Path) -> dict[str, Any] | None:
    """The recipe of the run's config.yml (keys added to the schema since the run take their defaults), or None
    when it cannot be read as a config."""
    try:
        saved = yaml.safe_load((run_dir / "config.yml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return recipe({**defaults(), **saved}) if isinstance(saved, dict) else None


def _check_same_recipe(spec: str, checkpoint: Path, config: dict[str, Any]) -> None:
    """A run continues with the settings it was trained with: other values for its recipe keys are refused."""
    run_dir = run_dir_of(checkpoint)
    theirs, ours = _saved_recipe(run_dir), recipe(config)
    if theirs is None:
        raise ConfigError(f"--resume {spec}: {run_dir / 'config.yml'} cannot be read as a config")
    differing = sorted(key for key in theirs.keys() | ours.keys() if theirs.get(key) != ours.get(key))
    if differing:
        changes = "; ".join(f"{key}: {theirs.get(key)!r} in the run, {ours.get(key)!r} now" for key in differing[:5])
        raise ConfigError(f"--resume {spec}: run {run_dir.name} was trained with other settings ({changes}"
                          f"{'; ...' if len(differing) > 5 else ''}); resume it with its own config: --config "
                          f"{run_dir / 'config.yml'} (add --set num_epochs=N to extend it)")


def _epochs_left(checkpoint: Path, config: dict[str, Any]) -> int:
    return config["num_epochs"] - epochs_done(run_dir_of(checkpoint) / "metrics.csv")


def _nothing_left(spec: str, checkpoint: Path, config: dict[str, Any]) -> ConfigError:
    run_dir = run_dir_of(checkpoint)
    status = read_summary(run_dir).get("status", "unknown")
    return ConfigError(f"--resume {spec}: run {run_dir.name} has already run {epochs_done(run_dir / 'metrics.csv')} "
                       f"epochs (status {status}) and num_epochs is {config['num_epochs']}: nothing is left to "
                       "train; raise num_epochs to continue it, or start a new run without --resume")


def find_resume_checkpoint(spec: str, config: dict[str, Any]) -> Path:
    """`--resume PATH` -> that file; `--resume auto` -> the last.ckpt of the run named by `run_name`, or of the
    newest run folder under `output_path` whose config has the same recipe and that has epochs left to train (one
    that stopped early counts as done). A run with no epochs left under `num_epochs` is never resumed: it would
    train nothing and overwrite its summary."""
    if spec != "auto":
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"--resume {spec}: no such checkpoint file")
        if not (run_dir_of(path) / "config.yml").is_file():
            raise ConfigError(f"--resume {spec}: not inside a run folder (<run>/checkpoints/last.ckpt)")
        _check_same_recipe(spec, path, config)
        if _epochs_left(path, config) <= 0:
            raise _nothing_left(spec, path, config)
        return path
    output = Path(config["output_path"])
    if config["run_name"] is not None:
        path = output / config["run_name"] / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ConfigError(f"--resume auto: run {config['run_name']!r} has no {path} to resume from")
        _check_same_recipe(spec, path, config)
        if _epochs_left(path, config) <= 0:
            raise _nothing_left(spec, path, config)
        return path
    wanted = recipe(config)
    same_recipe = [path for path in output.glob("*/checkpoints/last.ckpt") if _saved_recipe(run_dir_of(path)) == wanted]
    candidates = [path for path in same_recipe if _epochs_left(path, config) > 0
                  and read_summary(run_dir_of(path)).get("status") != "early_stopped"]
    if not candidates:
        done = f" ({len(same_recipe)} with this config have nothing left to train)" if same_recipe else ""
        raise ConfigError(f"--resume auto: no unfinished run with this config under {output}{done}; start a new "
                          "run without --resume, set run_name, or pass --resume PATH")
    return max(candidates, key=lambda p: p.stat().st_mtime)


class RngStateCheckpoint(Callback):
    """Stores the Python, NumPy and torch RNG states in each checkpoint and restores them on resume, so that a
    resumed run draws the same shuffles, augmentations and dropout masks as an uninterrupted one (with
    `num_workers: 0`; worker processes keep RNG states of their own)."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        name, keys, position, has_gauss, cached = np.random.get_state()
        # Plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True).
        checkpoint["rng_states"] = {
            "python": random.getstate(), "numpy": [name, keys.tolist(), position, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        random.setstate(states["python"])
        name, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


class GracefulInterrupt(Callback):
    """First SIGINT/SIGTERM: stop at the next batch boundary, so that no checkpoint is cut in half; Lightning then
    shuts down and our cleanup (plots, summary, trackers) runs. Second signal: exit at once.

    Lightning already turns SIGTERM into a stop at the next batch (its `received_sigterm` flag); SIGINT is routed the
    same way instead of raising KeyboardInterrupt wherever the program happens to be. Before the training loop runs
    (data setup and the image cache build, checkpoint restore), there is no batch to wait for and Lightning would
    clear the flag when it registers its handlers: a signal then stops at once (KeyboardInterrupt, which Lightning
    shuts down from). Pass the object to the Trainer's callbacks, so that it knows when the loop starts.
    """

    def __init__(self) -> None:
        self.trainer: pl.Trainer | None = None
        self.signum: int | None = None
        self.loop_running = False

    def install(self, trainer: pl.Trainer | None = None) -> None:
        """Route SIGINT and SIGTERM here; `trainer` is the one to stop (kept from an earlier call when None)."""
        self.trainer = trainer or self.trainer
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.loop_running = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"\nsecond {name}: exiting at once", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        trainer = self.trainer
        if self.loop_running and trainer is not None and (trainer.training or trainer.validating):
            print(f"\n{name} received: stopping at the next batch (send it again to exit at once)",
                  file=sys.stderr, flush=True)
            trainer._signal_connector.received_sigterm = True
        else:
            print(f"\n{name} received: stopping", file=sys.stderr, flush=True)
            raise KeyboardInterrupt

    def reinstall(self) -> None:
        """Lightning restores its own handlers when fit ends; a second signal during our cleanup must still work."""
        self.install()
