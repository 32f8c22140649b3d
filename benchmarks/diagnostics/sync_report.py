"""Where a training run makes the CPU wait for the GPU: host-device syncs per batch, counted by call site (CUDA only).

    python -m benchmarks.diagnostics.sync_report [--batches 20] [--set KEY=VALUE ...]

Runs Lightning's Trainer over the real DataModule and NetModule on generated data with
`torch.cuda.set_sync_debug_mode("warn")` switched on after the warm-up batches, and prints each call site (the
innermost frames outside torch) with the number of syncs it made. A sync every batch keeps the CPU from queueing
the next batch's kernels while the GPU works, which costs most with a small network such as GhostNet.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks.common import NUM_CLASSES, generate_prepared, quiet_lightning
from utils.cli import run_main
from utils.configuration import apply_overrides, defaults, validate
from utils.errors import UserError

WARMUP = 3


class SyncRecorder(pl.Callback):
    """Turns sync debugging on after the warm-up training batches and off at the end of the fit."""

    def __init__(self) -> None:
        self.sites: collections.Counter[str] = collections.Counter()
        self._showwarning = warnings.showwarning

    def _record(self, message: Any, category: Any, filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        if "synchroniz" not in str(message):
            return self._showwarning(message, category, filename, lineno, *args, **kwargs)
        frames = [f for f in traceback.extract_stack()[:-1] if "/site-packages/torch/" not in f.filename
                  and not f.filename.endswith("sync_report.py") and "/warnings.py" not in f.filename]
        self.sites[" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-3:][::-1])] += 1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == WARMUP:
            torch.cuda.synchronize()
            warnings.simplefilter("always")
            warnings.showwarning = self._record
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = self._showwarning


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="training batches after the warm-up (default 20)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides as in train.py")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError("sync_report needs a CUDA GPU: sync debugging exists for CUDA only")
    quiet_lightning()
    from datasets.prepared.stanford_data_module import StanfordCarsDataModule
    from models.net_module import NetModule

    with tempfile.TemporaryDirectory(prefix="cars-sync-") as tmp:
        batches = WARMUP + args.batches
        data = generate_prepared(Path(tmp) / "stanford", 64 * batches, 64 * 2)
        config = validate(apply_overrides({**defaults(), "stanford_data_path": str(data),
                                           "cache_dir": str(Path(tmp) / "cache")}, args.overrides))
        module = NetModule.from_config(config, NUM_CLASSES, [str(i) for i in range(NUM_CLASSES)])
        recorder = SyncRecorder()
        trainer = pl.Trainer(accelerator="gpu", devices=1, precision=config["precision"], max_epochs=1,
                             limit_train_batches=batches, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
                             enable_checkpointing=False, enable_model_summary=False, callbacks=[recorder])
        trainer.fit(module, datamodule=StanfordCarsDataModule(config))
    print(f"\nhost-device syncs during {args.batches} training batches (after {WARMUP} warm-up), by call site:")
    for site, count in recorder.sites.most_common():
        print(f"  {count:5d}  {site}")
    if not recorder.sites:
        print("  none")
    return 0


if __name__ == "__main__":
    run_main(main)
