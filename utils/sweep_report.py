"""What a sweep leaves behind: the table of trials and the best trial's config as a file `train.py` runs."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from utils.config_schema import SCHEMA
from utils.configuration import dump_yaml
from utils.files import write_text_atomic

log = logging.getLogger("cars")

# The trial's config as Optuna keeps it (user attribute), so that --report writes best.yml on any machine.
CONFIG_ATTR = "config"


def stored_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as the study stores it: without its run name, secrets back to their placeholders."""
    kept = copy.deepcopy(config)
    kept["run_name"] = None
    for key in SCHEMA:
        if key.secret:
            kept[key.name] = key.default
    return kept


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, duration, the drawn values, run status and run folder."""
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params", "user_attrs"))
    frame = frame.drop(columns=[f"user_attrs_{CONFIG_ATTR}"], errors="ignore")
    frame = frame.rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
    if "duration" in frame:
        frame["duration"] = frame["duration"].dt.total_seconds().round(1)
    return frame


def write_best_config(study: optuna.Study, path: Path) -> optuna.trial.FrozenTrial | None:
    """Write the best trial's config to `path` (a header comment says where it comes from); None when no trial
    has completed yet."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        return None
    best = study.best_trial
    config = best.user_attrs.get(CONFIG_ATTR)
    if config is None:
        log.warning("best trial %d holds no config (it was run by another program): no %s written", best.number, path)
        return best
    header = (f"# Best trial {best.number} of study {study.study_name!r}: {best.value:.6g} "
              f"({best.user_attrs.get('metric', 'objective')}); run folder {best.user_attrs.get('run_dir')}\n"
              f"# Written by python -m utils.sweep; train it with: python train.py --config {path}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, header + dump_yaml(config))
    return best


def report(study: optuna.Study, sweep_dir: Path) -> str:
    """The study's trials and best trial as text; writes `trials.csv` and `best.yml` into `sweep_dir`."""
    table = trials_table(study)
    lines = [f"study {study.study_name}: {len(table)} trials"]
    if len(table):
        sweep_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(sweep_dir / "trials.csv", index=False)
        shown = table.drop(columns=["run_dir"], errors="ignore")
        with pd.option_context("display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 40):
            lines.append(shown.to_string(index=False))
        lines.append(f"trials table: {sweep_dir / 'trials.csv'}")
    best = write_best_config(study, sweep_dir / "best.yml")
    if best is None:
        lines.append("no trial has completed yet: no best config")
    else:
        values = ", ".join(f"{k}={v!r}" for k, v in best.params.items())
        lines.append(f"best trial {best.number}: {best.user_attrs.get('metric', 'value')} {best.value:.6g} "
                     f"({values}); run folder {best.user_attrs.get('run_dir')}")
        if (sweep_dir / "best.yml").is_file():
            lines.append(f"best config: {sweep_dir / 'best.yml'} (train it with: python train.py --config "
                         f"{sweep_dir / 'best.yml'})")
    return "\n".join(lines)
