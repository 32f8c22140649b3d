"""How long does preparing the dataset take? `prepare_dataset` against a plain `tar -xzf` of the same archive.

Writes an updated-release synthetic download of about `--images` JPEGs of about 700x480 pixels (Stanford Cars's
typical size) into a temporary folder, extracts it with `tar -xzf`, prepares it with `prepare_dataset`, and prints
both times and their ratio (the target is at most 1.5). For reference it also times `prepare_dataset` with
`full_check` (every image decoded), to show what that costs. The three are timed in turn, `--rounds` times, so that
a change in machine load hits all of them alike; the ratio of the medians counts. Needs about 3x the archive's size
in free disk space.

    python benchmarks/prepare_speed.py [--images 16185] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.raw.prepare import PrepareSummary, prepare_dataset  # noqa: E402
from datasets.raw.synthetic import make_synthetic  # noqa: E402

TRAIN_SHARE = 8144 / 16185


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16185, help="about how many images (default: 16185)")
    parser.add_argument("--classes", type=int, default=196, help="classes (default: 196)")
    parser.add_argument("--distinct-per-class", type=int, default=4,
                        help="images rendered per class, then repeated, to keep generation short (default: 4)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the three (default: 3)")
    parser.add_argument("--workdir", default=None, help="where to put the temporary files (default: system temp)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    per_class = max(2, round(args.images / args.classes))
    train_per_class = max(1, round(per_class * TRAIN_SHARE))
    test_per_class = max(1, per_class - train_per_class)
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        root = Path(folder)
        start = time.perf_counter()
        raw = make_synthetic(root / "raw", "updated", args.classes, train_per_class, test_per_class, seed=0,
                             min_size=420, max_size=760, distinct_per_class=args.distinct_per_class)
        archive = raw / "car_ims.tgz"
        count = args.classes * (train_per_class + test_per_class)
        print(f"generated {count} images, car_ims.tgz {archive.stat().st_size / 2**20:.0f} MiB, "
              f"in {time.perf_counter() - start:.0f} s")

        times: dict[str, list[float]] = {"tar": [], "prepare": [], "full_check": []}
        for round_index in range(args.rounds):
            times["tar"].append(timed(lambda: subprocess.run(["tar", "-xzf", str(archive), "-C", str(root / "out")],
                                                             check=True), root / "out"))
            times["prepare"].append(timed(lambda: check_count(prepare_dataset(raw, root / "out"), count),
                                          root / "out"))
            times["full_check"].append(timed(lambda: check_count(prepare_dataset(raw, root / "out", full_check=True),
                                                                 count), root / "out"))
            print(f"round {round_index + 1}/{args.rounds}: tar {times['tar'][-1]:.1f} s, prepare "
                  f"{times['prepare'][-1]:.1f} s, with full_check {times['full_check'][-1]:.1f} s", flush=True)

    tar, prepare, full = (statistics.median(times[key]) for key in ("tar", "prepare", "full_check"))
    print(f"\nmedians of {args.rounds} round(s); load average (1, 5, 15 min) at end: "
          + ", ".join(f"{value:.2f}" for value in os.getloadavg()))
    print("| images | tar -xzf (s) | prepare_dataset (s) | ratio | with full_check (s) | ratio |\n"
          "| --- | --- | --- | --- | --- | --- |\n"
          f"| {count} | {tar:.1f} | {prepare:.1f} | {prepare / tar:.2f} | {full:.1f} | {full / tar:.2f} |")


def timed(action: Callable[[], object], output: Path) -> float:
    """Seconds `action` takes to fill the empty folder `output`, which is removed afterwards."""
    output.mkdir()
    start = time.perf_counter()
    action()
    seconds = time.perf_counter() - start
    shutil.rmtree(output)
    return seconds


def check_count(summary: PrepareSummary, count: int) -> None:
    if summary.train_images + summary.test_images != count:
        raise RuntimeError(f"prepared {summary.train_images + summary.test_images} images, expected {count}")


if __name__ == "__main__":
    main()
