"""Run several configs one after another (e.g. a series of the thesis's in configs/thesis/), going on after failures.

    python -m utils.series [CONFIG ...] [--ids C-40,C-41] [--section 4.2.13] [--set KEY=VALUE ...]
                           [--no-local-config] [--dry-run]

Each config is a recipe applied on top of your config.yml, as `train.py --config` applies it. Before anything
starts, the list of trainings and their number are printed. A series can be run again after an interruption: a
recipe (same recipe keys and same tags) that already has a finished run under `output_path` is skipped, and one
whose run stopped with epochs left (interrupted, failed, cut off) is resumed from its last.ckpt, as
`train.py --resume` does; the others start new runs. Each training runs in its own `train.py` process (its output
shown as it comes); a failed one does not stop the series. The end is one line per training and a table of the runs'
results (as `utils.summary` prints it); the exit code is 1 when any training failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from utils.cli import run_main
from utils.config_schema import defaults
from utils.configuration import read_yaml, resolve_config, unknown_name_message
from utils.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parent.parent
THESIS_CONFIGS = ROOT / "configs" / "thesis"
RUN_FOLDER_PREFIX = "run folder: "
ID_PATTERN = re.compile(r"^[A-Za-z]+-(\d+)$")


@dataclass
class Planned:
    """One training of the series: its config and what to do with it (new, resume or skip), decided from the run
    folders under its output_path; `problem` holds the one-line error of a config that cannot be read."""

    config: str
    label: str
    action: str  # "new", "resume", "skip" or "error"
    run_dir: Path | None = None
    problem: str = ""

    def plan_line(self) -> str:
        what = {"new": "new run", "resume": f"resume {self.run_dir}", "skip": f"skip: finished as {self.run_dir}",
                "error": f"cannot run: {self.problem}"}[self.action]
        return f"{self.label:<8} {self.config}  ({what})"


@dataclass
class SeriesRun:
    """One training's outcome: exit code (0 for a skipped one), run folder and seconds taken."""

    planned: Planned
    returncode: int
    run_dir: str | None
    seconds: float

    @property
    def config(self) -> str:
        return self.planned.config

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def report_line(self) -> str:
        if self.planned.action == "skip":
            state = "skipped"
        elif self.ok:
            state = "ok" if self.planned.action == "new" else "ok (resumed)"
        else:
            state = f"FAILED (exit {self.returncode})"
        return f"{state:<16} {self.config}  {self.run_dir or '-'}  {self.seconds:.0f} s"


def _id_number(path: Path) -> tuple[int, str]:
    match = ID_PATTERN.match(path.stem)
    return (int(match.group(1)) if match else 10**9, path.stem)


def _tags(path: Path) -> list[str]:
    return [str(tag) for tag in read_yaml(path).get("tags") or []]


def select_configs(configs: list[str], ids: list[str], sections: list[str], folder: Path = THESIS_CONFIGS
                   ) -> list[str]:
    """The config files of the series: `configs` as given, then `<folder>/<ID>.yml` of each id, then every config
    of `folder` tagged with one of `sections` (a section also takes its subsections: 4.2 takes 4.2.13), ordered
    by id. Unknown ids and empty sections are errors."""
    available = sorted(folder.glob("*.yml"), key=_id_number)
    by_id = {path.stem.upper(): path for path in available}
    chosen = list(configs)
    for wanted in ids:
        if wanted.upper() not in by_id:
            raise ConfigError(unknown_name_message("experiment id", wanted, [p.stem for p in available],
                                                   f"in {folder}"))
        chosen.append(str(by_id[wanted.upper()]))
    for section in sections:
        tagged = [str(path) for path in available
                  if any(tag == section or tag.startswith(section + ".") for tag in _tags(path))]
        if not tagged:
            known = sorted({tag for path in available for tag in _tags(path) if tag[:1].isdigit()},
                           key=lambda t: [int(part) for part in t.split(".") if part.isdigit()])
            raise ConfigError(f"--section {section}: no config in {folder} is tagged with it; sections: "
                              f"{', '.join(known)}")
        chosen += tagged
    if not chosen:
        raise ConfigError("no configs given: name config files, --ids (e.g. --ids C-40,C-41) or --section "
                          "(e.g. --section 4.2.13)")
    return list(dict.fromkeys(chosen))  # each once, in the order first named


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        saved = yaml.safe_load((run_dir / "config.yml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return {**defaults(), **saved} if isinstance(saved, dict) else None


def runs_of(config: dict[str, Any]) -> list[Path]:
    """Run folders under the config's output_path trained with its recipe and tags, oldest first. The tags count:
    thesis experiments may share a recipe (C-26 to C-29 do) and are still different trainings."""
    from utils.resilience import recipe

    output = Path(config["output_path"])
    wanted = recipe(config)
    runs = []
    for path in output.glob("*/config.yml"):
        saved = _saved_config(path.parent)
        if saved is not None and saved["tags"] == config["tags"] and recipe(saved) == wanted:
            runs.append(path.parent)
    return sorted(runs, key=lambda run: run.stat().st_mtime)


def plan(config_file: str, overrides: list[str], local: bool) -> Planned:
    """What to do with one config: skip it when a run of it is done (all `num_epochs` run, or stopped early),
    resume the newest run of it that has a last.ckpt and epochs left, else start a new run."""
    from utils.run_outputs import epochs_done, read_summary

    label = Path(config_file).stem
    try:
        config = resolve_config(config_file, overrides, local).config
    except UserError as error:
        return Planned(config_file, label, "error", problem=str(error))
    if config["tags"]:
        label = config["tags"][0]
    runs = runs_of(config)
    for run in reversed(runs):
        if (read_summary(run).get("status") == "early_stopped"
                or epochs_done(run / "metrics.csv") >= config["num_epochs"]):
            return Planned(config_file, label, "skip", run)
    for run in reversed(runs):
        if (run / "checkpoints" / "last.ckpt").is_file():
            return Planned(config_file, label, "resume", run)
    return Planned(config_file, label, "new")


def run_one(planned: Planned, overrides: list[str], local: bool) -> SeriesRun:
    """Train one config with train.py (resuming when planned so), echoing its output and catching its run folder."""
    if planned.action == "skip":
        return SeriesRun(planned, 0, str(planned.run_dir), 0.0)
    if planned.action == "error":
        print(planned.problem, flush=True)
        return SeriesRun(planned, 2, None, 0.0)
    command = [sys.executable, str(ROOT / "train.py"), "--config", planned.config]
    if not local:
        command.append("--no-local-config")
    if overrides:
        command += ["--set", *overrides]
    if planned.action == "resume":
        command += ["--resume", str(planned.run_dir / "checkpoints" / "last.ckpt")]
    started = time.monotonic()
    run_dir = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as child:
        assert child.stdout is not None
        for line in child.stdout:
            print(line, end="", flush=True)
            if line.startswith(RUN_FOLDER_PREFIX):
                run_dir = line.removeprefix(RUN_FOLDER_PREFIX).strip()
    if run_dir is None:  # a failed or stopped run does not print its folder: it is the newest run of the recipe
        after = plan(planned.config, overrides, local)
        run_dir = str(after.run_dir) if after.run_dir is not None else None
    return SeriesRun(planned, child.returncode, run_dir, time.monotonic() - started)


def print_plan(planned: list[Planned]) -> None:
    skipped, resumed = sum(p.action == "skip" for p in planned), sum(p.action == "resume" for p in planned)
    print(f"=== series of {len(planned)} trainings ({skipped} finished before, {resumed} to resume):", flush=True)
    for entry in planned:
        print(entry.plan_line(), flush=True)


def run_series(planned: list[Planned], overrides: list[str], local: bool = True) -> list[SeriesRun]:
    """Run every planned training in order; a failed run is recorded and the next one starts."""
    results = []
    for index, entry in enumerate(planned, 1):
        print(f"=== series {index}/{len(planned)}: {entry.plan_line()}", flush=True)
        try:
            results.append(run_one(entry, overrides, local))
        except KeyboardInterrupt:
            print(f"=== series stopped during {entry.config}: run the same command again to continue it (finished "
                  "runs are skipped, the stopped one resumes from its last finished epoch)", flush=True)
            raise
    return results


def results_table(results: list[SeriesRun]) -> str:
    """The runs' results as utils.summary's markdown table (runs without a summary.json left out)."""
    import pandas as pd

    from utils.summary import TABLE_COLUMNS, run_row, to_markdown

    rows = [row for result in results if result.run_dir and (row := run_row(Path(result.run_dir)))]
    if not rows:
        return "(no run wrote a summary.json)"
    return to_markdown(pd.DataFrame(rows, columns=TABLE_COLUMNS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train several configs one after another with train.py; "
                                                 "a rerun skips finished runs and resumes interrupted ones.")
    parser.add_argument("configs", nargs="*", metavar="CONFIG", help="config files, run in this order")
    parser.add_argument("--ids", type=lambda text: [i.strip() for i in text.split(",") if i.strip()], default=[],
                        action="extend", help=f"experiment ids of {THESIS_CONFIGS.relative_to(ROOT)}, comma-separated "
                                              "(e.g. C-40,C-41)")
    parser.add_argument("--section", dest="sections", action="append", default=[], metavar="SECTION",
                        help="every thesis config tagged with this thesis section, e.g. 4.2.13 (4.2 takes all its "
                             "subsections); repeatable")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides given to every run (as train.py --set), e.g. num_epochs=5")
    parser.add_argument("--no-local-config", dest="local_config", action="store_false",
                        help="run the recipes without config.yml (as train.py --no-local-config)")
    parser.add_argument("--dry-run", action="store_true", help="print the list of trainings and stop")
    args = parser.parse_args(argv)
    configs = select_configs(args.configs, args.ids, args.sections)
    planned = [plan(config, args.overrides, args.local_config) for config in configs]
    print_plan(planned)
    if args.dry_run:
        return 0
    results = run_series(planned, args.overrides, args.local_config)
    failed = sum(not r.ok for r in results)
    skipped = sum(r.planned.action == "skip" for r in results)
    print(f"=== series report: {len(results) - failed - skipped} ok, {skipped} skipped (finished before), "
          f"{failed} failed")
    for result in results:
        print(result.report_line())
    print(results_table(results))
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
