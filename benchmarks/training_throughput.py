"""How fast does my GPU train? GhostNet at the thesis's batch 64 and 227 px: model-only vs the full pipeline.

    python -m benchmarks.training_throughput [--batches 20] [--image-size 227] [--batch-size 64] [--device auto]

For each setting (precision x channels_last x compile):
  model-only: synthetic normalized tensors already on the device; forward + backward + the optimizer's step (built
      as training builds it: fused AdamW) with LabelSmoothingCrossEntropy, the loop a trainer would run with a
      perfect data pipeline;
  full pipeline: Lightning's Trainer over the real DataModule (generated 700x480 JPEGs, image cache, uint8 batches)
      and NetModule, whose `on_after_batch_transfer` converts, augments (on the device with a GPU) and normalizes;
      validation (forward only) is timed in the same run.
Timing starts after warm-up batches (compilation, cuDNN autotuning, DataLoader start-up) and ends after a device
synchronization, with none in between. The projected C-50 time is 129 epochs x (8,144 train images at the full
pipeline's training rate + 8,041 validation images at its validation rate).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks.common import (
    NUM_CLASSES,
    generate_prepared,
    load_average,
    machine_description,
    markdown_table,
    quiet_lightning,
    synchronize,
)
from datasets.prepared.stanford_data_module import StanfordCarsDataModule
from models.training_parts import CUDA_GRAPH_MODES
from utils.cli import run_main
from utils.config_schema import KEYS
from utils.configuration import validate
from utils.errors import UserError

C50_EPOCHS, TRAIN_IMAGES, VALID_IMAGES = 129, 8144, 8041
TARGET_FRACTION, TARGET_MINUTES = 0.90, 10.0


def autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def model_only(config: dict[str, Any], device: torch.device, precision: str, channels_last: bool, compile: bool,
               batches: int, warmup: int, profiler: torch.profiler.profile | None = None) -> float:
    """Training images/s of forward + backward + optimizer step on synthetic tensors that live on the device, with
    the loss and optimizer that training builds from `config`. `profiler`, when given, records the timed steps."""
    from models.arch_dict import build_architecture
    from models.training_parts import build_loss, build_optimizer

    net = build_architecture(config["architecture"], num_classes=NUM_CLASSES, img_channels=3,
                             dropout=config["dropout"], output_channels=config["output_channels"]).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    step_net = torch.compile(net, mode=config["compile_mode"]) if compile else net
    loss_fn = build_loss(config["loss_function"], config["loss_params"])
    optimizer = build_optimizer(config["optimizer"], config["optimizer_params"], net.parameters())
    size = config["image_size"]
    images = torch.randn(config["batch_size"], 3, *size, device=device).contiguous(memory_format=memory_format)
    targets = torch.randint(0, NUM_CLASSES, (config["batch_size"],), device=device)
    net.train()
    graph = None
    if config["cuda_graphs"] is True:  # as NetModule does at its first training batch
        from models.cuda_graphs import TrainingGraph

        graph = TrainingGraph(net, loss_fn, images, targets, forward=step_net)
    for index in range(warmup + batches):
        if index == warmup:
            synchronize(device)
            if profiler is not None:
                profiler.__enter__()
            start = time.perf_counter()
        if compile and config["compile_mode"] in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()  # as NetModule does: each step may reuse the last's memory
        if graph is not None:
            graph.run(images, targets)  # forward, loss and backward; the gradients land in the parameters
        else:
            with autocast(device, precision):
                loss = loss_fn(step_net(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
    synchronize(device)
    seconds = time.perf_counter() - start
    if profiler is not None:
        profiler.__exit__(None, None, None)
    return batches * config["batch_size"] / seconds


class BatchClock(pl.Callback):
    """Times training and validation batches after the warm-up ones: the clock is read, after a device sync, when
    the last warm-up batch and the last batch of each stage end, and at no batch between, as in the model-only loop
    (a sync per batch would keep the CPU from queueing the next batch's work while the GPU runs this one's)."""

    def __init__(self, warmup: int, last_batch: dict[str, int]) -> None:
        self.warmup = warmup
        self.last_batch = last_batch  # index of each stage's last batch
        self.marks: dict[str, list[tuple[int, float]]] = {"train": [], "valid": []}

    def _mark(self, stage: str, pl_module: pl.LightningModule, batch_idx: int) -> None:
        if batch_idx in (self.warmup - 1, self.last_batch[stage]):
            synchronize(pl_module.device)
            self.marks[stage].append((batch_idx, time.perf_counter()))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._mark("train", pl_module, batch_idx)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._mark("valid", pl_module, batch_idx)

    def rate(self, stage: str, batch_size: int) -> float:
        """Images/s between the two marks (full batches of `batch_size` only)."""
        (first, start), (last, end) = self.marks[stage]
        return (last - first) * batch_size / (end - start)


def full_pipeline(config: dict[str, Any], device: torch.device, precision: str, channels_last: bool, compile: bool,
                  batches: int, warmup: int) -> tuple[float, float]:
    """(training images/s, validation images/s) of one Trainer epoch over the DataModule with NetModule."""
    from models.net_module import NetModule

    data = StanfordCarsDataModule(config)
    module = NetModule.from_config({**config, "channels_last": channels_last, "compile": compile}, NUM_CLASSES,
                                   [str(index) for index in range(NUM_CLASSES)])
    valid_batch = data.batch_size("test")
    # Whole validation batches only (validation batches are larger; the same images are generated for both splits).
    valid_batches = (warmup + batches) * config["batch_size"] // valid_batch
    if valid_batches <= warmup + 1:
        raise UserError(f"--batches {batches} leaves {valid_batches} validation batches of {valid_batch}: too few "
                        f"to time after {warmup} warm-up ones; give more --batches")
    clock = BatchClock(warmup, {"train": warmup + batches - 1, "valid": valid_batches - 1})
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_epochs=1,
        limit_train_batches=warmup + batches, limit_val_batches=valid_batches, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[clock])
    trainer.fit(module, datamodule=data)
    return clock.rate("train", config["batch_size"]), clock.rate("valid", valid_batch)


def c50_minutes(train_rate: float, valid_rate: float) -> float:
    return C50_EPOCHS * (TRAIN_IMAGES / train_rate + VALID_IMAGES / valid_rate) / 60


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed batches first (default 3, or 5 when compiling)")
    parser.add_argument("--image-size", type=int, default=227, help="square image size in px (default 227)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--valid-batch-size", type=int, default=None,
                        help="validation batch size (default: the project's, 4 x --batch-size)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto = cuda when available, else cpu (default auto)")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"],
                        choices=["32-true", "bf16-mixed"], help="precisions to measure (default both)")
    parser.add_argument("--channels-last", choices=["both", "off", "on"], default="both",
                        help="channels_last settings to measure (default both)")
    parser.add_argument("--compile", choices=["auto", "both", "off", "on"], default="auto",
                        help="torch.compile settings: auto = off and on with a GPU, off only on CPU (default auto)")
    parser.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune"],
                        default=KEYS["compile_mode"].default,
                        help="torch.compile's mode for the compile-on rows (the config's compile_mode; default "
                             f"{KEYS['compile_mode'].default})")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="every row with cuda_graphs on: each training step's forward, loss and backward "
                             "replayed as one CUDA graph (CUDA, 32-true; with compile, --compile-mode default)")
    parser.add_argument("--augment", choices=["auto", "cpu", "device"], default="auto",
                        help="where the full pipeline augments: auto = device with a GPU, cpu otherwise")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers (default: the project's, one per core, at most 8)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, one per core); on a CPU shared with other "
                             "jobs, 1 avoids OpenMP threads waiting on each other")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where to generate the data (default: a temporary folder, removed afterwards)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU on this machine (use --device auto or cpu)")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    compiles = {"both": [False, True], "off": [False], "on": [True],
                "auto": [False, True] if device.type == "cuda" else [False]}[args.compile]
    lasts = {"both": [False, True], "off": [False], "on": [True]}[args.channels_last]
    if args.cuda_graphs:
        if device.type != "cuda":
            raise UserError("--cuda-graphs needs a CUDA GPU")
        if args.precisions != ["32-true"]:
            raise UserError("--cuda-graphs runs with --precisions 32-true only (autocast's cache cannot be captured)")
        if True in compiles and args.compile_mode in CUDA_GRAPH_MODES:
            raise UserError(f"--cuda-graphs with compile mode {args.compile_mode} would nest CUDA graphs: give "
                            "--compile-mode default (or --compile off)")
    on_device = args.augment == "device" or (args.augment == "auto" and device.type == "cuda")
    settings = list(itertools.product(args.precisions, lasts, compiles))
    machine = machine_description()  # before the run, so that the load average is the one it started under
    with tempfile.TemporaryDirectory(prefix="cars-bench-") as tmp:
        data_path = args.data_dir or Path(tmp) / "stanford"
        longest_warmup = args.warmup if args.warmup is not None else (5 if True in compiles else 3)
        count = (longest_warmup + args.batches) * args.batch_size
        print(f"generating {count} train + {count} test images of about 700x480 in {data_path} ...", flush=True)
        generate_prepared(data_path, count, count)
        overrides = {"stanford_data_path": str(data_path), "cache_dir": str(Path(tmp) / "cache"),
                     "image_size": [args.image_size, args.image_size], "batch_size": args.batch_size,
                     "gpu_augmentations": on_device, "num_workers": args.workers,
                     "valid_batch_size": args.valid_batch_size, "compile_mode": args.compile_mode,
                     "cuda_graphs": args.cuda_graphs}
        config = validate(overrides)
        prepared = StanfordCarsDataModule(config)
        prepared.setup("fit")  # build the cache once, outside every timing
        valid_batch = prepared.batch_size("test")
        results = []
        for precision, channels_last, compile in settings:
            warmup = args.warmup if args.warmup is not None else (5 if compile else 3)
            compiled = f"on ({args.compile_mode})"
            label = (f"{precision}, channels_last {'on' if channels_last else 'off'}, compile "
                     f"{compiled if compile else 'off'}{', cuda_graphs' if args.cuda_graphs else ''}")
            print(f"measuring {label} ...", flush=True)
            model_rate = model_only(config, device, precision, channels_last, compile, args.batches, warmup)
            print(f"  {label}: model-only {model_rate:.1f} img/s", flush=True)  # shown even if the next part fails
            train_rate, valid_rate = full_pipeline(config, device, precision, channels_last, compile, args.batches,
                                                   warmup)
            results.append((label, model_rate, train_rate, valid_rate))
            # At once, so that a run cut short by a time limit still shows the settings it measured.
            print(f"  {label}: model-only {model_rate:.1f} img/s, full pipeline {train_rate:.1f} img/s "
                  f"({train_rate / model_rate:.0%}), validation {valid_rate:.1f} img/s, projected C-50 "
                  f"{c50_minutes(train_rate, valid_rate):.1f} min", flush=True)
    print_report(args, config, device, on_device, valid_batch, results, machine)
    return 0


def print_report(args: argparse.Namespace, config: dict[str, Any], device: torch.device, on_device: bool,
                 valid_batch: int, results: list[tuple[str, float, float, float]], machine: list[str]) -> None:
    base = results[0][2]
    rows = [[label, f"{model:.1f}", f"{train:.1f}", f"{train / model:.0%}", f"{valid:.1f}", f"{train / base:.2f}x",
             f"{c50_minutes(train, valid):.1f}"] for label, model, train, valid in results]
    print()
    print("\n".join(machine))
    print(f"load average (1, 5, 15 min) at end: {load_average()}")
    workers = config["num_workers"] if config["num_workers"] is not None else "project default"
    print(f"device {device.type}; GhostNet (output_channels {config['output_channels']}, {NUM_CLASSES} classes), "
          f"batch {args.batch_size}, {args.image_size}x{args.image_size} px, {args.batches} timed batches; "
          f"validation batch {valid_batch}; "
          f"full pipeline: cache on, augmentation on the {'device' if on_device else 'CPU'}, "
          f"DataLoader workers: {workers}, torch threads {torch.get_num_threads()}")
    print()
    print(markdown_table(
        ["setting", "model-only train img/s", "full pipeline train img/s", "full / model-only",
         "full pipeline valid img/s (forward)", "full train vs first row", "projected C-50 (min)"], rows))
    best = min(results, key=lambda r: c50_minutes(r[2], r[3]))
    print(f"\nC-50 = {C50_EPOCHS} epochs x ({TRAIN_IMAGES:,} train + {VALID_IMAGES:,} validation images); "
          f"fastest setting: {best[0]}, {c50_minutes(best[2], best[3]):.1f} min "
          f"(GPU targets: full pipeline >= {TARGET_FRACTION:.0%} of model-only, C-50 < {TARGET_MINUTES:.0f} min on "
          f"one H100)")


if __name__ == "__main__":
    run_main(main)
