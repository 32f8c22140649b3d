"""Loss, optimizer and scheduler looked up by the names the config gives them."""

from __future__ import annotations

import inspect
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from models.device_options import CUDA_GRAPH_MODES, resolve_device_options
from models.label_smoothing_ce import LabelSmoothingCrossEntropy
from utils.configuration import unknown_name_message
from utils.errors import ConfigError

CUSTOM_LOSSES = {"LabelSmoothingCrossEntropy": LabelSmoothingCrossEntropy}


def _classes(module: Any, base: type) -> dict[str, type]:
    return {name: obj for name, obj in vars(module).items()
            if inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not name.startswith("_")}


def loss_classes() -> dict[str, type]:
    return {**_classes(torch.nn, torch.nn.modules.loss._Loss), **CUSTOM_LOSSES}


def optimizer_classes() -> dict[str, type]:
    return _classes(torch.optim, torch.optim.Optimizer)


def scheduler_classes() -> dict[str, type]:
    classes = _classes(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
    classes["ReduceLROnPlateau"] = torch.optim.lr_scheduler.ReduceLROnPlateau
    for helper in ("LRScheduler", "SequentialLR", "ChainedScheduler"):
        classes.pop(helper, None)  # these wrap other schedulers and cannot be built from plain parameters
    return classes


def _lookup(kind: str, name: str, classes: dict[str, type], where: str) -> type:
    if name not in classes:
        raise ConfigError(unknown_name_message(kind, name, list(classes), where))
    return classes[name]


def check_training_parts(config: dict[str, Any]) -> None:
    """Fail early, before any data is read or any run folder made: an unknown architecture, an image size it cannot
    take, or a loss, optimizer or scheduler that cannot be built from its name and parameters."""
    from models.arch_dict import get_architectures_dictionary, min_image_size

    architectures = list(get_architectures_dictionary())
    _lookup("architecture", config["architecture"], dict.fromkeys(architectures), "in models/arch_dict.py")
    minimum = min_image_size(config["architecture"])
    if min(config["image_size"]) < minimum:
        raise ConfigError(f"image_size {config['image_size']} is too small for architecture "
                          f"{config['architecture']!r}: it needs at least [{minimum}, {minimum}]")
    if config["batch_size"] < 2:
        raise ConfigError("batch_size is 1; batch norm (in every network of models/arch_dict.py) cannot train on one "
                          "image per batch: use at least 2")
    loss = build_loss(config["loss_function"], config["loss_params"])
    try:  # a training step gives the loss logits (batch, classes) and class ids (batch,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. MSELoss's broadcasting warning, before its error
            loss(torch.randn(2, 3), torch.tensor([0, 2])).item()
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise ConfigError(f"loss_function {config['loss_function']} cannot take logits (batch, classes) and class "
                          f"ids (batch,), as training gives it ({' '.join(str(error).split())[:150]})") from None
    probe = build_optimizer(config["optimizer"], config["optimizer_params"], [torch.nn.Parameter(torch.zeros(1))])
    build_scheduler(config["lr_scheduler"], config["lr_scheduler_params"], probe)


HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "sync_batchnorm")


def check_hardware(config: dict[str, Any]) -> dict[str, Any]:
    """Settings the chosen hardware cannot run, reported before anything starts: Lightning's own checks of
    accelerator, devices, strategy and precision run on a throwaway Trainer (it starts no process). Returns the
    config with the device options left at `auto` resolved for this hardware (`models/device_options.py`)."""
    import logging

    import pytorch_lightning as pl
    from pytorch_lightning.accelerators import CUDAAccelerator

    if config["cuda_graphs"] is True:
        if str(config["precision"]) not in ("32-true", "32"):
            raise ConfigError(f"cuda_graphs: true runs with precision 32-true only, got {config['precision']!r} "
                              "(autocast's cache cannot be captured in a CUDA graph)")
        if config["compile"] and config["compile_mode"] in CUDA_GRAPH_MODES:
            raise ConfigError(f"cuda_graphs: true with compile_mode {config['compile_mode']!r} would replay CUDA "
                              "graphs inside CUDA graphs: set compile_mode: default (or cuda_graphs: false)")
    on_cpu = config["accelerator"] == "cpu" or (config["accelerator"] == "auto" and not torch.cuda.is_available())
    if config["sync_batchnorm"] and on_cpu:
        raise ConfigError("sync_batchnorm: true needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU)")
    if config["cuda_graphs"] is True and (on_cpu or config["accelerator"] == "mps"):
        raise ConfigError("cuda_graphs: true needs a CUDA GPU (set cuda_graphs: false to train on this machine)")
    lightning_log = logging.getLogger("pytorch_lightning")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # the real Trainer prints the same "GPU available" lines right after
    try:
        trainer = pl.Trainer(**{key: config[key] for key in HARDWARE_KEYS}, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
    except Exception as error:  # noqa: BLE001 - Lightning raises MisconfigurationException, ValueError, RuntimeError...
        settings = ", ".join(f"{key}: {config[key]!r}" for key in HARDWARE_KEYS[:5])
        reason = " ".join(str(error).split())[:300]
        raise ConfigError(f"this machine cannot run {settings} ({reason})") from None
    finally:
        lightning_log.setLevel(level)
    if config["cuda_graphs"] is True and trainer.world_size > 1:
        raise ConfigError(f"cuda_graphs: true trains on one GPU; these settings start {trainer.world_size} "
                          "processes (set devices: 1, or cuda_graphs: false)")
    one_cuda_gpu = isinstance(trainer.accelerator, CUDAAccelerator) and trainer.world_size == 1
    name = type(trainer.accelerator).__name__.removesuffix("Accelerator")
    hardware = "one CUDA GPU" if one_cuda_gpu else name if trainer.world_size == 1 else f"{trainer.world_size} {name} processes"
    return resolve_device_options(config, one_cuda_gpu, hardware)


def use_compile_cache(config: dict[str, Any]) -> None:
    """Point torch.compile's caches at `compile_cache_dir` (when compiling and set). torch reads the folder from
    TORCHINDUCTOR_CACHE_DIR when it first compiles, and processes started for DDP inherit it."""
    if not (config["compile"] and config["compile_cache_dir"]):
        return
    folder = Path(config["compile_cache_dir"]).absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"compile_cache_dir {str(folder)!r} cannot be created ({error.strerror})") from None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def build_loss(name: str, params: dict[str, Any] | None) -> torch.nn.Module:
    cls = _lookup("loss_function", name, loss_classes(), "a torch.nn loss or LabelSmoothingCrossEntropy")
    try:
        return cls(**(params or {}))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"loss_params for {name}: {error}") from None


def build_optimizer(name: str, params: dict[str, Any], parameters: Any) -> torch.optim.Optimizer:
    """The optimizer `name` over `parameters`. Where the class has a fused implementation (Adam, AdamW, SGD, Adagrad)
    and `params` choose neither `fused` nor `foreach`, the fused one is used when the parameters' device supports it:
    one kernel per step instead of PyTorch's default multi-tensor loop, the same update to float rounding."""
    cls = _lookup("optimizer", name, optimizer_classes(), "in torch.optim")
    parameters = list(parameters)
    if "fused" in inspect.signature(cls).parameters and not {"fused", "foreach"} & set(params):
        try:
            return cls(parameters, **params, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass  # not on this device or with these settings: PyTorch's default below, or the user's error
    try:
        return cls(parameters, **params)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"optimizer_params for {name}: {error}") from None


# What a scheduler lambda may call besides arithmetic: C-63's 2020 config uses pow().
LAMBDA_NAMES = {"pow": pow, "min": min, "max": max, "abs": abs, **{name: getattr(math, name) for name in (
    "exp", "log", "sqrt", "cos", "sin", "pi", "e", "floor", "ceil")}}


def _compile_lambda(text: str, key: str) -> Any:
    """'lambda epoch: 0.95 ** epoch' -> a function; evaluated without builtins, so it can only do arithmetic and
    call the functions of LAMBDA_NAMES."""
    if not text.strip().startswith("lambda"):
        raise ConfigError(f"lr_scheduler_params.{key} must be a string 'lambda epoch: ...', got {text!r}")
    try:
        return eval(text, {"__builtins__": {}, **LAMBDA_NAMES}, {})  # noqa: S307 - an expression of `epoch`
    except SyntaxError as error:
        raise ConfigError(f"lr_scheduler_params.{key} {text!r} is not a valid lambda ({error.msg})") from None


def build_scheduler(name: str | None, params: dict[str, Any] | None,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """The scheduler as Lightning's scheduler config (stepped once per epoch), or None."""
    if name is None:
        return None
    cls = _lookup("lr_scheduler", name, scheduler_classes(), "in torch.optim.lr_scheduler")
    params = dict(params or {})
    for key in ("lr_lambda",):
        if isinstance(params.get(key), str):
            params[key] = _compile_lambda(params[key], key)
    try:
        scheduler = cls(optimizer, **params)
    except (TypeError, ValueError, NameError, ArithmeticError) as error:  # a lambda is called at construction
        raise ConfigError(f"lr_scheduler_params for {name}: {error}") from None
    config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch", "frequency": 1}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = "valid_loss"
    return config


def early_stopping_patience(config: dict[str, Any]) -> int:
    """The configured patience, or the 2020 rule: 3x ReduceLROnPlateau's patience when the config gives one, else
    15 epochs (also for ReduceLROnPlateau without a `patience` key: 2020 did not fall back on PyTorch's 10)."""
    if config["early_stopping_patience"] is not None:
        return config["early_stopping_patience"]
    params = config["lr_scheduler_params"] or {}
    if config["lr_scheduler"] == "ReduceLROnPlateau" and "patience" in params:
        return 3 * int(params["patience"])
    return 15
