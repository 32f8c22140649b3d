"""Operator counts and memory traffic of one training step: the network vs the on-device preprocessing, and a
whole training iteration through Lightning vs the model-only loop.

    python -m benchmarks.diagnostics.op_count [--batch-size 64] [--image-size 227]

On a GPU a small network such as GhostNet is bound by the CPU's cost of launching its many small kernels, not by
the GPU's arithmetic, so the number of operators each part of a step dispatches predicts its share of the step's
time. Counted on the CPU (the same operators are dispatched on a GPU), for the default (C-50) config with
`gpu_augmentations: true`: top-level aten operators (not the ones they call internally), leaving out views and
other operators that launch no kernel. Gradients are set to None before each counted backward pass, as in
training (accumulating into existing ones would add an addition per parameter).

The whole-iteration rows count one training iteration of the model-only loop (forward, loss, backward, the
optimizer's step, as `benchmarks.training_throughput` runs it) and one iteration of Lightning's Trainer with
`NetModule` over batches as the train loader's workers deliver them (preprocessing, step, epoch metrics, hooks;
the host-to-device copies of a GPU run are not in it). Their ratio is the launch-bound prediction of the full
pipeline's share of model-only speed.

Where launches cost the host nothing (a step replayed as a CUDA graph, `cuda_graphs: true`), the GPU's own time is
what counts, and for GhostNet's small convolutions and elementwise kernels that is mostly memory traffic. The first
table therefore also gives each part's bytes, seen through a TorchDispatchMode (the backward's operators included):
each kernel-launching operator's tensor inputs and outputs in full, a broadcast input's distinct elements once, a
tensor changed in place (or an `out=` buffer) as written. It is an upper bound where an operator reads only part of
an input (gather, grid_sample) or a schema marks a list it may leave alone (the fused optimizer's gradients), and it
ignores caches. The preprocessing is counted as eager runs it and as a CUDA graph's capture records it (colour
channels mixed by in-place multiply-adds instead of batched matrix products; see datasets/device_augmentation/color.py).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytorch_lightning as pl
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.common import NUM_CLASSES, markdown_table, quiet_lightning
from utils.cli import run_main
from utils.configuration import validate

# Operators that only make views or metadata: no kernel runs for them.
NO_KERNEL = {
    "aten::view", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice", "aten::expand",
    "aten::as_strided", "aten::unbind", "aten::split", "aten::t", "aten::transpose", "aten::permute",
    "aten::alias", "aten::detach", "aten::detach_", "aten::empty", "aten::empty_like", "aten::empty_strided",
    "aten::result_type", "aten::to", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg",
    "aten::_reshape_alias", "aten::reshape", "aten::contiguous", "aten::_unsafe_view", "aten::expand_as",
    "aten::view_as", "aten::broadcast_tensors", "aten::flatten", "aten::narrow", "aten::set_",
}


def count_ops(fn: Callable[[], object]) -> Counter[str]:
    """Top-level kernel-launching aten operators that `fn` dispatches, by name."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        fn()
    return kernel_ops(profiler)


def kernel_ops(profiler: profile) -> Counter[str]:
    top = [event.name for event in profiler.events() if event.name.startswith("aten::")
           and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::"))]
    return Counter(name for name in top if name not in NO_KERNEL)


class _Traffic(TorchDispatchMode):
    """Adds up the bytes of the tensors each kernel-launching operator reads and writes."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if f"aten::{func.overloadpacket.__name__}" in NO_KERNEL:
            return out
        given = dict(zip((argument.name for argument in func._schema.arguments), args)) | kwargs
        reads, writes = [], {id(t): t for t in _tensors(out)}
        for argument in func._schema.arguments:
            tensors = _tensors(given.get(argument.name))
            if not argument.is_out:
                reads += tensors
            if argument.alias_info is not None and argument.alias_info.is_write:  # in place, or an out= buffer
                writes.update((id(t), t) for t in tensors)
        self.bytes += sum(_distinct_bytes(t) for t in reads + list(writes.values()))
        return out


def _tensors(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_flatten(value)[0] if isinstance(leaf, torch.Tensor)]


def _distinct_bytes(tensor: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor view covers (a broadcast dimension, stride 0, counts once)."""
    elements = math.prod(size for size, stride in zip(tensor.shape, tensor.stride()) if stride != 0)
    return elements * tensor.element_size()


def count_bytes(fn: Callable[[], object]) -> int:
    """Bytes read and written by the kernel-launching operators that `fn` dispatches (see the module's docstring)."""
    with _Traffic() as traffic:
        fn()
    return traffic.bytes


class IterationProfiler(pl.Callback):
    """Counts the operators between the end of training batch `at` and the end of the next one: one whole
    iteration of Lightning's loop (fetch, transfer, preprocessing, step, metrics, hooks)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.counts: Counter[str] = Counter()
        self._profiler: profile | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == self.at:
            self._profiler = profile(activities=[ProfilerActivity.CPU])
            self._profiler.__enter__()
        elif batch_idx == self.at + 1 and self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self.counts = kernel_ops(self._profiler)


def lightning_iteration(module: pl.LightningModule, batches: list[tuple[torch.Tensor, ...]]) -> Counter[str]:
    """Operators of one training iteration of Lightning's Trainer over `batches` (on the CPU, no logger, no
    progress bar, as `benchmarks.training_throughput` runs it)."""
    quiet_lightning()  # also its notice that there is no validation loader here
    counter = IterationProfiler(at=len(batches) - 2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[counter])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return counter.counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--image-size", type=int, default=227, help="default 227")
    args = parser.parse_args(argv)
    from models.net_module import NetModule
    from models.training_parts import build_optimizer

    torch.set_num_threads(1)
    config = validate({"gpu_augmentations": True, "image_size": [args.image_size, args.image_size]})
    module = NetModule.from_config(config, NUM_CLASSES, [str(i) for i in range(NUM_CLASSES)]).train()
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    uint8_batch = torch.randint(0, 256, shape, dtype=torch.uint8)
    targets = torch.randint(0, NUM_CLASSES, (args.batch_size,))
    images = torch.rand(shape)
    optimizer = build_optimizer(config["optimizer"], config["optimizer_params"], module.net.parameters())

    def network_step() -> None:
        module.net.zero_grad(set_to_none=True)
        module.loss(module.net(images), targets).backward()

    def model_only_iteration() -> None:
        loss = module.loss(module.net(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def evaluation() -> None:
        with torch.no_grad():
            module.net.eval()(images)
        module.net.train()

    model_only_iteration()  # first calls allocate and pick kernels, and make the optimizer's state
    drawn = module.augment.draw(shape)  # as the train loader's workers draw them

    def preprocessing() -> None:
        module.preprocess(uint8_batch, train=True, drawn=drawn)

    def recorded_preprocessing() -> None:
        with mock.patch("datasets.device_augmentation.color.launches_are_free", return_value=True):
            preprocessing()

    parts = [("preprocessing: uint8 -> float, device augmentations (parameters from the workers), Normalize",
              preprocessing),
             ("  the same as a CUDA graph records it (channels mixed by multiply-adds)", recorded_preprocessing),
             ("network: forward + backward (training)", network_step), ("network: forward (validation)", evaluation),
             (f"optimizer step ({type(optimizer).__name__}, fused {bool(optimizer.defaults.get('fused'))})",
              optimizer.step),
             ("for comparison: preprocessing drawing the parameters on the device",
              lambda: module.preprocess(uint8_batch, train=True))]
    start = 0
    for op in module.augment.steps:
        width = op.width(shape)
        parts.append((f"  of which {op.name} (applying its parameters)",
                      lambda op=op, table=drawn[:, start:start + width]: op.apply_prepared(images, table)))
        start += width
    counts = [sum(count_ops(fn).values()) for _, fn in parts]
    traffic = [count_bytes(fn) for _, fn in parts]
    print(f"GhostNet (output_channels {config['output_channels']}), batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}; torch {torch.__version__}")
    print(markdown_table(["part of a training step", "kernel-launching operators", "MB read + written"],
                         [[label, str(count), f"{size / 1e6:.1f}"]
                          for (label, _), count, size in zip(parts, counts, traffic)]))
    network, preprocessing = counts[2], counts[0]
    print(f"\nnetwork and preprocessing alone: if time follows operator counts, the step runs at "
          f"{network / (network + preprocessing):.0%} of the network alone; in a CUDA graph, if time follows "
          f"bytes moved, at {traffic[2] / (traffic[2] + traffic[1]):.0%}")

    model_only = sum(count_ops(model_only_iteration).values())
    batches = [(uint8_batch, targets, module.augment.draw(shape)) for _ in range(4)]
    full = lightning_iteration(module, batches)
    extra = full - count_ops(model_only_iteration)
    print()
    print(markdown_table(["one training iteration", "kernel-launching operators"], [
        ["model-only loop: forward, loss, backward, optimizer step", str(model_only)],
        ["Lightning's Trainer with NetModule (the full pipeline's main process)", str(sum(full.values()))],
        ["  of which not in the model-only loop", str(sum(extra.values()))],
    ]))
    print("  the additional operators: " + ", ".join(f"{name.removeprefix('aten::')} {count}"
                                                   for name, count in extra.most_common()))
    print(f"\nwhole iterations: if time follows operator counts, the full pipeline runs at "
          f"{model_only / sum(full.values()):.0%} of model-only (the benchmark target is >= 90 %)")
    return 0


if __name__ == "__main__":
    run_main(main)
