"""The thesis-style table of local runs (§4.2): one row per run folder with a summary.json, best valid accuracy first.

    python -m utils.summary [--output-path DIR] [--format markdown|csv] [--tag TAG ...] [--with-thesis]

Two "best" results per run, named apart: `max_valid_acc` (the highest of any epoch, at `max_valid_acc_epoch`) and
the checkpoint `best.ckpt` holds (`best_checkpoint_epoch`, `best_checkpoint_valid_acc`). `validation` says what the
run validated on: the test split (the thesis's choice, so valid_acc is an optimistic test figure) or a held-out share
of train, in which case `test_acc` / `test_top5` are best.ckpt's accuracy on the untouched test split.

The status column says how each run ended (summary.json's status): finished, early_stopped, interrupted,
failed, or pruned (a sweep's trial).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from utils.cli import run_main
from utils.config_schema import KEYS
from utils.errors import UserError

COLUMNS = ["run", "ID", "description", "epochs", "min_train_loss", "min_valid_loss", "max_train_acc",
           "max_valid_acc", "max_valid_acc_epoch", "best_checkpoint_epoch", "best_checkpoint_valid_acc", "test_acc",
           "test_top5", "validation"]
ID_PATTERN = re.compile(r"^[A-Z]+-\d+$")
# How the run ended, shown after its epochs.
TABLE_COLUMNS = [*COLUMNS[:4], "status", *COLUMNS[4:]]


def run_status(summary: dict[str, Any]) -> str:
    """summary.json's status; summaries written before it was recorded say only whether the run stopped early."""
    return summary.get("status") or ("early_stopped" if summary.get("early_stopped") else "finished")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except yaml.YAMLError:
        data = {}
    return data if isinstance(data, dict) else {}


def run_row(run_dir: Path) -> dict[str, Any] | None:
    """One run folder as a table row; None when it holds no readable summary.json."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = _read_yaml(run_dir / "config.yml")
    tags = [str(t) for t in config.get("tags") or []]
    ids = [t for t in tags if ID_PATTERN.match(t)]
    return {
        "run": run_dir.name,
        "ID": ", ".join(ids or tags),
        "description": config.get("description") or "",
        "epochs": summary.get("epochs_run"),
        "status": run_status(summary),
        "tags": tags,
        **{name: summary.get(name) for name in COLUMNS[4:-1]},
        # runs written before validation_split existed validated on the test split
        "validation": _validation(summary.get("validation_split", "test")),
    }


def _validation(split: Any) -> str:
    return "test split" if split == "test" else f"{split} of train"


def summary_table(output_path: Path, tags: list[str] | None = None) -> pd.DataFrame:
    """Rows of every run folder under output_path (with one of `tags`, when given), sorted by max valid accuracy
    (best first, runs without last)."""
    rows = [row for d in sorted(output_path.iterdir()) if d.is_dir() and (row := run_row(d))] \
        if output_path.is_dir() else []
    if not rows:
        raise UserError(f"no run folders with a summary.json under {output_path} (set --output-path to the config's "
                        f"output_path)")
    if tags:
        rows = [row for row in rows if set(row["tags"]) & set(tags)]
        if not rows:
            raise UserError(f"no run under {output_path} is tagged {' or '.join(tags)}")
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.sort_values("max_valid_acc", ascending=False, na_position="last", kind="stable")


def to_markdown(table: pd.DataFrame) -> str:
    """The table as markdown, losses to 3 decimals and accuracies in percent, as the thesis prints them."""
    def cell(name: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        if name.endswith(("_acc", "_top5")):
            return f"{100 * value:.2f}%"
        if name.endswith("_loss"):
            return f"{value:.3f}"
        if name.endswith("epochs") or name.endswith("_epoch"):
            return str(int(value))
        return str(value).replace("|", "\\|")

    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(n, v) for n, v in zip(columns, row)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the table of local runs, best validation accuracy first.")
    parser.add_argument("--output-path", default=KEYS["output_path"].default,
                        help="folder holding the run folders (default: %(default)s)")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown",
                        help="table format (default: %(default)s)")
    parser.add_argument("--tag", dest="tags", action="extend", nargs="+", default=[], metavar="TAG",
                        help="only runs holding one of these tags, e.g. C-50 or a thesis section 4.2.14")
    parser.add_argument("--with-thesis", action="store_true",
                        help="add the 2020 run of each run's thesis ID: its best valid_acc, its epochs and the "
                             "difference (vs_thesis_acc, this run minus 2020)")
    args = parser.parse_args(argv)
    table = summary_table(Path(args.output_path), args.tags)
    if args.with_thesis:
        from utils.thesis_runs import thesis_columns

        table = table.join(thesis_columns(table["ID"]))
        table["vs_thesis_acc"] = pd.to_numeric(table["max_valid_acc"]) - table["thesis_max_valid_acc"]
    print(to_markdown(table) if args.format == "markdown" else table.to_csv(index=False).rstrip("\n"))
    return 0


if __name__ == "__main__":
    run_main(main)
