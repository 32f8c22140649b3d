"""What CUDA graphs around more of the training step would gain: GhostNet's model-only step run seven ways.

    python -m benchmarks.diagnostics.step_graph [--batches 100] [--image-size 227] [--batch-size 64] [--variants a b c d e f g]

On an H100 (2026-11-26) a compiled training step was bound by the host: torch.compile's CUDA graphs cover the
network's forward and backward, but the Python around them (the graph trees' bookkeeping, the gradients handed back
one tensor at a time, the eager loss, the optimizer) took about 15 ms per step against about 14 ms of GPU work. This
script measures the alternative before it is built into training:

  (a) compile_mode reduce-overhead, as `compile: true` trains now (the model-only loop of training_throughput);
  (b) the whole step (forward, loss, backward, fused AdamW with `capturable`) captured in one CUDA graph with
      `torch.cuda.graph`, the network eager: each step copies its batch into the graph's inputs and replays it;
  (c) as (b), the network compiled without CUDA graphs of its own (torch.compile's default mode), so that the
      compiler's fused kernels run inside the one graph;
  (d) as (c), with the on-device preprocessing (uint8 -> float, the default augmentations with parameters drawn as
      the workers draw them, Normalize) compiled and captured in the same graph: the whole step's GPU work;
  (e) forward, loss and backward captured in one graph by `models/cuda_graphs.py`'s TrainingGraph, the optimizer
      eager: what `cuda_graphs: true` trains with, which fits Lightning's loop as it is (the optimizer,
      schedulers and checkpoints untouched);
  (f) as (e), the network compiled (default mode) inside the graph;
  (g) as (e), with the on-device preprocessing (from uint8, as in (d)) in the graph too: what `cuda_graphs: true`
      records in training, so that (g) against (e) is the preprocessing's cost inside the graph.

Every variant starts from the same weights and trains on the same rotating batches (dropout off, so that random
numbers drawn inside a graph do not make the runs differ); each one's losses over its first steps are compared with
an eager run's, since a graph that read a stale buffer would train on something else. (b) runs eager's kernels and
should stay close; compiled variants drift further, since AdamW's normalised steps amplify the compiled backward's
rounding (on the CPU, (a) and (c) were 9.6 % apart from eager after 8 steps of batch 4 at 32 px). It prints ms per
step, images/s and the ratio to (a). CUDA only; `--dry-run` runs every variant without capturing (replays call the
step function; TrainingGraph with capture=False), which checks the plumbing on a CPU and measures nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo

from benchmarks.common import NUM_CLASSES, load_average, machine_description, markdown_table, synchronize
from models.cuda_graphs import WARMUP, TrainingGraph  # WARMUP: steps before a capture, as PyTorch advises
from models.training_parts import CUDA_GRAPH_MODES
from utils.cli import positive_int, run_main
from utils.configuration import validate
from utils.errors import UserError

VARIANTS = {
    "a": "compile reduce-overhead (what compile: true runs now)",
    "b": "whole step in one CUDA graph, eager network",
    "c": "whole step in one CUDA graph, compiled network",
    "d": "as (c), device preprocessing from uint8 in the graph too",
    "e": "cuda_graphs: true (forward, loss and backward in one graph, optimizer eager), eager network",
    "f": "as (e), the network compiled (default mode)",
    "g": "as (e), device preprocessing from uint8 in the graph too (what cuda_graphs: true records)",
}
CHECKED_STEPS = 8  # losses compared with the eager run's over these first steps
POOL = 4  # distinct batches, used in turn


class Batches:
    """POOL synthetic batches on the device: normalized float images (or uint8 ones with drawn augmentation
    parameters for the preprocessing variant) and class targets."""

    def __init__(self, config: dict[str, Any], device: torch.device, seed: int = 0) -> None:
        from datasets.device_augmentation.augmenter import DeviceAugmenter, device_augmentation_settings

        generator = torch.Generator().manual_seed(seed)
        shape = (config["batch_size"], 3, *config["image_size"])
        layout = torch.channels_last if config["channels_last"] else torch.contiguous_format
        self.float = [torch.randn(shape, generator=generator).to(device).contiguous(memory_format=layout)
                      for _ in range(POOL)]
        self.uint8 = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).to(device)
                      for _ in range(POOL)]
        self.targets = [torch.randint(0, NUM_CLASSES, shape[:1], generator=generator).to(device) for _ in range(POOL)]
        settings = device_augmentation_settings({**config, "gpu_augmentations": True})
        augmenter = DeviceAugmenter(settings["image"], settings["tensor"])
        self.drawn = [augmenter.draw(shape, generator=generator).to(device) for _ in range(POOL)]


def build(config: dict[str, Any], device: torch.device, capturable: bool) -> Any:
    """NetModule with the config's network, loss and normalisation, and the optimizer training builds (fused
    AdamW), `capturable` for a CUDA graph. Seeded, so that every variant starts from the same weights."""
    from models.net_module import NetModule
    from models.training_parts import build_optimizer

    torch.manual_seed(0)
    module = NetModule.from_config({**config, "gpu_augmentations": True}, NUM_CLASSES,
                                   [str(i) for i in range(NUM_CLASSES)]).to(device)
    module.train()
    params = {**config["optimizer_params"], **({"capturable": True} if capturable else {})}
    return module, build_optimizer(config["optimizer"], params, module.parameters())


def python_loop(config: dict[str, Any], device: torch.device, batches: Batches, steps: int, compile_mode: str | None,
                graphed: bool = False, preprocess: bool = False,
                dry_run: bool = False) -> tuple[list[float], list[float]]:
    """The step as Python runs it, eager (compile_mode None) or through torch.compile, its forward, loss and backward
    optionally one TrainingGraph (recorded only when not a dry run), which with `preprocess` starts from the uint8
    batch and its drawn augmentation parameters: (losses of the first CHECKED_STEPS steps, the wall clock after
    each step's queueing, synchronised at the end of the untimed steps and of the last)."""
    module, optimizer = build(config, device, capturable=False)
    net = torch.compile(module.net, mode=compile_mode) if compile_mode else module.net
    graph = None

    def inputs(index: int) -> tuple[torch.Tensor, ...]:
        if preprocess:
            return batches.uint8[index % POOL], batches.drawn[index % POOL]
        return (batches.float[index % POOL],)

    if graphed:  # as NetModule does with cuda_graphs at its first training batch
        forward = (lambda images, drawn: net(module._preprocess(images, True, drawn))) if preprocess else net
        graph = TrainingGraph(module.net, module.loss, inputs(0), batches.targets[0], forward=forward,
                              capture=not dry_run)
    losses, marks = [], []
    for step in range(steps):
        if compile_mode in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()
        if graph is not None:
            loss, _ = graph.run(inputs(step), batches.targets[step % POOL])
        else:
            loss = module.loss(net(batches.float[step % POOL]), batches.targets[step % POOL])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        if step < CHECKED_STEPS:
            losses.append(loss.item())  # a sync, only in the untimed first steps
        marks.append(_mark(device, step, steps))
    return losses, marks


def graph_loop(config: dict[str, Any], device: torch.device, batches: Batches, steps: int, compiled: bool,
               preprocess: bool, dry_run: bool) -> tuple[list[float], list[float]]:
    """The whole step captured once and replayed: WARMUP steps run on a side stream first, then the capture, then
    one replay per further step, each after copying its batch into the graph's input buffers."""
    module, optimizer = build(config, device, capturable=True)
    net = torch.compile(module.net) if compiled else module.net
    prepare = torch.compile(module._preprocess) if compiled else module._preprocess
    static = {"images": (batches.uint8 if preprocess else batches.float)[0].clone(),
              "targets": batches.targets[0].clone(), "drawn": batches.drawn[0].clone()}

    def step() -> torch.Tensor:
        images = prepare(static["images"], True, static["drawn"]) if preprocess else static["images"]
        loss = module.loss(net(images), static["targets"])
        loss.backward()
        optimizer.step()
        return loss.detach()

    def load(index: int) -> None:
        static["images"].copy_((batches.uint8 if preprocess else batches.float)[index % POOL])
        static["targets"].copy_(batches.targets[index % POOL])
        static["drawn"].copy_(batches.drawn[index % POOL])

    losses, marks = [], []
    replay: Callable[[], torch.Tensor] | None = None
    side = torch.cuda.Stream() if device.type == "cuda" else None
    for index in range(steps):
        load(index)
        if index < WARMUP:
            optimizer.zero_grad(set_to_none=True)
            if side is not None:
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    loss = step()
                torch.cuda.current_stream().wait_stream(side)
            else:
                loss = step()
        else:
            if replay is None:
                replay = _capture(step, optimizer, side, dry_run)
            loss = replay()
        if index < CHECKED_STEPS:
            losses.append(loss.item())
        marks.append(_mark(device, index, steps))
    return losses, marks


def _capture(step: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, stream: torch.cuda.Stream | None,
             dry_run: bool) -> Callable[[], torch.Tensor]:
    """A function that replays `step`: a CUDA graph of it, recorded on `stream`, the warm-up's (so that no autograd
    node from the warm-up refers to a stream outside the capture), with gradients set to None first (the backward
    then allocates them in the graph's own memory and each replay writes them anew); or `step` itself in a dry
    run."""
    if dry_run:
        def eager() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            return step()
        return eager
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    # thread_local, as models/cuda_graphs.py records: another thread's CUDA calls cannot fail the capture.
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        loss = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return loss
    return replay


def _mark(device: torch.device, index: int, steps: int) -> float:
    """The clock after step `index`; synchronised at the end of the untimed steps and of the last one."""
    if index in (steps // 2 - 1, steps - 1):
        synchronize(device)
    return time.perf_counter()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=positive_int, default=100,
                        help="timed steps per variant; as many untimed ones run first (default 100)")
    parser.add_argument("--image-size", type=positive_int, default=227, help="square image size in px (default 227)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default 64)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list("abegcfd"),
                        help="which to run, in this order (default all: a b e g c f d, those that compile least "
                             "first, so that a time limit cuts the costliest)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no capture (replays call the step function): checks the plumbing, on a CPU too")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise UserError("benchmarks.diagnostics.step_graph captures CUDA graphs: it needs a CUDA GPU (--dry-run checks the "
                        "plumbing without one)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = validate({"image_size": [args.image_size, args.image_size], "batch_size": args.batch_size,
                       "dropout": 0.0, "channels_last": device.type == "cuda"})
    machine = machine_description()
    batches = Batches(config, device)
    steps = 2 * max(args.batches, CHECKED_STEPS)  # the first half is untimed: compilation, warm-up, capture
    reference, _ = python_loop(config, device, batches, CHECKED_STEPS, compile_mode=None)
    rows, base = [], None
    for name in args.variants:
        print(f"measuring ({name}) {VARIANTS[name]} ...", flush=True)
        try:
            if name in "aefg":
                mode = {"a": "reduce-overhead", "e": None, "f": "default", "g": None}[name]
                losses, marks = python_loop(config, device, batches, steps, compile_mode=mode, graphed=name in "efg",
                                            preprocess=name == "g", dry_run=args.dry_run)
            else:
                losses, marks = graph_loop(config, device, batches, steps, compiled=name in "cd",
                                           preprocess=name == "d", dry_run=args.dry_run)
        except Exception as error:  # noqa: BLE001 - one variant failing must not hide the others' figures
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            rows.append([f"({name}) {VARIANTS[name]}", "failed", "-", "-", f"{type(error).__name__}: {message}"])
            print(f"  ({name}) failed: {type(error).__name__}: {message}", flush=True)
            torch._dynamo.reset()
            continue
        ms = (marks[-1] - marks[steps // 2 - 1]) / (steps - steps // 2) * 1e3
        base = base or ms
        # (d) and (g) train on preprocessed uint8 batches, not on the reference's float ones: their losses are their
        # own.
        drift = "-" if name in "dg" else f"{max(abs(x - r) / abs(r) for x, r in zip(losses, reference)):.1e}"
        rows.append([f"({name}) {VARIANTS[name]}", f"{ms:.2f}", f"{args.batch_size / ms * 1e3:.0f}",
                     f"{base / ms:.2f}x", drift])
        print(f"  {rows[-1][0]}: {rows[-1][1]} ms per step, losses vs eager {drift}", flush=True)
    print()
    print("\n".join(machine))
    print(f"load average (1, 5, 15 min) at end: {load_average()}")
    print(f"GhostNet (output_channels {config['output_channels']}, {NUM_CLASSES} classes), batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size} px, fp32, channels_last {config['channels_last']}, dropout off; "
          f"{steps - steps // 2} timed steps after {steps // 2}"
          f"{'; DRY RUN: no graphs, nothing measured' * args.dry_run}")
    print()
    print(markdown_table(["variant", "ms per step", "images/s", "speed vs first row",
                          f"losses vs eager, first {CHECKED_STEPS} steps (max relative difference)"], rows))
    return 0


if __name__ == "__main__":
    run_main(main)
