"""Every configs/thesis/C-*.yml against the 2020 run it was written from (configs/thesis/runs_2020.json): each
parameter the run logged, as today's run would log it, and the logged num_params against the network the config
builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.net_module import NetModule
from tests.helpers import ROOT
from utils.configuration import load_config
from utils.run_params import PARAM_NAMES, param_text, run_params
from utils.thesis_runs import RUNS_FILE, parse_published, thesis_runs
from utils.trackers import architecture_name

THESIS_CONFIGS = ROOT / "configs" / "thesis"
PUBLISHED = ROOT.parent / "shared" / "reference" / "all_experiments.txt"
NUM_CLASSES = 196
IDS = sorted((p.stem for p in THESIS_CONFIGS.glob("C-*.yml")), key=lambda s: int(s.split("-")[1]))


def test_the_data_file_names_its_source_and_holds_one_run_per_thesis_config() -> None:
    data = json.loads(RUNS_FILE.read_text(encoding="utf-8"))
    assert "all_experiments.txt" in data["source"] and "2020" in data["source"]
    assert sorted(run["id"] for run in data["runs"]) == sorted(IDS)
    assert len(IDS) == 56


@pytest.mark.skipif(not PUBLISHED.is_file(), reason="the 2020 published results file is not beside the project")
def test_the_data_file_is_what_the_published_results_file_gives() -> None:
    published = parse_published(PUBLISHED.read_text(encoding="utf-8"))
    assert published == json.loads(RUNS_FILE.read_text(encoding="utf-8"))["runs"]


def test_c50_record_is_the_best_model_of_the_thesis() -> None:
    # thesis §4.2: C-50 reached 83.79 % top-1 (3,041,412 parameters at output_channels 320)
    c50 = thesis_runs()["C-50"]
    assert c50.name == "ghost_20200922060810"
    assert round(100 * c50.max_valid_acc, 2) == 83.79
    assert c50.params["num_params"] == 3041412
    assert list(c50.metrics.columns) == ["epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr"]
    assert list(c50.metrics["epoch"]) == list(range(c50.epochs))


_built: dict[tuple, tuple[str, int]] = {}


def built_network(config: dict) -> tuple[str, int]:
    """(class name, parameter count) of the network the config builds for the 196 classes; the same network
    settings are built once."""
    key = (config["architecture"], config["convert_to_grayscale"], config["output_channels"], config["dropout"])
    if key not in _built:
        model = NetModule.from_config(config, NUM_CLASSES, [f"class {i}" for i in range(NUM_CLASSES)])
        _built[key] = (architecture_name(model), model.num_params)
    return _built[key]


@pytest.mark.parametrize("experiment", IDS)
def test_thesis_config_gives_the_parameters_its_2020_run_logged(experiment: str) -> None:
    record = thesis_runs()[experiment]
    config = load_config(str(THESIS_CONFIGS / f"{experiment}.yml"))
    architecture, num_params = built_network(config)
    ours = run_params(config, architecture, num_params, runtime=record.params["runtime"])
    assert set(record.params) == set(PARAM_NAMES)
    for name in PARAM_NAMES:
        logged = record.params[name]
        if isinstance(logged, float):
            assert float(ours[name]) == pytest.approx(logged, rel=1e-9), name
        else:
            assert param_text(ours[name]) == str(logged), name


def test_a_changed_config_value_is_found(tmp_path: Path) -> None:
    """The field-by-field comparison above notices one changed augmentation value."""
    text = (THESIS_CONFIGS / "C-50.yml").read_text(encoding="utf-8").replace("shear: 8", "shear: 9")
    (tmp_path / "C-50.yml").write_text(text, encoding="utf-8")
    config = load_config(str(tmp_path / "C-50.yml"))
    ours = run_params(config, "GhostNet", 3041412, runtime="colab")
    assert param_text(ours["image_augmentations"]) != thesis_runs()["C-50"].params["image_augmentations"]
