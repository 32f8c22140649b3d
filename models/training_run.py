"""One training run as a config describes: data, network, callbacks, trainer, and the run folder's outputs.

`train.py` is the command around it; the sweeps, the benchmarks and the tests call `train` directly.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, UserError

log = logging.getLogger("cars")


class Interrupted(UserError):
    """Training stopped by a signal; the message says how to resume."""

    prefix = "interrupted"
    exit_code = 130


def train(config: dict[str, Any], resume: str | None = None, callbacks: list | None = None) -> Path:
    """Run one training as `config` describes (or continue the run of a checkpoint); returns the run folder.
    `callbacks`: further Lightning callbacks (the benchmarks' clocks, say)."""
    # Heavy imports here, so that --help, --print-config and config errors answer at once.
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.plugins import AsyncCheckpointIO
    from pytorch_lightning.utilities import rank_zero_only

    from datasets.prepared.stanford_data_module import StanfordCarsDataModule
    from models.net_module import NetModule
    from models.training_parts import check_hardware, check_training_parts, early_stopping_patience, use_compile_cache
    from utils.device_report import CpuTimeEstimate, device_description
    from utils.plots import write_plots
    from utils.resilience import GracefulInterrupt, RngStateCheckpoint, find_resume_checkpoint
    from utils.run_outputs import (
        MetricsCsvWriter,
        checkpoint_epoch,
        epochs_done,
        read_summary,
        remove_unused_run_dir,
        result_line,
        write_summary,
    )
    from utils.trackers import build_loggers, check_tracker_config, finalize_trackers

    # Known, harmless notices of the libraries, printed at every run.
    warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")  # we log per epoch
    check_training_parts(config)
    graph_fallback = config["cuda_graphs"] == "auto"  # auto falls back to the eager step where capture fails
    config = check_hardware(config)  # `auto` device options resolved for this machine (logged; in config.yml)
    use_compile_cache(config)
    check_tracker_config(config)
    checkpoint = find_resume_checkpoint(resume, config) if resume else None
    if config["seed"] is not None:
        pl.seed_everything(config["seed"], workers=True, verbose=False)
    data = StanfordCarsDataModule(config)
    model = NetModule.from_config(config, data.num_classes, data.class_names, graph_fallback=graph_fallback)
    run_dir = _run_dir(config, checkpoint)
    config = {**config, "run_name": run_dir.name}
    log.info("run %s: %s, %d classes, %s parameters", run_dir.name, config["architecture"], data.num_classes,
             f"{model.num_params:,}")

    try:
        loggers = build_loggers(config, run_dir, model, resume=checkpoint is not None)
    except UserError:  # a tracker that cannot start: no run took place, so no run folder is left behind
        if checkpoint is None and rank_zero_only.rank == 0:
            remove_unused_run_dir(run_dir)
        raise
    early_stopping = EarlyStopping(monitor="valid_loss", mode="min", patience=early_stopping_patience(config))
    monitor = config["checkpoint_monitor"]
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor,
                           mode="max" if monitor == "valid_acc" else "min", save_top_k=1, enable_version_counter=False)
    # Lightning's save_last only refreshes last.ckpt when the best one changes; resuming needs every epoch's.
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1,
                           enable_version_counter=False)
    interrupt = GracefulInterrupt()
    callbacks = [early_stopping, best, last, MetricsCsvWriter(run_dir / "metrics.csv"), RngStateCheckpoint(),
                 interrupt, CpuTimeEstimate(), *(callbacks or [])]
    trainer = pl.Trainer(
        max_epochs=config["num_epochs"], accelerator=config["accelerator"], devices=config["devices"],
        num_nodes=config["num_nodes"], strategy=config["strategy"], precision=config["precision"],
        sync_batchnorm=config["sync_batchnorm"], deterministic=config["deterministic"], callbacks=callbacks,
        logger=loggers or False, default_root_dir=run_dir, num_sanity_val_steps=0, enable_model_summary=False,
        use_distributed_sampler=False,  # the data module picks its samplers (no padded validation shares)
        # Lightning's teardown waits for the writing thread, however fit ends (see documentation/performance.md).
        plugins=[AsyncCheckpointIO()] if config["async_checkpoints"] else None,
    )
    interrupt.install(trainer)
    if trainer.world_size > 1 and rank_zero_only.rank == 0:
        log.info("%d processes train with batch_size %d each: %d images per optimizer step", trainer.world_size,
                 config["batch_size"], trainer.world_size * config["batch_size"])
    if trainer.is_global_zero:
        log.info("training on %s (accelerator: %s)", device_description(trainer), config["accelerator"])
    # a resumed run's wall time includes the sessions before (their summary.json says how long they ran)
    earlier_s = float(read_summary(run_dir).get("wall_time_s") or 0) if checkpoint is not None else 0.0
    started = time.monotonic()
    status = "interrupted"
    test_metrics: dict[str, float] = {}
    best_path = run_dir / "checkpoints" / "best.ckpt"
    try:
        trainer.fit(model, datamodule=data, ckpt_path=checkpoint)
        if not data.validates_on_test and best.best_model_path:
            # Validation was held out from train: the test split is touched once, by the chosen checkpoint. The
            # callback's path, not a look at the folder: every DDP rank must agree to run the test.
            results = trainer.test(model, datamodule=data, ckpt_path=best.best_model_path, verbose=False)
            test_metrics = {name: float(value) for name, value in (results[0] if results else {}).items()}
        status = "finished"
    except (SystemExit, KeyboardInterrupt):
        # Lightning turns a stop request into SystemExit after shutting down cleanly.
        pass
    except Exception:
        status = "failed"  # still write what the run has: plots, summary, tracker status
        raise
    finally:
        interrupt.reinstall()
        if trainer.is_global_zero:
            # a callback that stopped the run may say why (a sweep's pruner: "pruned")
            stopped_by = [c.stop_status for c in callbacks if getattr(c, "stop_status", None)]
            if status == "finished" and stopped_by:
                status = stopped_by[0]
            # Judged from metrics.csv, not the callback's state: with ddp_spawn training ran in other processes.
            elif status == "finished" and epochs_done(run_dir / "metrics.csv") < config["num_epochs"]:
                status = "early_stopped"
            write_plots(run_dir / "metrics.csv", run_dir / "plots", title=run_dir.name)
            summary = write_summary(run_dir, checkpoint_epoch(best_path), {
                "validation_split": config["validation_split"],
                "checkpoint_monitor": monitor,
                **test_metrics,
                "early_stopped": status == "early_stopped",
                "num_params": model.num_params,
                "architecture": type(model.net).__name__,
                "wall_time_s": round(earlier_s + time.monotonic() - started, 1),
                "skipped_images": data.skipped_images,
                "status": status,
            })
            finalize_trackers(loggers, run_dir, summary, status)
            if summary["max_valid_acc"] is not None:
                log.info("%s after %d epochs: %s", status, summary["epochs_run"], result_line(summary))
    if status == "interrupted":
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            command = " ".join(shlex.quote(a) for a in [sys.executable, *_without_resume(sys.argv)])
            raise Interrupted(f"run {run_dir} stopped; its last finished epoch is saved in {last}; continue with: "
                              f"{command} --resume {last}")
        if checkpoint is None and trainer.is_global_zero:
            # no epoch to keep: the folder goes, so that the same command (and run_name) starts again cleanly
            shutil.rmtree(run_dir, ignore_errors=True)
            raise Interrupted(f"run {run_dir.name} stopped before its first epoch finished; nothing was kept")
        raise Interrupted(f"run {run_dir} stopped before its first epoch finished; nothing to resume")
    return run_dir


def _run_dir(config: dict[str, Any], checkpoint: Path | None) -> Path:
    """The run folder: the checkpoint's when resuming, else a new one made by rank 0.

    Under DDP, Lightning starts ranks 1..N-1 by running the command (train.py) again; they find rank 0's folder in
    CARS_RUN_DIR. Processes started by torchrun or SLURM all start at once and agree on the folder by `run_name`.
    """
    from pytorch_lightning.utilities import rank_zero_only

    from utils.resilience import run_dir_of
    from utils.run_outputs import create_run_dir, write_run_config

    if checkpoint is not None:
        log.info("resuming run %s from %s", run_dir_of(checkpoint).name, checkpoint)
        return run_dir_of(checkpoint)
    if rank_zero_only.rank != 0:
        if os.environ.get("CARS_RUN_DIR"):
            return Path(os.environ["CARS_RUN_DIR"])
        if config["run_name"] is None:
            raise ConfigError("set run_name when starting several training processes yourself (torchrun, SLURM), "
                              "so that they share one run folder")
        return Path(config["output_path"]) / config["run_name"]
    run_dir = create_run_dir(Path(config["output_path"]), config["run_name"], config["architecture"])
    write_run_config(run_dir, config)
    os.environ["CARS_RUN_DIR"] = str(run_dir)
    return run_dir


def _without_resume(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--resume="):
            skip = False
            continue
        if arg == "--resume":
            skip = True
            continue
        kept.append(arg)
    return kept
