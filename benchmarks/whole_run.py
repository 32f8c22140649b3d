"""How long does a whole `python train.py` run take, timed from outside? Process start, image cache build, every
epoch, checkpoints, the end; and the C-50 time projected from it.

    python -m benchmarks.whole_run [--data-dir DIR] [--train-images 8144] [--test-images 8041] [--epochs 3]
        [--config configs/thesis/C-50.yml] [--cpus 0,1] [--versus-cpus 0,1] [--set KEY=VALUE ...]

On generated 700x480 JPEGs (Stanford Cars' split sizes by default; a `--data-dir` generated earlier with the same
sizes is reused, its image cache removed first so that each run builds it), it runs
`python train.py --config CONFIG -d DATA --set num_epochs=EPOCHS` as a user would, with nothing else set: the
config's values and the defaults, `auto` device options included. `--set` adds overrides (for a dry run on a CPU).
The run works in a fresh temporary folder (its output/, logs/ and MLflow store). Its metrics.csv gives each epoch's
wall time; the median of the epochs after the first is the steady epoch, and the rest of the run is counted once:
projected C-50 = whole run + (129 - epochs) x steady epoch.

`--cpus 0,1` confines the process and its DataLoader workers to those cores (`taskset -c`, as on a Colab-like host);
`--versus-cpus` runs a second time, so confined, and prints both side by side.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import generate_prepared, load_average, machine_description, markdown_table
from benchmarks.training_throughput import C50_EPOCHS, TRAIN_IMAGES, VALID_IMAGES
from utils.cli import run_main
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TARGET_MINUTES, STRETCH_MINUTES = 6.0, 5.0  # C-50 start to finish on one H100 (issue 25)
FIRST_EPOCH_BOUND = 2.0  # first epoch at most this many steady epochs
CONFINED_BOUND = 1.10  # a run on 2 cores within 10 % of the unconfined one


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the generated data lives (default: a temporary folder, removed afterwards)")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help=f"default {TRAIN_IMAGES}")
    parser.add_argument("--test-images", type=int, default=VALID_IMAGES, help=f"default {VALID_IMAGES}")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to train, at least 2 (default 3)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "thesis" / "C-50.yml"),
                        help="the config file train.py reads (default configs/thesis/C-50.yml)")
    parser.add_argument("--cpus", default=None, help="cores for the run, as taskset -c takes them (default: all)")
    parser.add_argument("--versus-cpus", default=None, metavar="CPUS",
                        help="a second run confined to these cores (taskset -c), printed beside the first")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="further config overrides for train.py (default none: the config as it is)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the steady epoch is taken from the epochs after the first")
    return args


def timed_train(config: str, data: Path, epochs: int, overrides: list[str], cpus: str | None,
                work: Path) -> tuple[float, list[float], int]:
    """Seconds of one `train.py` process from start to exit, each epoch's `epoch_time_s`, and its exit code."""
    if cpus is not None and shutil.which("taskset") is None:
        raise UserError("--cpus needs taskset (util-linux), which this machine lacks")
    shutil.rmtree(data / ".cache", ignore_errors=True)  # the run builds its image cache, as a first run does
    work.mkdir(parents=True)
    command = [sys.executable, str(ROOT / "train.py"), "--config", config, "-d", str(data),
               "--set", f"num_epochs={epochs}", *overrides]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    print(f"$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(command, cwd=work, check=False).returncode
    elapsed = time.perf_counter() - start
    files = sorted(work.glob("output/*/metrics.csv"))
    epoch_times = pd.read_csv(files[0])["epoch_time_s"].tolist() if files else []
    return elapsed, epoch_times, code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = ["--set", *args.overrides] if args.overrides else []
    runs = [("all cores" if args.cpus is None else f"cores {args.cpus}", args.cpus)]
    if args.versus_cpus is not None:
        runs.append((f"cores {args.versus_cpus}", args.versus_cpus))
    results = []
    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="cars-whole-run-") as tmp:
        data = args.data_dir or Path(tmp) / "stanford"
        print(f"generating {args.train_images} train + {args.test_images} test images in {data} (not timed) ...",
              flush=True)
        generate_prepared(data, args.train_images, args.test_images)
        for index, (label, cpus) in enumerate(runs):
            elapsed, epoch_times, code = timed_train(args.config, data, args.epochs, overrides, cpus,
                                                     Path(tmp) / f"run{index}")
            if code != 0 or len(epoch_times) != args.epochs:
                raise UserError(f"train.py ({label}) exited with {code} after {len(epoch_times)} of {args.epochs} "
                                "epochs: see its output above")
            results.append((label, elapsed, epoch_times))
            print(f"--- {label}: {elapsed:.1f} s from process start to exit; epochs (s): "
                  f"{' '.join(f'{t:.2f}' for t in epoch_times)}", flush=True)  # kept if a later run is cut off
    steady = [statistics.median(times[1:]) for _, _, times in results]
    projected = [(elapsed + (C50_EPOCHS - args.epochs) * value) / 60 for (_, elapsed, _), value in zip(results, steady)]
    print()
    print("\n".join(machine))
    print(f"load average (1, 5, 15 min) at end: {load_average()}")
    print(f"python train.py --config {args.config} -d DATA --set num_epochs={args.epochs}"
          f"{' ' + ' '.join(args.overrides) if args.overrides else ''}; {args.train_images} train + "
          f"{args.test_images} validation images; image cache built by each run, in its time")
    print()
    rows = [[f"whole {args.epochs}-epoch run, process start to exit (s)", *(f"{e:.1f}" for _, e, _ in results)],
            ["outside the epochs: start-up, cache build, the end (s)",
             *(f"{e - sum(times):.1f}" for _, e, times in results)],
            ["first epoch (s)", *(f"{times[0]:.1f}" for _, _, times in results)],
            ["later epochs (s)", *(" ".join(f"{t:.2f}" for t in times[1:]) for _, _, times in results)],
            ["steady epoch: median of the later ones (s)", *(f"{value:.2f}" for value in steady)],
            ["first epoch / steady epoch", *(f"{times[0] / value:.2f}x" for (_, _, times), value
                                             in zip(results, steady))],
            [f"projected C-50: {C50_EPOCHS} epochs (min)", *(f"{value:.2f}" for value in projected)]]
    if len(results) > 1:
        rows.append(["projected C-50, this run / first run", "1.00x", f"{projected[1] / projected[0]:.2f}x"])
    print(markdown_table(["measure", *(label for label, _, _ in results)], rows))
    if (args.train_images, args.test_images) != (TRAIN_IMAGES, VALID_IMAGES) or args.overrides:
        print(f"\n(not C-50's {TRAIN_IMAGES:,} + {VALID_IMAGES:,} images with the config as it is: no verdict)")
        return 0
    for (label, _, times), value, minutes in zip(results, steady, projected):
        print(f"\n{label}: C-50 projected {minutes:.2f} min: target {TARGET_MINUTES:.0f} min "
              f"{'met' if minutes <= TARGET_MINUTES else 'NOT met'}, stretch {STRETCH_MINUTES:.0f} min "
              f"{'met' if minutes <= STRETCH_MINUTES else 'not met'}; first epoch {times[0] / value:.2f}x steady "
              f"(target at most {FIRST_EPOCH_BOUND:.0f}x: {'met' if times[0] <= FIRST_EPOCH_BOUND * value else 'NOT met'})")
    if len(results) > 1:
        ratio = projected[1] / projected[0]
        print(f"\n{results[1][0]} against {results[0][0]}: {ratio:.2f}x (target within "
              f"{CONFINED_BOUND - 1:.0%}: {'met' if ratio <= CONFINED_BOUND else 'NOT met'})")
    return 0


if __name__ == "__main__":
    run_main(main)
