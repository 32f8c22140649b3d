"""Operator counts of one training step, from PyTorch's profiler: the network vs the on-device preprocessing.

    python -m benchmarks.op_count [--batch-size 64] [--image-size 227]

On a GPU a small network such as GhostNet is bound by the CPU's cost of launching its many small kernels, not by
the GPU's arithmetic, so the number of operators each part of a step dispatches predicts its share of the step's
time. Counted on the CPU (the same operators are dispatched on a GPU), for the default (C-50) config with
`gpu_augmentations: true`: top-level aten operators (not the ones they call internally), leaving out views and
other operators that launch no kernel. The optimizer is left out: its count depends on the device (PyTorch uses
multi-tensor kernels on CUDA).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import NUM_CLASSES, markdown_table
from utils.cli import run_main
from utils.configuration import validate

# Operators that only make views or metadata: no kernel runs for them.
NO_KERNEL = {
    "aten::view", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice", "aten::expand",
    "aten::as_strided", "aten::unbind", "aten::split", "aten::t", "aten::transpose", "aten::permute",
    "aten::alias", "aten::detach", "aten::detach_", "aten::empty", "aten::empty_like", "aten::empty_strided",
    "aten::result_type", "aten::to", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg",
    "aten::_reshape_alias", "aten::reshape", "aten::contiguous", "aten::_unsafe_view", "aten::expand_as",
    "aten::view_as", "aten::broadcast_tensors", "aten::flatten",
}


def count_ops(fn: Callable[[], object]) -> Counter[str]:
    """Top-level kernel-launching aten operators that `fn` dispatches, by name."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        fn()
    top = [event.name for event in profiler.events() if event.name.startswith("aten::")
           and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::"))]
    return Counter(name for name in top if name not in NO_KERNEL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--image-size", type=int, default=227, help="default 227")
    args = parser.parse_args(argv)
    from models.net_module import NetModule

    torch.set_num_threads(1)
    config = validate({"gpu_augmentations": True, "image_size": [args.image_size, args.image_size]})
    module = NetModule.from_config(config, NUM_CLASSES, [str(i) for i in range(NUM_CLASSES)]).train()
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    uint8_batch = torch.randint(0, 256, shape, dtype=torch.uint8)
    targets = torch.randint(0, NUM_CLASSES, (args.batch_size,))
    images = torch.rand(shape)

    def network_step() -> None:
        module.loss(module.net(images), targets).backward()

    def evaluation() -> None:
        with torch.no_grad():
            module.net.eval()(images)
        module.net.train()

    network_step()  # first calls allocate and pick kernels
    drawn = module.augment.draw(shape)  # as the train loader's workers draw them
    labels = ["preprocessing: uint8 -> float, device augmentations (parameters from the workers), Normalize",
              "network: forward + backward (training)", "network: forward (validation)",
              "for comparison: preprocessing drawing the parameters on the device"]
    counts = [count_ops(lambda: module.preprocess(uint8_batch, train=True, drawn=drawn)), count_ops(network_step),
              count_ops(evaluation), count_ops(lambda: module.preprocess(uint8_batch, train=True))]
    start = 0
    for op in module.augment.ops:
        width = op.width(shape)
        labels.append(f"  of which {op.name} (applying its parameters)")
        counts.append(count_ops(lambda op=op, table=drawn[:, start:start + width]: op.apply_prepared(images, table)))
        start += width
    network = sum(counts[1].values())
    print(f"GhostNet (output_channels {config['output_channels']}), batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}; torch {torch.__version__}")
    print(markdown_table(["part of a training step", "kernel-launching operators"],
                         [[label, str(sum(count.values()))] for label, count in zip(labels, counts)]))
    preprocessing = sum(counts[0].values())
    print(f"\nif time follows operator counts, the full step runs at {network / (network + preprocessing):.0%} of "
          f"the network alone (the benchmark target is >= 90 %)")
    return 0


if __name__ == "__main__":
    run_main(main)
