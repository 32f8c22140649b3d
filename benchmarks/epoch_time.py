"""How long does a whole C-50 run take here? Real training epochs through `train()`, and C-50 projected from them.

    python -m benchmarks.epoch_time [--train-images 8144] [--test-images 8041] [--epochs 4] [--set KEY=VALUE ...]
        [--versus KEY=VALUE ...]

On generated 700x480 JPEGs (Stanford Cars' split sizes by default), with the default (C-50) config plus `--set`
overrides, it runs `train()` for `--epochs` epochs. Everything a real run does is in the time (DataLoader,
augmentations, training, validation, metrics, checkpoints, metrics.csv, plots); the image cache is built beforehand
and timed apart, as `prepare` is. metrics.csv's `epoch_time_s` gives each epoch's wall time; the median of the
epochs after the first is the steady epoch, and the rest of the run (start-up: workers, cuDNN autotuning,
compilation; the first epoch; the end) is counted once:
projected C-50 = whole run + (129 - epochs) x steady epoch.

A second table splits each epoch into phases (clock read at Lightning's hooks, after a device sync where the phase
ends with GPU work): waiting for the first batch, the training batches, validation, the epoch's end (metrics,
logging) and what runs between epochs (checkpoints), so that the time outside the batches is attributed.

`--versus` trains a second time, in the same process on the same data, with those overrides on top of `--set`'s, and
prints both runs side by side with the ratio of their steady epochs (the second run finds torch.compile's caches
warm where both compile the same graphs).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl

from benchmarks.common import (
    generate_prepared,
    load_average,
    machine_description,
    markdown_table,
    quiet_lightning,
    synchronize,
)
from benchmarks.training_throughput import C50_EPOCHS, TARGET_MINUTES, TRAIN_IMAGES, VALID_IMAGES
from utils.cli import run_main
from utils.configuration import apply_overrides, defaults, validate
from utils.errors import UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help=f"default {TRAIN_IMAGES}")
    parser.add_argument("--test-images", type=int, default=VALID_IMAGES, help=f"default {VALID_IMAGES}")
    parser.add_argument("--epochs", type=int, default=4, help="epochs to train, at least 2 (default 4)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides as in train.py, e.g. precision=bf16-mixed gpu_augmentations=true")
    parser.add_argument("--versus", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="a second run with these overrides as well, printed beside the first, e.g. "
                             "async_checkpoints=false")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where to generate the data (default: a temporary folder, removed afterwards); "
                             "a folder generated earlier with the same sizes is reused")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the steady epoch is taken from the epochs after the first")
    return args


class EpochPrinter(threading.Thread):
    """Prints each epoch's time as soon as the run's metrics.csv has it, so that a run cut short by a time limit
    still shows the epochs it finished."""

    def __init__(self, output_path: Path) -> None:
        super().__init__(daemon=True)
        self.output_path = output_path
        # A --versus run writes beside the first one: only this run's file is new.
        self.earlier = set(output_path.glob("*/metrics.csv"))
        self.done = threading.Event()

    def run(self) -> None:
        printed: dict[Path, int] = {}  # lines of each new metrics.csv printed, its header included
        while True:
            finished = self.done.wait(1.0)  # one more look after the run has ended
            for path in set(self.output_path.glob("*/metrics.csv")) - self.earlier:
                lines = path.read_text().splitlines()
                for line in lines[printed.get(path, 0):]:
                    print(f"  metrics.csv: {line}", flush=True)
                printed[path] = max(printed.get(path, 0), len(lines))
            if finished:
                return


# (phase, the mark that starts it, the mark that ends it); "next_epoch_start" is the following epoch's "epoch_start".
PHASES = [
    ("epoch start -> first training batch (loader, copy, preprocessing)", "epoch_start", "train_first"),
    ("training batches", "train_first", "train_last"),
    ("last training batch -> validation start", "train_last", "valid_start"),
    ("validation start -> first batch (loader, copy, preprocessing)", "valid_start", "valid_first"),
    ("validation batches", "valid_first", "valid_last"),
    ("validation epoch end (metrics, logging, metrics.csv)", "valid_last", "epoch_end"),
    ("epoch end -> next epoch (checkpoints, schedulers)", "epoch_end", "next_epoch_start"),
]


class EpochPhases(pl.Callback):
    """Reads the clock at the hooks that bound each phase of an epoch (see PHASES); after a device sync where GPU
    work ends the phase, so that it is counted where it ran. Lightning calls checkpoint callbacks after the others,
    so this one's `on_train_epoch_end` comes before the epoch's checkpoints are saved."""

    def __init__(self) -> None:
        self.marks: list[dict[str, float]] = []

    def _mark(self, name: str, pl_module: pl.LightningModule | None = None) -> None:
        if pl_module is not None:
            synchronize(pl_module.device)
        self.marks[-1][name] = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.marks:
            self.marks[-1]["next_epoch_start"] = time.perf_counter()
        self.marks.append({})
        self._mark("epoch_start")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self._mark("train_first")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self._mark("train_last", pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.marks and not trainer.sanity_checking:
            self._mark("valid_start")

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and self.marks and not trainer.sanity_checking:
            self._mark("valid_first")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == trainer.num_val_batches[0] - 1 and self.marks and not trainer.sanity_checking:
            self._mark("valid_last", pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("epoch_end")

    def phase_rows(self) -> list[list[str]]:
        """One row per phase: the first epoch's seconds and the median over the later epochs that have it."""
        rows = []
        for name, start, end in PHASES:
            seconds = [marks[end] - marks[start] if start in marks and end in marks else None for marks in self.marks]
            first = f"{seconds[0]:.3f}" if seconds and seconds[0] is not None else "-"
            later = [value for value in seconds[1:] if value is not None]
            rows.append([name, first, f"{statistics.median(later):.3f}" if later else "-"])
        return rows


def timed_run(config: dict, epochs: int, phases: EpochPhases) -> tuple[float, list[float]]:
    """Seconds of one `train()` of `epochs` epochs, and each epoch's `epoch_time_s` from its metrics.csv."""
    import pandas as pd

    from models.training_run import train

    printer = EpochPrinter(Path(config["output_path"]))
    printer.start()
    start = time.perf_counter()
    try:
        run_dir = train({**config, "num_epochs": epochs, "run_name": None}, callbacks=[phases])
    finally:
        printer.done.set()
        printer.join()
    elapsed = time.perf_counter() - start
    epoch_times = pd.read_csv(run_dir / "metrics.csv")["epoch_time_s"].tolist()
    if len(epoch_times) != epochs:
        raise UserError(f"the run stopped after {len(epoch_times)} of {epochs} epochs (early stopping?): see {run_dir}")
    return elapsed, epoch_times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    logging.getLogger("cars").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    runs: list[tuple[str, float, list[float], EpochPhases]] = []  # (label, whole run, epoch times, phases)
    with tempfile.TemporaryDirectory(prefix="cars-epoch-") as tmp:
        data_path = args.data_dir or Path(tmp) / "stanford"
        print(f"generating {args.train_images} train + {args.test_images} test images of about 700x480 in "
              f"{data_path} ...", flush=True)
        generate_prepared(data_path, args.train_images, args.test_images)
        base = {"stanford_data_path": str(data_path), "cache_dir": str(Path(tmp) / "cache"),
                "output_path": str(Path(tmp) / "runs"), "logging_dir": str(Path(tmp) / "logs"),
                "log_to_mlflow": False, "log_to_neptune": False}
        configs = {"as set": validate(apply_overrides({**defaults(), **base}, args.overrides),
                                      "defaults with --set overrides")}
        if args.versus:
            label = "versus " + " ".join(args.versus)
            configs[label] = validate(apply_overrides({**defaults(), **base}, args.overrides + args.versus),
                                      "defaults with --set and --versus overrides")
        from datasets.prepared.stanford_data_module import StanfordCarsDataModule

        machine = machine_description()
        start = time.perf_counter()
        for config in configs.values():  # a second config with the same cached pixels finds its cache built
            StanfordCarsDataModule(config).setup("fit")
        cache_seconds = time.perf_counter() - start
        for label, config in configs.items():
            print(f"image cache built in {cache_seconds:.1f} s; training {args.epochs} epochs ({label}) ...",
                  flush=True)
            phases = EpochPhases()
            total, epoch_times = timed_run(config, args.epochs, phases)
            runs.append((label, total, epoch_times, phases))
    images = args.train_images + args.test_images
    steady = [statistics.median(epoch_times[1:]) for _, _, epoch_times, _ in runs]
    projected = [(total + (C50_EPOCHS - args.epochs) * run_steady) / 60
                 for (_, total, _, _), run_steady in zip(runs, steady)]
    print()
    print("\n".join(machine))
    print(f"load average (1, 5, 15 min) at end: {load_average()}")
    print(f"defaults (C-50 recipe) with overrides: {' '.join(args.overrides) or 'none'}; "
          f"{args.train_images} train + {args.test_images} validation images; "
          f"one-off image cache build {cache_seconds:.1f} s (not in the times below)")
    print()
    rows = [[f"whole {args.epochs}-epoch run (s)", *(f"{total:.1f}" for _, total, _, _ in runs)],
            ["first epoch, start-up included (s)", *(f"{times[0]:.1f}" for _, _, times, _ in runs)],
            ["later epochs (s)", *(" ".join(f"{t:.2f}" for t in times[1:]) for _, _, times, _ in runs)],
            ["steady epoch: median of the later ones (s)", *(f"{value:.2f}" for value in steady)],
            ["steady rate, training + validation images/s", *(f"{images / value:.0f}" for value in steady)],
            [f"projected C-50: {C50_EPOCHS} epochs (min)", *(f"{value:.1f}" for value in projected)]]
    if len(runs) > 1:
        rows.append(["steady epoch, first run / this run", "1.00x", f"{steady[0] / steady[1]:.2f}x"])
    print(markdown_table(["measure", *(label for label, _, _, _ in runs)], rows))
    print("\nwhere an epoch's time goes (s):\n")
    phase_rows = [run[3].phase_rows() for run in runs]
    print(markdown_table(
        ["phase", *(f"{part} ({label})" if len(runs) > 1 else part for label, _, _, _ in runs
                    for part in ("first epoch", "later epochs (median)"))],
        [[rows_of_phase[0][0], *(value for row in rows_of_phase for value in row[1:])]
         for rows_of_phase in zip(*phase_rows)]))
    if (args.train_images, args.test_images) != (TRAIN_IMAGES, VALID_IMAGES):
        print(f"\n(projected for these split sizes, not C-50's {TRAIN_IMAGES:,} + {VALID_IMAGES:,}: no verdict)")
    else:
        for (label, _, _, _), value in zip(runs, projected):
            print(f"\ntarget: C-50 under {TARGET_MINUTES:.0f} min on one H100 ({label}): "
                  f"{'met' if value < TARGET_MINUTES else 'NOT met'} on this machine")
    return 0


if __name__ == "__main__":
    run_main(main)
