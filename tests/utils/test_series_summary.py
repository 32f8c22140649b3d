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
from utils.summary import COLUMNS, summary_table, to_markdown
from utils.summary import main as summary_main

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


def write_run(output: Path, name: str, tags: list[str], description: str, valid_acc: float | None,
              **more: object) -> None:
    run_dir = output / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yml").write_text(yaml.safe_dump({"tags": tags, "description": description}))
    (run_dir / "summary.json").write_text(json.dumps({
        "epochs_run": 12, "min_train_loss": 1.0641, "min_valid_loss": 1.5213, "max_train_acc": 0.9893,
        "max_valid_acc": valid_acc, **more}))


def test_summary_table_lists_runs_best_valid_accuracy_first(tmp_path: Path, capsys) -> None:
    write_run(tmp_path, "ghost_1", ["C-2", "4.2.1"], "LSCE", 0.0912)
    write_run(tmp_path, "ghost_2", ["C-50", "4.2.14"], "best | model", 0.8379, max_valid_acc_epoch=9,
              best_checkpoint_epoch=7, best_checkpoint_valid_acc=0.8123)
    write_run(tmp_path, "ghost_4", [], "held out", 0.5, max_valid_acc_epoch=3, best_checkpoint_epoch=3,
              best_checkpoint_valid_acc=0.5, test_acc=0.4567, test_top5=0.75, validation_split=0.1)
    write_run(tmp_path, "ghost_3", [], "", None)
    (tmp_path / "not_a_run").mkdir()
    table = summary_table(tmp_path)
    assert list(table["run"]) == ["ghost_2", "ghost_4", "ghost_1", "ghost_3"]
    assert list(table["ID"]) == ["C-50", "", "C-2", ""]
    markdown = to_markdown(table).splitlines()
    assert markdown[0].startswith("| run | ID | description | epochs | status | min_train_loss")
    assert markdown[2] == ("| ghost_2 | C-50 | best \\| model | 12 | finished | 1.064 | 1.521 | 98.93% | 83.79% | 9 | 7 | 81.23% "
                           "| - | - | test split |")
    assert markdown[3].endswith("| 3 | 3 | 50.00% | 45.67% | 75.00% | 0.1 of train |")
    assert markdown[5].endswith("| - | - | - | - | - | - | test split |")
    assert summary_main(["--output-path", str(tmp_path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("run,ID,description,epochs,status,min_train_loss,min_valid_loss,max_train_acc,max_valid_acc,"
                        "max_valid_acc_epoch,best_checkpoint_epoch,best_checkpoint_valid_acc,test_acc,test_top5,"
                        "validation")
    assert lines[1].startswith("ghost_2,C-50,best | model,12,finished,") and len(lines) == 5


def test_summary_without_runs_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_module("utils.summary", ["--output-path", str(tmp_path)])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no run folders" in result.stderr


@pytest.mark.slow  # a series of trainings in subprocesses
def test_series_goes_on_after_a_failed_run_skips_finished_runs_when_rerun_and_ends_with_a_table(tmp_path: Path
                                                                                                 ) -> None:
    data = generated_prepared_data(tmp_path / "data")
    good = tiny_config(tmp_path, data, "good.yml", tags=["C-2"], description="tiny good")
    bad = tiny_config(tmp_path, data, "bad.yml", optimizer="AdamX")
    # the same recipe as good.yml under another id (as C-26..C-29 share one): a training of its own
    good_too = tiny_config(tmp_path, data, "good_too.yml", tags=["C-3"], description="tiny second")
    series = [str(good), str(bad), str(good_too), "--set", "num_epochs=1", "--no-local-config"]
    result = run_module("utils.series", series, timeout=900)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "=== series of 3 trainings (0 finished before, 0 to resume):" in result.stdout
    report = result.stdout.split("=== series report: ")[1].splitlines()
    assert report[0] == "2 ok, 0 skipped (finished before), 1 failed"
    assert report[1].startswith("ok ") and str(good) in report[1]
    assert report[2].startswith("FAILED (exit 2)") and str(bad) in report[2]
    assert report[3].startswith("ok ") and str(good_too) in report[3]
    runs = sorted((tmp_path / "output").iterdir())
    assert len(runs) == 2 and all(json.loads((r / "summary.json").read_text())["epochs_run"] == 1 for r in runs)
    assert str(runs[0]) in report[1] and str(runs[1]) in report[3]
    table = report[4:]  # the results table closes the series
    assert table[0].startswith("| run | ID | description | epochs | status |") and len(table) == 4
    assert {row.split(" | ")[1] for row in table[2:]} == {"C-2", "C-3"}
    assert all(row.split(" | ")[4] == "finished" for row in table[2:])

    again = run_module("utils.series", series, timeout=900)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "=== series of 3 trainings (2 finished before, 0 to resume):" in again.stdout
    report = again.stdout.split("=== series report: ")[1].splitlines()
    assert report[0] == "0 ok, 2 skipped (finished before), 1 failed"
    assert report[1].startswith("skipped ") and str(runs[0]) in report[1]
    assert report[3].startswith("skipped ") and str(runs[1]) in report[3]
    assert sorted((tmp_path / "output").iterdir()) == runs  # nothing trained again

    listed = run_module("utils.summary", ["--output-path", str(tmp_path / "output")])
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()[2:]
    assert len(rows) == 2 and {row.split(" | ")[1] for row in rows} == {"C-2", "C-3"}
    column = COLUMNS.index("max_valid_acc")  # the first cell keeps the row's leading "| "
    accuracies = [float(row.split(" | ")[column].rstrip(" |%")) for row in rows]
    assert {row.split(" | ")[-1] for row in rows} == {"test split |"}
    assert accuracies == sorted(accuracies, reverse=True)


def fake_run(output: Path, name: str, config: dict, epochs: int, status: str | None = None,
             last_ckpt: bool = True) -> Path:
    """A run folder as train.py leaves it: config.yml, metrics.csv of `epochs` epochs, last.ckpt, summary.json."""
    from utils.configuration import dump_yaml

    run_dir = output / name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yml").write_text(dump_yaml(config))
    rows = "".join(f"{e},1.0,0.5,1.0,0.5,0.001,1.0\n" for e in range(epochs))
    (run_dir / "metrics.csv").write_text("epoch,train_loss,train_acc,valid_loss,valid_acc,lr,epoch_time_s\n" + rows)
    if last_ckpt:
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    if status:
        (run_dir / "summary.json").write_text(json.dumps({"status": status, "epochs_run": epochs}))
    return run_dir


def test_series_plan_skips_done_runs_resumes_stopped_ones_and_tells_recipes_apart_by_tags(tmp_path: Path) -> None:
    from utils.series import plan

    recipe = tmp_path / "C-45.yml"
    recipe.write_text(yaml.safe_dump({"tags": ["C-45", "4.2.13"], "num_epochs": 4,
                                      "output_path": str(tmp_path / "out")}))
    config = load_config(str(recipe), local=False)
    out = tmp_path / "out"
    assert plan(str(recipe), [], False).action == "new"
    stopped = fake_run(out, "ghost_1", config, epochs=2, status="interrupted")
    fake_run(out, "ghost_2", {**config, "tags": ["C-46", "4.2.13"]}, epochs=4, status="finished")  # another id
    fake_run(out, "ghost_3", {**config, "dropout": 0.5}, epochs=4, status="finished")  # another recipe
    planned = plan(str(recipe), [], False)
    assert (planned.action, planned.run_dir, planned.label) == ("resume", stopped, "C-45")
    assert plan(str(recipe), ["num_epochs=2"], False).action == "skip"  # all its epochs are run
    (stopped / "summary.json").write_text(json.dumps({"status": "early_stopped"}))
    assert plan(str(recipe), [], False).action == "skip"
    assert plan(str(recipe), ["dropout=0.3"], False).action == "new"
    broken = tmp_path / "broken.yml"
    broken.write_text("num_epochs: many\n")
    assert plan(str(broken), [], False).action == "error"


def test_series_takes_thesis_ids_and_sections(capsys) -> None:
    from utils.errors import ConfigError
    from utils.series import main as series_main
    from utils.series import select_configs

    def stems(paths: list[str]) -> list[str]:
        return [Path(p).stem for p in paths]

    assert stems(select_configs([], ["C-41", "c-40"], [])) == ["C-41", "C-40"]
    assert stems(select_configs([], [], ["4.2.13"])) == ["C-45", "C-46", "C-47", "C-48"]
    assert stems(select_configs([], ["C-45"], ["4.2.13"])) == ["C-45", "C-46", "C-47", "C-48"]  # each once
    assert len(select_configs([], [], ["4.2"])) == len(TABLE_IDS)
    with pytest.raises(ConfigError, match="experiment id 'C-34' is not in .*did you mean"):
        select_configs([], ["C-34"], [])
    with pytest.raises(ConfigError, match="--section 4.2.99: no config .* sections: 4.2.1, 4.2.2, "):
        select_configs([], [], ["4.2.99"])
    assert series_main(["--ids", "C-40,C-41", "--section", "4.2.13", "--dry-run", "--no-local-config",
                        "--set", "output_path=/nonexistent/series"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "=== series of 6 trainings (0 finished before, 0 to resume):"
    assert [line.split()[0] for line in printed[1:]] == ["C-40", "C-41", "C-45", "C-46", "C-47", "C-48"]
    assert all(line.endswith("(new run)") for line in printed[1:])


def test_summary_shows_each_run_status_and_filters_by_tag(tmp_path: Path, capsys) -> None:
    write_run(tmp_path, "ghost_1", ["C-45", "4.2.13"], "a", 0.5)
    write_run(tmp_path, "ghost_2", ["C-50", "4.2.14"], "b", 0.8)
    write_run(tmp_path, "ghost_3", ["C-51", "4.2.14"], "c", 0.7)
    for name, status in (("ghost_1", "failed"), ("ghost_2", "early_stopped"), ("ghost_3", "interrupted")):
        path = tmp_path / name / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "status": status}))
    assert summary_main(["--output-path", str(tmp_path), "--tag", "4.2.14"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [(row.split(" | ")[1], row.split(" | ")[4]) for row in rows] == [("C-50", "early_stopped"),
                                                                            ("C-51", "interrupted")]
    table = summary_table(tmp_path, ["C-45"])
    assert list(table["status"]) == ["failed"]
    from utils.errors import UserError

    with pytest.raises(UserError, match="no run under .* is tagged C-99"):
        summary_table(tmp_path, ["C-99"])


@pytest.mark.slow
def test_a_rerun_series_resumes_its_stopped_run_in_the_same_folder(tmp_path: Path) -> None:
    data = generated_prepared_data(tmp_path / "data")
    config = tiny_config(tmp_path, data, "c.yml", tags=["C-2"], num_epochs=2)
    first = run_module("utils.series", [str(config), "--no-local-config", "--set", "num_epochs=1"], timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    (run_dir,) = (tmp_path / "output").iterdir()
    # the run as a lost session leaves it: one epoch of two done, no summary.json
    (run_dir / "summary.json").unlink()
    again = run_module("utils.series", [str(config), "--no-local-config"], timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"(resume {run_dir})" in again.stdout
    report = again.stdout.split("=== series report: ")[1].splitlines()
    assert report[0] == "1 ok, 0 skipped (finished before), 0 failed" and report[1].startswith("ok (resumed)")
    assert list((tmp_path / "output").iterdir()) == [run_dir]
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2
