"""Why is the first epoch slower? What a training process pays the first time it meets each batch shape.

    python -m benchmarks.first_use [--image-size 227] [--batch-size 64] [--train-images 8144]
        [--valid-batch-size 256] [--test-images 8041] [--device cuda]

In one fresh process, with the C-50 defaults resolved as for one CUDA GPU (device augmentations, channels_last,
cuda_graphs), it times each piece of a first epoch's work twice, after a device sync: an eager training step
(preprocessing, forward, loss, backward, optimizer) for the full batch and for the epoch's last, smaller batch; the
training step's CUDA graph (its warm-up passes and capture, then replays); and validation forwards for the full
validation batch and the last, smaller one. The first time against the second is what meeting a shape costs
(the process's and cuDNN's set-up for it); the capture's row is the graph's own cost. `--device cpu` checks the
plumbing on a machine without CUDA (the graph then records nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import NUM_CLASSES, machine_description, markdown_table, synchronize
from benchmarks.training_throughput import TRAIN_IMAGES, VALID_IMAGES
from utils.cli import run_main
from utils.configuration import validate
from utils.errors import UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=227, help="default 227")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help=f"sets the last batch's size "
                        f"(default {TRAIN_IMAGES})")
    parser.add_argument("--valid-batch-size", type=int, default=None, help="default 4 x batch size")
    parser.add_argument("--test-images", type=int, default=VALID_IMAGES, help=f"sets the last validation batch's "
                        f"size (default {VALID_IMAGES})")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="default cuda")
    return parser.parse_args(argv)


def timed(device: torch.device, work: Callable[[], object]) -> float:
    """Seconds of `work`, its device work included."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("first_use needs a CUDA GPU (--device cpu checks its plumbing)")
    from models.cuda_graphs import TrainingGraph
    from models.device_options import resolve_device_options
    from models.net_module import GraphBatch, NetModule

    device = torch.device(args.device)
    size, batch = args.image_size, args.batch_size
    valid_batch = args.valid_batch_size or 4 * batch
    last, valid_last = args.train_images % batch, args.test_images % valid_batch
    rows: list[list[str]] = []
    start = time.perf_counter()
    torch.empty(1, device=device).add_(1)
    synchronize(device)
    rows.append(["device set-up (context, first kernel)", f"{time.perf_counter() - start:.3f}", "-"])
    config = resolve_device_options(validate({"image_size": [size, size]}), True, "one CUDA GPU")
    module = NetModule.from_config(config, NUM_CLASSES, [str(i) for i in range(NUM_CLASSES)]).to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.6)

    def batch_of(count: int) -> GraphBatch:
        images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8).to(device)
        targets = torch.randint(0, NUM_CLASSES, (count,)).to(device)
        return GraphBatch(images, targets, module.augment.draw((count, 3, size, size)).to(device))

    def eager_step(data: GraphBatch) -> None:
        logits = module(module.preprocess(data.images, train=True, drawn=data.drawn))
        optimizer.zero_grad(set_to_none=True)
        module.loss(logits, data.targets).backward()
        optimizer.step()

    def validation(count: int) -> Callable[[], object]:
        images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8).to(device)

        def forward() -> None:
            with torch.no_grad():
                module.eval()
                module(module.preprocess(images, train=False))
                module.train()
        return forward

    full, small = batch_of(batch), batch_of(last) if last > 1 else None
    rows.append([f"eager training step, batch {batch}", f"{timed(device, lambda: eager_step(full)):.3f}",
                 f"{timed(device, lambda: eager_step(full)):.3f}"])
    if small is not None:
        rows.append([f"eager training step, last batch {last}", f"{timed(device, lambda: eager_step(small)):.3f}",
                     f"{timed(device, lambda: eager_step(small)):.3f}"])
    graph: list[TrainingGraph] = []
    inputs = (full.images, full.drawn)
    capture = timed(device, lambda: graph.append(TrainingGraph(
        module.net, module.loss, inputs, full.targets, forward=module._graphed_forward, capture=device.type == "cuda")))
    replays = [timed(device, lambda: graph[0].run(inputs, full.targets)) for _ in range(10)]
    rows.append([f"training step's CUDA graph, batch {batch}: warm-up and capture, then a replay (median of 10)",
                 f"{capture:.3f}", f"{statistics.median(replays):.3f}"])
    for count in (valid_batch, valid_last):
        if count:
            forward = validation(count)
            rows.append([f"validation forward, batch {count}", f"{timed(device, forward):.3f}",
                         f"{timed(device, forward):.3f}"])
    print("\n".join(machine_description()))
    print(f"\nC-50 defaults resolved for one CUDA GPU, {size} px, on {device}; each row's work after a device sync\n")
    print(markdown_table(["work", "first time (s)", "second time (s)"], rows))
    return 0


if __name__ == "__main__":
    run_main(main)
