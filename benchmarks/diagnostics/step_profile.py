"""Where a full-pipeline training step spends its time: the host's share per Lightning action, and (with a GPU) how
busy the GPU is and with which kernels.

    python -m benchmarks.diagnostics.step_profile [--batches 50] [--warmup 10] [--set KEY=VALUE ...] [--data-dir DIR]

Runs Lightning's Trainer over the real DataModule and NetModule on generated 700x480 JPEGs, with the default (C-50)
config plus `--set` overrides (e.g. `gpu_augmentations=true channels_last=true compile=true`), for `--warmup` +
`--batches` training batches and no validation. It prints:

- host time per step: the median over the timed steps of each Lightning action (its `SimpleProfiler`: fetching the
  batch, the copy to the device, `on_after_batch_transfer` (conversion, augmentation, Normalize), the training step,
  backward, the optimizer step, ...). GPU work is queued, not waited for, so on a GPU these are the host's times: if
  they add up to about the wall time per step, the step is bound by the host;
- with a CUDA GPU, the timed steps' kernels, recorded by `torch.profiler` (CUDA activity only, so that the host's
  times stay as they are): the wall time per step, the time per step in which at least one kernel ran (GPU busy),
  and the kernels taking the most time. A busy share well under 100 % means the GPU waits for the host;
- with a CUDA GPU, the same for the model-only loop of `benchmarks.training_throughput` (the same network, loss
  and optimizer on synthetic tensors already on the device), so that the full step's extra GPU time and its extra
  waiting are told apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.profilers import SimpleProfiler

from benchmarks.common import (
    NUM_CLASSES,
    generate_prepared,
    load_average,
    machine_description,
    markdown_table,
    quiet_lightning,
    synchronize,
)
from benchmarks.training_throughput import model_only
from utils.cli import positive_int, run_main
from utils.configuration import apply_overrides, defaults, validate

KERNEL_ROWS = 15
MIN_HOST_MS = 0.01  # hooks that do nothing: left out of the host table


class KernelRecorder(pl.Callback):
    """Reads the clock (after a device sync) when the last warm-up batch and the last timed batch end, and records
    the GPU's kernels between them with torch.profiler."""

    def __init__(self, warmup: int, last_batch: int, cuda: bool) -> None:
        self.warmup, self.last_batch, self.cuda = warmup, last_batch, cuda
        self.profiler: torch.profiler.profile | None = None
        self.seconds = 0.0
        self._start = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == self.warmup - 1:
            synchronize(pl_module.device)
            if self.cuda:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
                self.profiler.__enter__()
            self._start = time.perf_counter()
        elif batch_idx == self.last_batch:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self._start
            if self.profiler is not None:
                self.profiler.__exit__(None, None, None)


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: time in which at least one of them ran."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def host_rows(profiler: SimpleProfiler, warmup: int, steps: int) -> list[list[str]]:
    """One row per action that runs a whole number of times per training step: its median over the timed steps,
    times its runs per step."""
    rows = []
    batches = warmup + steps
    for action, durations in profiler.recorded_durations.items():
        per_step, rest = divmod(len(durations), batches)
        if per_step == 0 or rest:
            continue  # run once per fit or per epoch, not per step
        ms = statistics.median(durations[warmup * per_step:]) * per_step * 1e3
        if ms >= MIN_HOST_MS:
            rows.append((ms, action))
    rows.sort(reverse=True)
    return [[action, f"{ms:.3f}"] for ms, action in rows]


def device_events(profiler: torch.profiler.profile) -> list[tuple[str, float, float]]:
    """(name, start s, end s) of each GPU activity (kernels, copies, sets) the profiler recorded, read from its raw
    results: building torch's event tree for thousands of kernels takes minutes."""
    return [(event.name(), event.start_ns() / 1e9, (event.start_ns() + event.duration_ns()) / 1e9)
            for event in profiler.profiler.kineto_results.events()
            if event.device_type() == torch.autograd.DeviceType.CUDA]


def kernel_rows(events: list[tuple[str, float, float]], steps: int) -> tuple[float, list[list[str]]]:
    """(GPU busy seconds, a row per activity name with the most device time: calls and ms per step)."""
    busy = busy_seconds([(start, end) for _, start, end in events])
    totals: dict[str, list[float]] = {}
    for name, start, end in events:
        entry = totals.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += (end - start) * 1e3
    ranked = sorted(totals.items(), key=lambda item: item[1][1], reverse=True)
    rows = [[name if len(name) <= 70 else name[:67] + "...", f"{calls / steps:.1f}", f"{ms / steps:.3f}"]
            for name, (calls, ms) in ranked[:KERNEL_ROWS]]
    return busy, rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=positive_int, default=50, help="timed training batches (default 50)")
    parser.add_argument("--warmup", type=positive_int, default=10,
                        help="untimed batches first (compilation, CUDA graph recording; default 10)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides as in train.py, e.g. gpu_augmentations=true compile=true")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where to generate the data (default: a temporary folder, removed afterwards); a "
                             "folder generated earlier with the same sizes is reused")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    from datasets.prepared.stanford_data_module import StanfordCarsDataModule
    from models.net_module import NetModule

    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="cars-profile-") as tmp:
        config = validate(apply_overrides({**defaults(), "cache_dir": str(Path(tmp) / "cache")}, args.overrides),
                          "defaults with --set overrides")
        batches = args.warmup + args.batches
        data = generate_prepared(args.data_dir or Path(tmp) / "stanford", config["batch_size"] * batches,
                                 config["batch_size"])
        config["stanford_data_path"] = str(data)
        module = NetModule.from_config(config, NUM_CLASSES, [str(i) for i in range(NUM_CLASSES)])
        cuda = config["accelerator"] != "cpu" and torch.cuda.is_available()
        recorder = KernelRecorder(args.warmup, batches - 1, cuda)
        profiler = SimpleProfiler()
        trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=config["precision"],
                             max_epochs=1, limit_train_batches=batches, limit_val_batches=0, num_sanity_val_steps=0,
                             logger=False, enable_checkpointing=False, enable_model_summary=False,
                             enable_progress_bar=False, profiler=profiler, callbacks=[recorder])
        trainer.fit(module, datamodule=StanfordCarsDataModule(config))
    step_ms = recorder.seconds / args.batches * 1e3
    print()
    print("\n".join(machine))
    print(f"load average (1, 5, 15 min) at end: {load_average()}")
    print(f"defaults (C-50 recipe) with overrides: {' '.join(args.overrides) or 'none'}; batch "
          f"{config['batch_size']}, {args.batches} timed training batches after {args.warmup}: wall time "
          f"{step_ms:.2f} ms per step ({config['batch_size'] / step_ms * 1e3:.0f} images/s)")
    print(f"\nhost time per step, median of each Lightning action (nested actions are inside their parents; those "
          f"under {MIN_HOST_MS} ms left out):\n")
    print(markdown_table(["action", "ms per step"], host_rows(profiler, args.warmup, args.batches)))
    if recorder.profiler is None:
        print("\nno CUDA GPU in use: no kernel tables")
        return 0
    from torch._dynamo.utils import counters

    graphs = {key: value for key, value in counters["inductor"].items() if "cudagraph" in key}
    print(f"\ntorch.compile's CUDA-graph counters (a skip runs that graph's kernels one by one): {graphs or 'none'}")
    busy, rows = kernel_rows(device_events(recorder.profiler), args.batches)
    busy_ms = busy / args.batches * 1e3
    print(f"\nfull pipeline: GPU busy (at least one kernel running) {busy_ms:.2f} ms per step, "
          f"{busy_ms / step_ms:.0%} of the wall time\n")
    print(markdown_table(["kernel", "calls per step", "ms per step"], rows))
    model_profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
    rate = model_only(config, torch.device("cuda"), config["precision"], config["channels_last"] is True, config["compile"],
                      args.batches, args.warmup, profiler=model_profiler)
    model_ms = config["batch_size"] / rate * 1e3
    model_busy, model_rows = kernel_rows(device_events(model_profiler), args.batches)
    model_busy_ms = model_busy / args.batches * 1e3
    print(f"\nmodel-only loop (same network, loss and optimizer; synthetic tensors on the GPU): wall time "
          f"{model_ms:.2f} ms per step, GPU busy {model_busy_ms:.2f} ms per step ({model_busy_ms / model_ms:.0%})\n")
    print(markdown_table(["kernel", "calls per step", "ms per step"], model_rows))
    print(f"\nfull pipeline against model-only: wall {step_ms:.2f} / {model_ms:.2f} ms "
          f"({model_ms / step_ms:.0%}), GPU busy {busy_ms:.2f} / {model_busy_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    run_main(main)
