"""`auto`, the default of gpu_augmentations, channels_last and cuda_graphs: on for one CUDA GPU where they apply,
off elsewhere; explicit values kept; an `auto` nobody resolved reads as off."""

from __future__ import annotations

import logging

import pytest
import torch

from datasets.device_augmentation.augmenter import device_augmentation_settings
from models.device_options import AUTO_OPTIONS, resolve_device_options
from models.net_module import NetModule
from models.training_parts import check_hardware
from utils.configuration import validate


def _resolved(one_cuda_gpu: bool = True, **settings) -> dict:
    config = resolve_device_options(validate(settings), one_cuda_gpu, "one CUDA GPU" if one_cuda_gpu else "CPU")
    return {name: config[name] for name in AUTO_OPTIONS}


def test_the_defaults_are_auto_and_turn_everything_on_for_one_cuda_gpu(caplog) -> None:
    assert [validate({})[name] for name in AUTO_OPTIONS] == ["auto"] * 3
    with caplog.at_level(logging.INFO, logger="cars"):
        assert _resolved() == dict.fromkeys(AUTO_OPTIONS, True)
    assert caplog.messages == ["auto device options for one CUDA GPU: gpu_augmentations: true, channels_last: true, "
                               "cuda_graphs: true"]


@pytest.mark.parametrize(("settings", "off", "reason"), [
    ({"precision": "bf16-mixed"}, "cuda_graphs", "precision bf16-mixed"),
    ({"compile": True}, "cuda_graphs", "compile_mode reduce-overhead replays CUDA graphs itself"),
    ({"image_augmentations": {"RandomPerspective": {"p": 0.5}}}, "gpu_augmentations",
     "gpu augmentation 'RandomPerspective' is not supported with gpu_augmentations: true"),
])
def test_auto_leaves_off_on_one_gpu_what_does_not_apply_and_says_why(caplog, settings, off, reason) -> None:
    with caplog.at_level(logging.INFO, logger="cars"):
        resolved = _resolved(**settings)
    assert resolved == {name: name != off for name in AUTO_OPTIONS}
    assert f"{off}: false ({reason})" in caplog.text


def test_auto_keeps_cuda_graphs_with_compile_mode_default_and_explicit_values_as_they_are() -> None:
    assert _resolved(compile=True, compile_mode="default")["cuda_graphs"] is True
    assert _resolved(gpu_augmentations=False, channels_last=False) == {
        "gpu_augmentations": False, "channels_last": False, "cuda_graphs": True}
    assert _resolved(False, channels_last=True) == {"gpu_augmentations": False, "channels_last": True,
                                                    "cuda_graphs": False}


def test_auto_is_off_elsewhere_than_one_cuda_gpu() -> None:
    assert _resolved(False) == dict.fromkeys(AUTO_OPTIONS, False)


def test_check_hardware_resolves_auto_for_this_cpu_and_logs_it(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="cars"):
        config = check_hardware(validate({"accelerator": "cpu", "channels_last": True}))
    assert {name: config[name] for name in AUTO_OPTIONS} == {
        "gpu_augmentations": False, "channels_last": True, "cuda_graphs": False}
    assert "auto device options for CPU: gpu_augmentations: false, cuda_graphs: false" in caplog.text
    if not torch.cuda.is_available():  # accelerator auto finds the CPU here
        assert _options(check_hardware(validate({}))) == [False] * 3


def _options(config: dict) -> list:
    return [config[name] for name in AUTO_OPTIONS]


def test_a_config_nobody_resolved_reads_auto_as_off() -> None:
    """Tests and benchmarks build modules from validated configs: `auto` is a string, which must not count as on."""
    config = validate({})
    module = NetModule.from_config(config, 5, [str(i) for i in range(5)])
    assert (module.hparams.channels_last, module.hparams.cuda_graphs, module.augment) == (False, False, None)
    assert device_augmentation_settings(config) is None
