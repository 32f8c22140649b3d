"""Compare the registry's architectures: parameters, MACs, weights size and CPU latency, as a markdown table.

    python -m models.compare [--image-size H W] [--num-classes N] [--output FILE] [--architectures NAME ...]

MACs are counted with `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; one MAC is two
FLOPs), so pooling, normalisation and activations are left out, as in the papers' figures. Latency is the median
of several batch-1 forward passes on this machine's CPU under `torch.inference_mode`, after five untimed passes
(the first few are slow while oneDNN prepares its kernels).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.arch_dict import build_architecture, check_architecture, get_architectures_dictionary, min_image_size
from utils.cli import positive_int, run_main
from utils.errors import ConfigError

BYTES_PER_FLOAT32 = 4


@dataclass(frozen=True)
class ArchitectureCost:
    """What one architecture costs at one input size."""

    name: str
    params: int
    macs: int
    weights_mb: float
    latency_ms: float


def count_macs(model: torch.nn.Module, image: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of `image` (convolutions and matrix products)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(image)
    return counter.get_total_flops() // 2


def cpu_latency_ms(model: torch.nn.Module, image: torch.Tensor, runs: int = 10, warmup: int = 5) -> float:
    """Median wall time (ms) of `runs` forward passes of `image` after `warmup` untimed ones."""
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(image)
        for _ in range(runs):
            start = time.perf_counter()
            model(image)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(name: str, image_size: tuple[int, int], num_classes: int = 1000, runs: int = 10) -> ArchitectureCost:
    """Build `name` from scratch (RGB input; GhostNet with its paper head size 1280) and measure it on the CPU."""
    model = build_architecture(name, num_classes, img_channels=3, dropout=0.2, output_channels=1280).eval()
    image = torch.randn(1, 3, *image_size)
    params = sum(p.numel() for p in model.parameters())
    return ArchitectureCost(
        name=name,
        params=params,
        macs=count_macs(model, image),
        weights_mb=params * BYTES_PER_FLOAT32 / 1e6,
        latency_ms=cpu_latency_ms(model, image, runs=runs),
    )


def markdown_table(costs: list[ArchitectureCost]) -> str:
    """One markdown row per architecture."""
    lines = [
        "| architecture | parameters (M) | MACs (M) | weights (MB, float32) | CPU latency, batch 1 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in costs:
        lines.append(
            f"| {c.name} | {c.params / 1e6:.2f} | {c.macs / 1e6:.1f} | {c.weights_mb:.1f} | {c.latency_ms:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.compare", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--image-size",
        nargs=2,
        type=int,
        default=[224, 224],
        metavar=("H", "W"),
        help="input height and width in pixels (default: 224 224)",
    )
    parser.add_argument("--num-classes", type=positive_int, default=1000, help="classifier outputs (default: 1000)")
    parser.add_argument("--runs", type=positive_int, default=10, help="timed forward passes per architecture (default: 10)")
    parser.add_argument(
        "--architectures",
        nargs="+",
        metavar="NAME",
        help="names from models/arch_dict.py to compare (default: all of them)",
    )
    parser.add_argument("--output", help="also write the table to this file (default: print only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.architectures or list(get_architectures_dictionary())
    size = tuple(args.image_size)
    for name in names:
        check_architecture(name)
        if min(size) < min_image_size(name):
            raise ConfigError(
                f"--image-size {size[0]} {size[1]} is too small for {name}; it needs at least {min_image_size(name)} px"
            )
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    costs = []
    for name in names:
        costs.append(measure(name, size, args.num_classes, args.runs))
        print(f"measured {name}", flush=True)
    table = markdown_table(costs)
    header = (
        f"Input {size[0]}x{size[1]} RGB, {args.num_classes} classes, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads on {os.cpu_count()} cores; 1-minute load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after (latency is only comparable at low load)."
    )
    print(f"\n{header}\n\n{table}")
    if args.output:
        with open(args.output, "w") as file:
            file.write(f"{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    run_main(main)
