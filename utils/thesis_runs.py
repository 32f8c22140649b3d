"""The thesis's 56 runs of 2020 (C-1 ... C-66) as project data: each run's parameters and per-epoch metrics.

The data file, configs/thesis/runs_2020.json, is derived from the 2020 project's published results file
(`all_experiments.txt`: every run's Neptune parameters and metric table) and names it in its `source` field:

    python -m utils.thesis_runs --from PATH/all_experiments.txt    # rewrite configs/thesis/runs_2020.json
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from utils.cli import run_main
from utils.configuration import PROJECT_ROOT
from utils.errors import UserError

RUNS_FILE = PROJECT_ROOT / "configs" / "thesis" / "runs_2020.json"
SOURCE = ("derived from all_experiments.txt, the 2020 project's published results file (every run's Neptune "
          "parameters and per-epoch metrics), by python -m utils.thesis_runs --from all_experiments.txt")
SERIES = ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr")
# Neptune stored every number as a float (64.0); these are counts, written as today's runs log them (64).
INT_PARAMS = ("batch_size", "max_num_epochs", "num_params", "out_channels")
_BLOCK = re.compile(r"^EXPERIMENT: (?P<id>\S+)\n=+\n\nNAME: (?P<name>\S+)\n\nPARAMETERS:\n\n(?P<params>\{.*?\})\n\n"
                    r"METRICS:\n\n(?P<metrics>.*?)(?=\n\s*\nEXPERIMENT: |\s*\Z)", re.S | re.M)


@dataclass(frozen=True)
class ThesisRun:
    """One 2020 run: its experiment ID (C-50), its run name (ghost_20200922060810), the parameters as MLflow
    shows today's runs' (text or numbers) and its per-epoch series (epoch from 0)."""

    id: str
    name: str
    params: dict[str, Any]
    metrics: pd.DataFrame

    @property
    def max_valid_acc(self) -> float:
        return float(self.metrics["valid_acc"].max())

    @property
    def epochs(self) -> int:
        return len(self.metrics)


def parse_published(text: str) -> list[dict[str, Any]]:
    """The runs of the published results file, in its order, as the data file's records."""
    runs = []
    for match in _BLOCK.finditer(text):
        params = ast.literal_eval(match["params"])
        for key in INT_PARAMS:
            if isinstance(params.get(key), float) and params[key].is_integer():
                params[key] = int(params[key])
        table = pd.read_csv(io.StringIO(match["metrics"]), sep=r"\s+")
        metrics = {"epoch": [int(e) for e in table["epoch"]]}
        metrics.update({name: [float(v) for v in table[name]] for name in SERIES})
        runs.append({"id": match["id"], "name": match["name"], "params": dict(sorted(params.items())),
                     "metrics": metrics})
    if not runs:
        raise UserError("no 'EXPERIMENT: ...' blocks found: give the 2020 project's all_experiments.txt")
    return runs


def write_runs_file(published: Path, target: Path = RUNS_FILE) -> int:
    """Derive the data file from the published results file; returns the number of runs."""
    try:
        text = published.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read {published}: {error.strerror}") from None
    runs = parse_published(text)
    # one run per line: the file stays small and its diffs readable
    lines = ",\n".join(json.dumps(run) for run in runs)
    target.write_text(f'{{"source": {json.dumps(SOURCE)},\n "runs": [\n{lines}\n]}}\n', encoding="utf-8")
    return len(runs)


@cache
def thesis_runs(path: Path = RUNS_FILE) -> dict[str, ThesisRun]:
    """The 2020 runs by experiment ID, read from the data file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {r["id"]: ThesisRun(r["id"], r["name"], r["params"], pd.DataFrame(r["metrics"])) for r in data["runs"]}


def thesis_columns(ids: pd.Series) -> pd.DataFrame:
    """For a column of thesis IDs (C-50, or '' / None for runs without one): the 2020 run's best validation
    accuracy and number of epochs, NaN where the ID has no 2020 run."""
    runs = thesis_runs()
    found = [runs.get(str(i).split(",")[0].strip()) if isinstance(i, str) else None for i in ids]
    return pd.DataFrame({
        "thesis_max_valid_acc": [r.max_valid_acc if r else float("nan") for r in found],
        "thesis_epochs": [r.epochs if r else float("nan") for r in found],
    }, index=ids.index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write configs/thesis/runs_2020.json from the 2020 project's "
                                                 "published results file.")
    parser.add_argument("--from", dest="published", required=True, type=Path,
                        help="the 2020 project's all_experiments.txt")
    parser.add_argument("--output", type=Path, default=RUNS_FILE, help="data file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    count = write_runs_file(args.published, args.output)
    print(f"{count} runs written to {args.output}")
    return 0


if __name__ == "__main__":
    run_main(main)
