"""The config schema: template and docs agree with it; every config error is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.configuration import (
    KEYS,
    PROJECT_ROOT,
    apply_overrides,
    defaults,
    dump_yaml,
    load_config,
    reference_markdown,
    validate,
)
from utils.errors import ConfigError


def test_template_holds_every_key_with_its_default() -> None:
    template = yaml.safe_load((PROJECT_ROOT / "config_template.yml").read_text())
    assert set(template) == set(KEYS)
    assert template == defaults()


def test_template_values_are_the_best_run_c50() -> None:
    config = defaults()
    assert config["optimizer"] == "AdamW" and config["optimizer_params"] == {"lr": 0.001, "weight_decay": 0.6}
    assert config["lr_scheduler"] == "MultiStepLR"
    assert config["lr_scheduler_params"] == {"gamma": 0.1, "milestones": [67, 82, 95, 107]}
    assert (config["dropout"], config["output_channels"], config["batch_size"]) == (0.2, 320, 64)
    assert config["crop_to_bboxes"] is False and config["augment_tensors"] is False
    assert list(config["image_augmentations"]) == ["RandomHorizontalFlip", "RandomAffine", "ColorJitter"]


def test_configuration_reference_doc_is_generated_from_the_schema() -> None:
    doc = (PROJECT_ROOT / "documentation" / "configuration.md").read_text()
    assert doc.strip() == reference_markdown().strip(), "run: python -m utils.configuration --markdown"


def test_unknown_key_suggests_the_closest_valid_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'batchsize'.*did you mean 'batch_size'"):
        validate({"batchsize": 32})


@pytest.mark.parametrize("key, value, expected", [
    ("batch_size", "64", "a positive integer"),
    ("normalize", "yes", "true or false"),
    ("image_size", [227], "two positive integers"),
    ("dropout", 1.5, r"\[0, 1\)"),
    ("neptune_mode", "online", "'async', 'offline', 'debug'"),
    ("precision", "fp16", "bf16-mixed"),
])
def test_wrong_type_names_the_key_and_what_is_expected(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key} in config is .*expected .*{expected}"):
        validate({key: value})


def test_normalization_params_of_the_wrong_length_are_rejected() -> None:
    with pytest.raises(ConfigError, match="normalization_params_rgb .* needs 3 mean and 3 std"):
        validate({"normalization_params_rgb": {"mean": [0.5], "std": [0.2]}})
    with pytest.raises(ConfigError, match="normalization_params_grayscale .* needs 1 mean"):
        validate({"normalization_params_grayscale": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}})


def test_set_overrides_parse_yaml_and_reach_nested_values() -> None:
    config = apply_overrides(defaults(), ["optimizer_params.lr=0.01", "image_size=[64, 64]", "lr_scheduler=null"])
    assert config["optimizer_params"] == {"lr": 0.01, "weight_decay": 0.6}
    assert config["image_size"] == [64, 64] and config["lr_scheduler"] is None
    with pytest.raises(ConfigError, match="unknown key 'optimiser_params'.*'optimizer_params'"):
        apply_overrides(defaults(), ["optimiser_params.lr=0.1"])
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        apply_overrides(defaults(), ["num_epochs"])


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("batch_size: 64\nimage_size: [227, 227\n")
    with pytest.raises(ConfigError, match=r"bad.yml is not valid YAML at line \d"):
        load_config(str(bad))


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file .*nope.yml' does not exist"):
        load_config(str(tmp_path / "nope.yml"))


def test_template_is_read_when_config_yml_is_missing(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)  # the suite runs without local settings (CARS_LOCAL_CONFIG empty, conftest.py)
    with caplog.at_level("WARNING", logger="cars"):
        config = load_config(None)
    assert config == defaults()
    assert "config_template.yml" in caplog.text


def test_secrets_are_masked_when_dumped() -> None:
    config = validate({"neptune_api_token": "abc123secret"})
    text = dump_yaml(config)
    assert "abc123secret" not in text and "neptune_api_token: '***'" in text


def test_a_leading_tilde_in_path_keys_is_the_home_folder(monkeypatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    config = validate({"stanford_data_path": "~/cars", "output_path": "~/runs", "cache_dir": None})
    assert config["stanford_data_path"] == "/home/someone/cars" and config["output_path"] == "/home/someone/runs"
    assert config["cache_dir"] is None
    assert config["stanford_raw_data_path"].startswith("<")  # a placeholder stays one, to be reported as unset


def test_a_file_system_error_is_one_line_naming_the_path(capsys) -> None:
    from utils.cli import run_main

    def full_disk(argv: list[str] | None) -> int:
        raise OSError(28, "No space left on device", "/runs/C-50/last.ckpt")

    with pytest.raises(SystemExit) as exited:
        run_main(full_disk, [])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: No space left on device: /runs/C-50/last.ckpt\n"


def test_an_os_error_without_errno_is_a_bug_and_keeps_its_traceback() -> None:
    from utils.cli import run_main

    def bug(argv: list[str] | None) -> int:
        raise OSError("something odd")

    with pytest.raises(OSError, match="something odd"):
        run_main(bug, [])


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    from utils.configuration import read_yaml

    path = tmp_path / "latin1.yml"
    path.write_bytes("description: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yml is not UTF-8 text .*save it as UTF-8"):
        read_yaml(path)


LOCAL_SETTINGS = {
    "stanford_data_path": "/data/stanford", "output_path": "/runs", "log_to_mlflow": False, "log_to_neptune": True,
    "neptune_mode": "offline", "accelerator": "cpu", "num_workers": 3,
    "batch_size": 32, "early_stopping_patience": 7,  # recipe keys: C-50 names batch_size, not the patience
}


def with_local_settings(folder: Path, monkeypatch) -> Path:
    """A user's config.yml in `folder`, made the current folder (and read: CARS_LOCAL_CONFIG unset)."""
    monkeypatch.delenv("CARS_LOCAL_CONFIG", raising=False)
    (folder / "config.yml").write_text(yaml.safe_dump(LOCAL_SETTINGS))
    monkeypatch.chdir(folder)
    return folder / "config.yml"


def test_a_thesis_recipe_applies_on_top_of_the_local_settings_and_set_on_top_of_both(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    from utils.configuration import resolve_config

    with_local_settings(tmp_path, monkeypatch)
    recipe = PROJECT_ROOT / "configs" / "thesis" / "C-40.yml"
    resolved = resolve_config(str(recipe), ["num_epochs=3", "optimizer_params.lr=0.01"])
    config = resolved.config
    # config.yml: where the data is, what is logged, the hardware
    assert (config["stanford_data_path"], config["output_path"]) == ("/data/stanford", "/runs")
    assert (config["log_to_mlflow"], config["log_to_neptune"], config["neptune_mode"]) == (False, True, "offline")
    assert (config["accelerator"], config["num_workers"]) == ("cpu", 3)
    # the recipe wins over config.yml for the keys it names; config.yml keeps the ones it does not
    assert config["batch_size"] == 64 and config["tags"] == ["C-40", "4.2.11"]
    assert config["lr_scheduler"] == "ReduceLROnPlateau" and config["early_stopping_patience"] == 7
    # --set wins over both, a dotted key changing one value of the recipe's mapping
    assert config["num_epochs"] == 3 and config["optimizer_params"] == {"lr": 0.01, "weight_decay": 0.7}
    # keys nobody named keep the schema's defaults
    assert config["seed"] == 42 and config["valid_batch_size"] is None
    assert resolved.layers == ["config.yml", str(recipe), "--set"]
    assert resolved.sources["stanford_data_path"] == "config.yml" and resolved.sources["batch_size"] == str(recipe)
    assert resolved.sources["optimizer_params"] == "--set" and resolved.local == "config.yml"


def test_no_local_config_runs_the_recipe_on_the_schema_defaults_alone(tmp_path: Path, monkeypatch) -> None:
    with_local_settings(tmp_path, monkeypatch)
    recipe = str(PROJECT_ROOT / "configs" / "thesis" / "C-40.yml")
    config = load_config(recipe, local=False)
    assert config == load_config(recipe, local=False) and config["stanford_data_path"] == "input/stanford"
    assert config["log_to_mlflow"] is True and config["early_stopping_patience"] is None
    assert config["optimizer_params"]["weight_decay"] == 0.7
    # without --config, config.yml alone is read, as before
    assert load_config(None)["batch_size"] == 32


def test_an_error_in_the_local_settings_names_config_yml(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "config.yml").write_text("num_workers: many\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CARS_LOCAL_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="num_workers in config.yml is 'many'"):
        load_config(str(PROJECT_ROOT / "configs" / "thesis" / "C-50.yml"))


def test_print_config_names_the_file_of_each_key_that_differs_from_its_default(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    from tests.helpers import run_train

    with_local_settings(tmp_path, monkeypatch)
    recipe = PROJECT_ROOT / "configs" / "thesis" / "C-40.yml"
    result = run_train(["--config", str(recipe), "--set", "num_epochs=3", "--print-config"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"# layers, later ones win: schema defaults < config.yml < {recipe} < --set"
    assert "stanford_data_path: /data/stanford  # from config.yml" in lines
    assert f"tags: [C-40, 4.2.11]  # from {recipe}" in lines
    assert "num_epochs: 3  # from --set" in lines
    assert "batch_size: 64" in lines and "seed: 42" in lines  # the default values carry no source
    assert yaml.safe_load(result.stdout) == load_config(str(recipe), ["num_epochs=3"])  # still a config file


def test_training_warns_when_config_yml_sets_recipe_keys_the_recipe_leaves_to_it(tmp_path: Path, monkeypatch,
                                                                                 caplog) -> None:
    from train import _report_layers
    from utils.configuration import resolve_config

    with_local_settings(tmp_path, monkeypatch)
    with caplog.at_level("INFO", logger="cars"):
        _report_layers(resolve_config(str(PROJECT_ROOT / "configs" / "thesis" / "C-50.yml")))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "config.yml sets early_stopping_patience, which" in warnings[0]
    assert "batch_size" not in warnings[0] and "num_workers" not in warnings[0]  # named by C-50 / not recipe keys


def test_cars_local_config_names_the_local_settings_or_none(tmp_path: Path, monkeypatch) -> None:
    """CARS_LOCAL_CONFIG: a file read as config.yml would be, empty for no local settings, one line for a typo."""
    from utils.configuration import resolve_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yml").write_text(yaml.safe_dump({"num_epochs": 7}))
    (tmp_path / "mine.yml").write_text(yaml.safe_dump({"num_epochs": 3}))
    recipe = str(PROJECT_ROOT / "configs" / "thesis" / "C-50.yml")
    monkeypatch.setenv("CARS_LOCAL_CONFIG", "")
    assert load_config(None)["num_epochs"] == defaults()["num_epochs"]
    monkeypatch.setenv("CARS_LOCAL_CONFIG", str(tmp_path / "mine.yml"))
    assert load_config(None)["num_epochs"] == 3
    assert resolve_config(recipe).local is not None
    monkeypatch.delenv("CARS_LOCAL_CONFIG")
    assert load_config(None)["num_epochs"] == 7
    monkeypatch.setenv("CARS_LOCAL_CONFIG", str(tmp_path / "nope.yml"))
    with pytest.raises(ConfigError, match="CARS_LOCAL_CONFIG=.*nope.yml' names no file"):
        load_config(None)
