"""The thesis's series: configs/thesis load and hold the documented recipes; utils.series runs configs one after
another past failures; utils.summary prints the thesis-style table of run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from models.training_parts import build_optimizer, build_scheduler, check_training_parts
from tests.helpers import ROOT, generated_prepared_data, run_module, tiny_config
from utils.configuration import defaults, load_config
from utils.run_params import run_params
from utils.summary import main as summary_main
from utils.summary import summary_table, to_markdown

THESIS_CONFIGS = ROOT / "configs" / "thesis"
# The IDs of the thesis's §4.2 table.
TABLE_IDS = [f"C-{n}" for n in [*range(1, 34), *range(36, 49), 50, 51, 53, 55, 56, 58, 63, 64, 65, 66]]


def test_there_is_one_loadable_config_per_experiment_of_the_thesis_table() -> None:
    assert sorted(p.stem for p in THESIS_CONFIGS.glob("*.yml")) == sorted(TABLE_IDS)
    for experiment in TABLE_IDS:
        config = load_config(str(THESIS_CONFIGS / f"{experiment}.yml"))
        assert config["tags"][0] == experiment and config["description"]
        assert config["architecture"] == "ghost" and config["image_size"] == [227, 227]


@pytest.mark.parametrize("experiment", TABLE_IDS)
def test_every_thesis_config_builds_its_loss_optimizer_and_scheduler(experiment: str) -> None:
    config = load_config(str(THESIS_CONFIGS / f"{experiment}.yml"))
    check_training_parts(config)


def test_c63_lambda_keeps_the_2020_text_and_anneals_the_rate_tenfold_in_67_epochs() -> None:
    config = load_config(str(THESIS_CONFIGS / "C-63.yml"))
    assert "pow(" in config["lr_scheduler_params"]["lr_lambda"]  # as the thesis's run logged it
    optimizer = build_optimizer("AdamW", {"lr": 0.001}, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = build_scheduler("LambdaLR", config["lr_scheduler_params"], optimizer)["scheduler"]
    assert scheduler.lr_lambdas[0](67) == pytest.approx(0.1)


def test_c50_config_gives_the_parameters_listed_for_the_best_model() -> None:
    # Thesis §4.1 lists C-50's parameters; the schema defaults are that recipe too.
    c50 = run_params(load_config(str(THESIS_CONFIGS / "C-50.yml")), "GhostNet", 3041412, runtime="colab")
    assert c50 == run_params(defaults(), "GhostNet", 3041412, runtime="colab")


@pytest.mark.parametrize(("experiment", "key", "value"), [
    ("C-1", "loss_function", "CrossEntropyLoss"),          # §4.2.1
    ("C-2", "normalize", False),                          # §4.2.2: normalization came with C-3
    ("C-3", "normalize", True),
    ("C-9", "convert_to_grayscale", True),                # §4.2.4
    ("C-11", "erase_background", True),                   # §4.2.5
    ("C-14", "optimizer_params", {"lr": 0.001, "weight_decay": 0.2}),  # §4.2.6
    ("C-21", "dropout", 0.5),                             # §4.2.7
    ("C-23", "output_channels", 640),                     # §4.2.8
    ("C-27", "lr_scheduler", "ReduceLROnPlateau"),        # §4.2.9
    ("C-31", "lr_scheduler_params", {"gamma": 0.1, "milestones": [36, 56, 76, 96]}),  # §4.2.10
    ("C-58", "output_channels", 1280),                    # §4.2 table: sanity check
])
def test_thesis_configs_hold_the_recipe_the_sections_describe(experiment: str, key: str, value) -> None:
    assert load_config(str(THESIS_CONFIGS / f"{experiment}.yml"))[key] == value


def write_run(output: Path, name: str, tags: list[str], description: str, valid_acc: float | None) -> None:
    run_dir = output / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yml").write_text(yaml.safe_dump({"tags": tags, "description": description}))
    (run_dir / "summary.json").write_text(json.dumps({
        "epochs_run": 12, "min_train_loss": 1.0641, "min_valid_loss": 1.5213, "max_train_acc": 0.9893,
        "max_valid_acc": valid_acc}))


def test_summary_table_lists_runs_best_valid_accuracy_first(tmp_path: Path, capsys) -> None:
    write_run(tmp_path, "ghost_1", ["C-2", "4.2.1"], "LSCE", 0.0912)
    write_run(tmp_path, "ghost_2", ["C-50", "4.2.14"], "best | model", 0.8379)
    write_run(tmp_path, "ghost_3", [], "", None)
    (tmp_path / "not_a_run").mkdir()
    table = summary_table(tmp_path)
    assert list(table["run"]) == ["ghost_2", "ghost_1", "ghost_3"]
    assert list(table["ID"]) == ["C-50", "C-2", ""]
    markdown = to_markdown(table).splitlines()
    assert markdown[0].startswith("| run | ID | description | epochs | min_train_loss")
    assert markdown[2] == "| ghost_2 | C-50 | best \\| model | 12 | 1.064 | 1.521 | 98.93% | 83.79% |"
    assert markdown[4].endswith("| - |")
    assert summary_main(["--output-path", str(tmp_path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "run,ID,description,epochs,min_train_loss,min_valid_loss,max_train_acc,max_valid_acc"
    assert lines[1].startswith("ghost_2,C-50,best | model,12,") and len(lines) == 4


def test_summary_without_runs_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_module("utils.summary", ["--output-path", str(tmp_path)])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no run folders" in result.stderr


@pytest.mark.slow  # a series of trainings in subprocesses
def test_series_goes_on_after_a_failed_run_and_the_summary_lists_the_runs(tmp_path: Path) -> None:
    data = generated_prepared_data(tmp_path / "data")
    good = tiny_config(tmp_path, data, "good.yml", tags=["C-2"], description="tiny good")
    bad = tiny_config(tmp_path, data, "bad.yml", optimizer="AdamX")
    good_too = tiny_config(tmp_path, data, "good_too.yml", tags=["C-3"], description="tiny second")
    result = run_module("utils.series", [str(good), str(bad), str(good_too), "--set", "num_epochs=1"], timeout=900)
    assert result.returncode == 1, result.stdout + result.stderr
    report = result.stdout.split("=== series report: ")[1].splitlines()
    assert report[0] == "2 ok, 1 failed"
    assert report[1].startswith("ok ") and str(good) in report[1]
    assert report[2].startswith("FAILED (exit 2)") and str(bad) in report[2]
    assert report[3].startswith("ok ") and str(good_too) in report[3]
    runs = sorted((tmp_path / "output").iterdir())
    assert len(runs) == 2 and all(json.loads((r / "summary.json").read_text())["epochs_run"] == 1 for r in runs)
    assert str(runs[0]) in report[1] and str(runs[1]) in report[3]

    table = run_module("utils.summary", ["--output-path", str(tmp_path / "output")])
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()[2:]
    assert len(rows) == 2 and {row.split(" | ")[1] for row in rows} == {"C-2", "C-3"}
    accuracies = [float(row.split(" | ")[-1].rstrip(" |%")) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
