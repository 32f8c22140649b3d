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
    monkeypatch.chdir(tmp_path)
    if (PROJECT_ROOT / "config.yml").exists():
        pytest.skip("a config.yml exists in the project root")
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
