"""Compare the registry's architectures: parameters, MACs, weights size, int8 size and CPU latency, as a markdown table.

    python -m models.compare [--image-size H W] [--num-classes N] [--output FILE] [--architectures NAME ...]
        [--no-onnx]

MACs are counted with `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; one MAC is two
FLOPs), so pooling, normalisation and activations are left out, as in the papers' figures. Latency is the median
of several batch-1 forward passes on this machine's CPU under `torch.inference_mode`, after five untimed passes
(the first few are slow while oneDNN prepares its kernels). Unless `--no-onnx`, each network is also exported to
ONNX and quantized to int8 as `models.export --int8` does it (static QDQ, per-channel weights; calibrated here on
random images, which sets the scales but not the size), and the int8 file's size and ONNX Runtime's batch-1 latency
on one CPU thread (fp32 and int8 models) are added; this needs `pip install -r export_requirements.txt`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
    int8_onnx_mb: float | None = None
    ort_fp32_ms: float | None = None
    ort_int8_ms: float | None = None


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


def onnx_costs(model: torch.nn.Module, image: torch.Tensor, runs: int) -> dict[str, float]:
    """int8 ONNX file size (MB) and ONNX Runtime batch-1 latency (ms, one thread) of the fp32 and int8 models."""
    from models.export_onnx import quantize_onnx, write_onnx
    from models.verify_exported import median_latency_ms, runner

    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(image.shape, generator=generator).numpy() for _ in range(4)]
    with tempfile.TemporaryDirectory() as folder:
        fp32, int8 = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        write_onnx(model, image.expand(2, -1, -1, -1).contiguous(), fp32)
        quantize_onnx(fp32, int8, calibration)
        return {
            "int8_onnx_mb": int8.stat().st_size / 1e6,
            "ort_fp32_ms": median_latency_ms(runner(fp32), image, runs),
            "ort_int8_ms": median_latency_ms(runner(int8), image, runs),
        }


def measure(name: str, image_size: tuple[int, int], num_classes: int = 1000, runs: int = 10,
            with_onnx: bool = False) -> ArchitectureCost:
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
        **(onnx_costs(model, image, runs) if with_onnx else {}),
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown_table(costs: list[ArchitectureCost]) -> str:
    """One markdown row per architecture."""
    lines = [
        "| architecture | parameters (M) | MACs (M) | weights (MB, float32) | CPU latency, batch 1 (ms) "
        "| int8 ONNX (MB) | ONNX Runtime fp32, 1 thread (ms) | ONNX Runtime int8, 1 thread (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in costs:
        lines.append(
            f"| {c.name} | {c.params / 1e6:.2f} | {c.macs / 1e6:.1f} | {c.weights_mb:.1f} | {c.latency_ms:.1f} "
            f"| {_cell(c.int8_onnx_mb)} | {_cell(c.ort_fp32_ms)} | {_cell(c.ort_int8_ms)} |"
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
    parser.add_argument("--no-onnx", action="store_true",
                        help="leave out the int8 size and ONNX Runtime latency columns (no export, much faster)")
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
    if not args.no_onnx:
        from models.export_onnx import require

        require(("onnx", "onnxscript", "onnxruntime"), "The int8 and ONNX Runtime columns (or --no-onnx)")
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    costs = []
    for name in names:
        costs.append(measure(name, size, args.num_classes, args.runs, with_onnx=not args.no_onnx))
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
