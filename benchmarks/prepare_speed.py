"""Time `prepare_dataset` against a plain `tar -xzf` of the same synthetic `car_ims.tgz`.

Writes an updated-release synthetic download of about `--images` JPEGs of about 700x480 pixels (Stanford Cars's
typical size) into a temporary folder, extracts it with `tar -xzf`, prepares it with `prepare_dataset`, and prints
both times and their ratio (the target is at most 1.5). For reference it also times `prepare_dataset` with the
decode check switched off, to show what the check costs. Needs about 3x the archive's size in free disk space.

    python benchmarks/prepare_speed.py [--images 16185]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datasets.image_extraction as image_extraction  # noqa: E402
from datasets.prepare import prepare_dataset  # noqa: E402
from datasets.synthetic import make_synthetic  # noqa: E402

TRAIN_SHARE = 8144 / 16185


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16185, help="about how many images (default: 16185)")
    parser.add_argument("--classes", type=int, default=196, help="classes (default: 196)")
    parser.add_argument("--distinct-per-class", type=int, default=4,
                        help="images rendered per class, then repeated, to keep generation short (default: 4)")
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

        (root / "tar").mkdir()
        start = time.perf_counter()
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(root / "tar")], check=True)
        tar_seconds = time.perf_counter() - start
        shutil.rmtree(root / "tar")

        start = time.perf_counter()
        summary = prepare_dataset(raw, root / "data")
        prepare_seconds = time.perf_counter() - start
        assert summary.train_images + summary.test_images == count
        shutil.rmtree(root / "data")

        check = image_extraction.decode_error
        image_extraction.decode_error = lambda data: None
        start = time.perf_counter()
        prepare_dataset(raw, root / "data")
        unchecked_seconds = time.perf_counter() - start
        image_extraction.decode_error = check

    print("| images | tar -xzf (s) | prepare_dataset (s) | ratio | without decode check (s) | ratio |\n"
          "| --- | --- | --- | --- | --- | --- |\n"
          f"| {count} | {tar_seconds:.1f} | {prepare_seconds:.1f} | {prepare_seconds / tar_seconds:.2f} "
          f"| {unchecked_seconds:.1f} | {unchecked_seconds / tar_seconds:.2f} |")


if __name__ == "__main__":
    main()
