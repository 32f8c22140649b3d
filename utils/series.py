"""Run several configs one after another (e.g. the thesis's series in configs/thesis/), going on after failures.

    python -m utils.series CONFIG [CONFIG ...] [--set KEY=VALUE ...]

Each config is trained by `train.py` in its own process (its output shown as it comes); the end is a report of
one line per run, and the exit code is 1 when any run failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from utils.cli import run_main

ROOT = Path(__file__).resolve().parent.parent
RUN_FOLDER_PREFIX = "run folder: "


@dataclass
class SeriesRun:
    """One config's outcome: exit code, run folder (when train.py said it) and seconds taken."""

    config: str
    returncode: int
    run_dir: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def report_line(self) -> str:
        state = "ok" if self.ok else f"FAILED (exit {self.returncode})"
        return f"{state:<16} {self.config}  {self.run_dir or '-'}  {self.seconds:.0f} s"


def run_one(config: str, overrides: list[str]) -> SeriesRun:
    """Train one config with train.py, echoing its output and catching the run folder it names."""
    command = [sys.executable, str(ROOT / "train.py"), "--config", config]
    if overrides:
        command += ["--set", *overrides]
    started = time.monotonic()
    run_dir = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as child:
        assert child.stdout is not None
        for line in child.stdout:
            print(line, end="", flush=True)
            if line.startswith(RUN_FOLDER_PREFIX):
                run_dir = line.removeprefix(RUN_FOLDER_PREFIX).strip()
    return SeriesRun(config, child.returncode, run_dir, time.monotonic() - started)


def run_series(configs: list[str], overrides: list[str]) -> list[SeriesRun]:
    """Run every config in order; a failed run is recorded and the next one starts."""
    results = []
    for index, config in enumerate(configs, 1):
        print(f"=== series {index}/{len(configs)}: {config}", flush=True)
        results.append(run_one(config, overrides))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train several configs one after another with train.py.")
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="config files, run in this order")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides given to every run (as train.py --set), e.g. num_epochs=5")
    args = parser.parse_args(argv)
    results = run_series(args.configs, args.overrides)
    failed = sum(not r.ok for r in results)
    print(f"=== series report: {len(results) - failed} ok, {failed} failed")
    for result in results:
        print(result.report_line())
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
