"""Host time per training step that Lightning's loop adds, measured side by side with a plain PyTorch loop.

    python -m benchmarks.diagnostics.loop_overhead [--steps 400] [--rounds 2]

A trivial model (one Linear layer on 4 x 8 inputs, AdamW, cross-entropy) makes each step's own work tiny, so the
difference between the loops is what Lightning does per step besides the model: fetching through a DataLoader,
hooks, the closure around the optimizer step, result bookkeeping, and (third row) refreshing its progress bar. On a
GPU a small network's step is bound by the CPU, so this host time counts against the full pipeline in
`benchmarks.training_throughput` just as extra kernels do (`benchmarks.diagnostics.op_count` counts those). Each row is the
median of the rounds, which alternate between the loops; the first 50 steps of each run are not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks.common import load_average, machine_description, markdown_table, quiet_lightning
from utils.cli import run_main

WARMUP = 50


def make_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 8, generator=generator), torch.randint(0, 4, (4,), generator=generator))
            for _ in range(steps)]


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 4)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return torch.nn.functional.cross_entropy(self.layer(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters())


class StepClock(pl.Callback):
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.marks.append(time.perf_counter())


def seconds_per_step(marks: list[float]) -> float:
    return (marks[-1] - marks[WARMUP]) / (len(marks) - 1 - WARMUP)


def plain_loop(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    module = TinyModule()
    optimizer = module.configure_optimizers()
    marks = []
    for index, batch in enumerate(batches):
        loss = module.training_step(batch, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        marks.append(time.perf_counter())
    return seconds_per_step(marks)


def lightning_loop(batches: list[tuple[torch.Tensor, torch.Tensor]], progress_bar: bool) -> float:
    clock = StepClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=progress_bar, enable_model_summary=False, callbacks=[clock])
    trainer.fit(TinyModule(), train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return seconds_per_step(clock.marks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help=f"steps per run, the first {WARMUP} untimed "
                                                                "(default 400)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each loop, alternating (default 2)")
    args = parser.parse_args(argv)
    if args.steps <= WARMUP + 1:
        parser.error(f"--steps must be more than {WARMUP + 1}")
    quiet_lightning()
    torch.set_num_threads(1)
    machine = machine_description()
    batches = make_batches(args.steps)
    loops = {"plain PyTorch loop": lambda: plain_loop(batches),
             "Lightning, no progress bar": lambda: lightning_loop(batches, progress_bar=False),
             "Lightning, progress bar": lambda: lightning_loop(batches, progress_bar=True)}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, run in loops.items():
            times[name].append(run())
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["plain PyTorch loop"]
    print()
    print("\n".join(machine))
    print(f"load average (1, 5, 15 min) at end: {load_average()}")
    print(f"{args.steps} steps per run ({WARMUP} untimed), {args.rounds} rounds, torch threads 1")
    print()
    print(markdown_table(["loop", "ms per step", "added per step (ms)"],
                         [[name, f"{value * 1e3:.3f}", f"{(value - base) * 1e3:.3f}"]
                          for name, value in median.items()]))
    return 0


if __name__ == "__main__":
    run_main(main)
