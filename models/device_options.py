"""The device speed options that default to `auto` (`gpu_augmentations`, `channels_last`, `cuda_graphs`), resolved
to true or false for the hardware a run trains on.

`auto` turns an option on for a run on one CUDA GPU where it applies, and off on the CPU, on other accelerators,
for several processes (DDP) and where it does not apply. `check_hardware` calls `resolve_device_options` once
Lightning has said what the hardware is; train.py then builds everything from the resolved config and writes it to
the run's config.yml. Code that builds from a config nobody resolved (tests, benchmarks) reads an `auto` left
there as off: the consumers test for `is True`.
"""

from __future__ import annotations

import logging
from typing import Any

from utils.errors import ConfigError

log = logging.getLogger("cars")

AUTO_OPTIONS = ("gpu_augmentations", "channels_last", "cuda_graphs")

# torch.compile's modes that replay CUDA graphs (max-autotune does too, unlike max-autotune-no-cudagraphs).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def _device_augmentations_unsupported(config: dict[str, Any]) -> str | None:
    """Why the configured augmentations cannot run on the device (an unsupported transform, say), or None."""
    from datasets.device_augmentation.augmenter import DeviceAugmenter, device_augmentation_settings

    settings = device_augmentation_settings({**config, "gpu_augmentations": True})
    try:
        augmenter = DeviceAugmenter(settings["image"], settings["tensor"])
        augmenter.draw((1, 1 if config["convert_to_grayscale"] else 3, *config["image_size"]))
    except ConfigError as error:
        return str(error.args[0]).split(" (did you mean")[0].split("; valid names")[0][:150]
    return None


def _graphs_unsupported(config: dict[str, Any]) -> str | None:
    """Why the training step cannot be one CUDA graph with these settings, or None."""
    if str(config["precision"]) not in ("32-true", "32"):
        return f"precision {config['precision']}"
    if config["compile"] and config["compile_mode"] in CUDA_GRAPH_MODES:
        return f"compile_mode {config['compile_mode']} replays CUDA graphs itself"
    return None


def resolve_device_options(config: dict[str, Any], one_cuda_gpu: bool, hardware: str) -> dict[str, Any]:
    """`config` with each option of AUTO_OPTIONS that is `auto` set to true or false; one log line says what auto
    chose and why. `one_cuda_gpu`: the run trains in one process on one CUDA GPU; `hardware` names it for the log."""
    asked = [name for name in AUTO_OPTIONS if config[name] == "auto"]
    if not asked:
        return config
    why_off = {name: None if one_cuda_gpu else f"not one CUDA GPU: {hardware}" for name in asked}
    if one_cuda_gpu and "gpu_augmentations" in asked:
        why_off["gpu_augmentations"] = _device_augmentations_unsupported(config)
    if one_cuda_gpu and "cuda_graphs" in asked:
        why_off["cuda_graphs"] = _graphs_unsupported(config)
    resolved = {**config, **{name: why_off[name] is None for name in asked}}
    choices = [f"{name}: {'true' if why_off[name] is None else 'false'}"
               + (f" ({why_off[name]})" if why_off[name] and one_cuda_gpu else "") for name in asked]
    log.info("auto device options for %s: %s", hardware, ", ".join(choices))
    return resolved
