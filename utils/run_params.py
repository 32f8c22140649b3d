"""The run's parameter set as the 2020 runs logged it to Neptune (thesis §4.1), built from the config and model.

The names and the None rules are those of the 2020 records: a setting that is switched off is logged as None
(normalization parameters of the colour mode not used, augmentations when their switch is off, scheduler
parameters without a scheduler), and `weight_decay` is 0.0 when the optimizer is given none.
"""

from __future__ import annotations

import os
import sys
from typing import Any

PARAM_NAMES = (
    "runtime", "architecture", "num_params", "img_size", "grayscale", "normalize", "norm_params_rgb",
    "norm_params_gray", "crop_to_bboxes", "erase_background", "augment_images", "image_augmentations",
    "augment_tensors", "tensor_augmentations", "batch_size", "max_num_epochs", "dropout", "out_channels",
    "loss_function", "loss_params", "optimizer", "learning_rate", "weight_decay", "all_optimizer_params",
    "lr_scheduler", "lr_scheduler_params",
)


def detect_runtime() -> str:
    """'colab' inside Google Colab, else 'local' (the 2020 dashboard's runtime column)."""
    in_colab = "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ
    return "colab" if in_colab else "local"


def run_params(config: dict[str, Any], architecture: str, num_params: int, runtime: str | None = None
               ) -> dict[str, Any]:
    """The 2020 parameter set of a run, in 2020's order.

    Args:
        config: a validated config (`utils.configuration.load_config`).
        architecture: the network's class name (e.g. GhostNet), as 2020 logged it.
        num_params: the network's number of parameters.
        runtime: 'local' or 'colab'; None detects it.
    """
    grayscale, normalize = config["convert_to_grayscale"], config["normalize"]
    optimizer_params = dict(config["optimizer_params"] or {})
    scheduler = config["lr_scheduler"]
    params = {
        "runtime": runtime or detect_runtime(),
        "architecture": architecture,
        "num_params": int(num_params),
        "img_size": list(config["image_size"]),
        "grayscale": grayscale,
        "normalize": normalize,
        "norm_params_rgb": config["normalization_params_rgb"] if normalize and not grayscale else None,
        "norm_params_gray": config["normalization_params_grayscale"] if normalize and grayscale else None,
        "crop_to_bboxes": config["crop_to_bboxes"],
        "erase_background": config["erase_background"],
        "augment_images": config["augment_images"],
        "image_augmentations": config["image_augmentations"] if config["augment_images"] else None,
        "augment_tensors": config["augment_tensors"],
        "tensor_augmentations": config["tensor_augmentations"] if config["augment_tensors"] else None,
        "batch_size": config["batch_size"],
        "max_num_epochs": config["num_epochs"],
        "dropout": config["dropout"],
        "out_channels": config["output_channels"],
        "loss_function": config["loss_function"],
        "loss_params": config["loss_params"],
        "optimizer": config["optimizer"],
        "learning_rate": optimizer_params.get("lr"),
        "weight_decay": optimizer_params.get("weight_decay", 0.0),
        "all_optimizer_params": optimizer_params,
        "lr_scheduler": scheduler,
        "lr_scheduler_params": config["lr_scheduler_params"] if scheduler else None,
    }
    assert tuple(params) == PARAM_NAMES
    return params


def param_text(value: Any) -> str:
    """A parameter as text, written as 2020's dashboard showed it: None, True, {'lr': 0.001}."""
    return str(value)
