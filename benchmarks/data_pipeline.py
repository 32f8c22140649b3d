"""Is my data pipeline the bottleneck? Images/s per core: the thesis's per-item chain vs the project's cached path.

    python -m benchmarks.data_pipeline [--images 512] [--epochs 3] [--workers 0]

Rows, measured in one process on the same generated 700x480 JPEGs, epochs interleaved so that a change of machine
load hits every row alike:
  (a) the thesis's chain, reimplemented here as the baseline: PIL decode -> RGB -> Resize(227, 227) -> flip / affine /
      ColorJitter with C-50's parameters -> ToTensor -> Normalize, one item at a time;
  (b0) the project's Dataset without the cache (decode + prefix every epoch), CPU augment, uint8 items;
  (b) the project's Dataset with the image cache (built beforehand, its one-off build timed apart), CPU augment,
      uint8 items: what the DataModule's train loader yields with cache_images: true, gpu_augmentations: false
      (Normalize runs on the training device, so it is not in this row);
  (c) with a CUDA GPU: cached uint8 batches, moved to the GPU, DeviceAugmenter + Normalize there.
Per core = images/s divided by the loader processes doing the work (1 with --workers 0: this process).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from benchmarks.common import (
    NUM_CLASSES,
    generate_prepared,
    load_average,
    machine_description,
    markdown_table,
    synchronize,
)
from datasets.prepared.stanford_data_module import StanfordCarsDataModule
from utils.cli import run_main
from utils.configuration import validate

TARGET_RATIO = 3.0


class ThesisChainDataset(Dataset):
    """The 2020 per-item chain: every item decoded from its JPEG and transformed as a PIL image, then to float."""

    def __init__(self, data_path: Path, config: dict[str, Any]) -> None:
        labels = pd.read_csv(data_path / "train_labels.csv")
        self.paths = [data_path / "train" / name for name in labels["image_fname"]]
        self.targets = (labels["class"] - 1).tolist()
        augment = config["image_augmentations"]
        norm = config["normalization_params_rgb"]
        self.transform = T.Compose([
            T.Resize(tuple(config["image_size"])),
            T.RandomHorizontalFlip(**augment["RandomHorizontalFlip"]),
            T.RandomAffine(**augment["RandomAffine"]),
            T.ColorJitter(**augment["ColorJitter"]),
            T.ToTensor(),
            T.Normalize(norm["mean"], norm["std"]),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.targets[index]


def benchmark_config(data_path: Path, cache_dir: Path, cache_images: bool, gpu_augmentations: bool,
                     workers: int, batch_size: int) -> dict[str, Any]:
    """The default (C-50) config pointed at the generated data."""
    return validate({"stanford_data_path": str(data_path), "cache_dir": str(cache_dir), "cache_images": cache_images,
                     "gpu_augmentations": gpu_augmentations, "num_workers": workers, "batch_size": batch_size,
                     "persistent_workers": False})


def device_consumer(config: dict[str, Any], device: torch.device) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """A train-loader batch (uint8 images, targets, parameters the workers drew) -> on the device: float,
    per-sample augmentations, Normalize, by `NetModule.preprocess` itself."""
    from models.net_module import NetModule

    module = NetModule.from_config(config, NUM_CLASSES, [str(index) for index in range(NUM_CLASSES)]).to(device)

    def consume(batch: list[torch.Tensor]) -> torch.Tensor:
        images, _, drawn = batch
        return module.preprocess(images.to(device, non_blocking=True), train=True,
                                 drawn=drawn.to(device, non_blocking=True))

    return consume


def time_epoch(loader: Iterable, consume: Callable[[list[torch.Tensor]], Any] | None,
               device: torch.device) -> tuple[float, int]:
    """Seconds for one pass over the loader, and the images it yielded."""
    count = 0
    start = time.perf_counter()
    for batch in loader:
        if consume is not None:
            consume(batch)
        count += batch[0].shape[0]
    synchronize(device)
    return time.perf_counter() - start, count


def profile_epoch(loader: Iterable, top: int = 18) -> str:
    """cProfile one epoch of a loader (run it with --workers 0 so the work happens in this process)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in loader:
        pass
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="generated training images (default 512)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per row; the median counts (default 3)")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers; 0 = all work in this process, i.e. one core (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where to generate the data (default: a temporary folder, removed afterwards)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one epoch of the cached CPU path (b)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One thread: the figure is per core, and tensor ops would otherwise spread over every core.
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="cars-bench-") as tmp:
        data_path = args.data_dir or Path(tmp) / "stanford"
        cache_dir = Path(tmp) / "cache"
        print(f"generating {args.images} training images of about 700x480 in {data_path} ...", flush=True)
        generate_prepared(data_path, args.images, 1)
        return run(args, data_path, cache_dir, device)


def run(args: argparse.Namespace, data_path: Path, cache_dir: Path, device: torch.device) -> int:
    per_core = max(args.workers, 1)
    machine = machine_description()  # before the run, so that the load average is the one it started under
    uncached = StanfordCarsDataModule(benchmark_config(data_path, cache_dir, False, False, args.workers,
                                                       args.batch_size))
    cached = StanfordCarsDataModule(benchmark_config(data_path, cache_dir, True, False, args.workers,
                                                     args.batch_size))
    uncached.setup("fit")
    start = time.perf_counter()
    cached.setup("fit")  # builds the cache of both splits (the test split here has one image)
    build_seconds = time.perf_counter() - start
    build_threads = max(args.workers, 1)

    baseline = ThesisChainDataset(data_path, cached.config)
    rows: dict[str, tuple[Callable[[], Iterable], Callable | None]] = {
        "(a) thesis chain: PIL decode, Resize, flip/affine/jitter, ToTensor, Normalize (baseline)": (
            lambda: DataLoader(baseline, batch_size=args.batch_size, shuffle=True, num_workers=args.workers), None),
        "(b0) project, no cache: decode + prefix, CPU augment, uint8": (uncached.train_dataloader, None),
        "(b) project, cache: CPU augment, uint8 (target >= 3x)": (cached.train_dataloader, None),
    }
    notes = []
    device_row = "(c) project, cache: uint8 batches, DeviceAugmenter + Normalize on the GPU"
    if device.type != "cuda":
        notes.append(f"{device_row}: skipped, no CUDA GPU")
    else:
        try:
            on_device = StanfordCarsDataModule(benchmark_config(data_path, cache_dir, True, True, args.workers,
                                                                args.batch_size))
            on_device.setup("fit")
            consume = device_consumer(on_device.config, device)
            consume(next(iter(on_device.train_dataloader())))  # warm-up: CUDA context and kernels
            rows[device_row] = (on_device.train_dataloader, consume)
        except ImportError:
            notes.append(f"{device_row}: skipped, datasets/device_augmentation/augmenter.py is missing")

    seconds: dict[str, list[float]] = {name: [] for name in rows}
    counts: dict[str, int] = {}
    for epoch in range(args.epochs):
        for name, (make_loader, consume) in rows.items():
            elapsed, counts[name] = time_epoch(make_loader(), consume, device)
            seconds[name].append(elapsed)
        print(f"epoch {epoch + 1}/{args.epochs} done", flush=True)

    rates = {name: counts[name] / statistics.median(seconds[name]) / per_core for name in rows}
    base = rates[next(iter(rows))]
    table = markdown_table(
        ["path", "images/s per core", "vs baseline"],
        [[name, f"{rate:.1f}", f"{rate / base:.2f}x"] for name, rate in rates.items()],
    )
    print()
    print("\n".join(machine))
    print(f"load average (1, 5, 15 min) at end: {load_average()}")
    print(f"{args.images} images, batch {args.batch_size}, {args.workers} worker(s) (per core = / {per_core}), "
          f"median of {args.epochs} epoch(s), torch threads 1; config defaults (C-50 augmentations, 227x227)")
    print(f"one-off cache build: {build_seconds:.2f} s for {args.images + 1} images with {build_threads} "
          f"thread(s) ({(args.images + 1) / build_seconds:.1f} images/s)")
    print()
    print(table)
    for note in notes:
        print(f"\n{note}")
    ratio = rates["(b) project, cache: CPU augment, uint8 (target >= 3x)"] / base
    print(f"\n(b) / (a) = {ratio:.2f}x per core: target {TARGET_RATIO:.0f}x "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}")
    if args.profile:
        single = StanfordCarsDataModule(benchmark_config(data_path, cache_dir, True, False, 0, args.batch_size))
        single.setup("fit")
        print("\ncProfile of one epoch of (b), in this process, by own time:\n")
        print(profile_epoch(single.train_dataloader()))
    return 0


if __name__ == "__main__":
    run_main(main)
