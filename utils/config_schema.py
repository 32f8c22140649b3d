"""The config schema: the one place where every key, its type, default and meaning live.

Each key is a `Key` (name, section, default, `Kind` of value, one-line meaning). Defaults are the values of the
thesis's best run (C-50), so a partial config file trains the thesis's recipe. `utils/configuration.py` reads,
overrides and checks configs against it; `documentation/configuration.md` is generated from it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# --- value checks: each returns True when the value is acceptable ------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def _is_mapping_of_params(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def _is_transform_list(v: Any) -> bool:
    return _is_mapping_of_params(v) and all(p is None or isinstance(p, dict) for p in v.values())


def _is_norm_params(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and set(v) == {"mean", "std"}
        and all(isinstance(v[k], list) and v[k] and all(_is_number(x) for x in v[k]) for k in ("mean", "std"))
        and all(x > 0 for x in v["std"])
    )


@dataclass(frozen=True)
class Kind:
    """A value type: a predicate and the words used to say what is expected."""

    check: Callable[[Any], bool]
    expected: str


BOOL = Kind(lambda v: isinstance(v, bool), "true or false")
AUTO_BOOL = Kind(lambda v: isinstance(v, bool) or v == "auto", "true, false or auto")
STR = Kind(lambda v: isinstance(v, str), "a string")
NAME = Kind(lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", v) is not None,
            "a folder name (letters, digits, _ . + -, no /)")
PATH = Kind(lambda v: isinstance(v, str), "a path (a leading ~ is your home folder)")
POS_INT = Kind(lambda v: _is_int(v) and v > 0, "a positive integer")
NON_NEG_INT = Kind(lambda v: _is_int(v) and v >= 0, "a non-negative integer")
INT = Kind(_is_int, "an integer")
PROBABILITY = Kind(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
SIZE = Kind(
    lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v),
    "a list of two positive integers [height, width]",
)
NORM = Kind(_is_norm_params, "a mapping {mean: [numbers], std: [positive numbers]} of equal lengths")
TRANSFORMS = Kind(_is_transform_list, "a mapping of transform names to parameter mappings (or null)")
PARAMS = Kind(_is_mapping_of_params, "a mapping of parameter names to values")
STR_LIST = Kind(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
DEVICES = Kind(
    lambda v: v == "auto" or (_is_int(v) and v != 0) or (isinstance(v, list) and all(_is_int(x) for x in v)),
    "'auto', a number of devices (-1 for all) or a list of device indices",
)
VALIDATION_SPLIT = Kind(
    lambda v: v == "test" or (_is_number(v) and 0 < v < 1),
    "'test' or a fraction of the training images in (0, 1)",
)
PRECISION = Kind(
    lambda v: isinstance(v, str) and v in {"32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"},
    "one of '32-true', '16-mixed', 'bf16-mixed', 'bf16-true', '16-true', '64-true'",
)


@dataclass(frozen=True)
class Key:
    """One config key: name, section, default, type, meaning; `nullable` allows null, `choices` limits strings."""

    name: str
    section: str
    default: Any
    kind: Kind
    help: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    secret: bool = False

    def expected(self) -> str:
        text = "one of " + ", ".join(repr(c) for c in self.choices) if self.choices else self.kind.expected
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.choices is not None and value not in self.choices:
            return False
        return self.kind.check(value)


C50_IMAGE_AUGMENTATIONS = {
    "RandomHorizontalFlip": {"p": 0.5},
    "RandomAffine": {"degrees": 25, "translate": [0.1, 0.1], "scale": [0.9, 1.1], "shear": 8},
    "ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.1},
}

SCHEMA: tuple[Key, ...] = (
    # Logging
    Key("loglevel", "logging", "INFO", STR, "Console and log-file level.",
        choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Key("logging_dir", "logging", "logs", PATH, "Folder of the daily log files `<YYYYMMDD>.log`."),
    Key("log_to_neptune", "logging", False, BOOL, "Log runs to Neptune (see documentation/experiment_tracking.md)."),
    Key("neptune_username", "logging", "<neptune.ai username>", STR, "Neptune workspace (user) name."),
    Key("neptune_project_name", "logging", "<neptune.ai project name>", STR, "Neptune project name."),
    Key("neptune_api_token", "logging", "<neptune.ai API token>", STR,
        "Neptune API token; the placeholder means: use the NEPTUNE_API_TOKEN environment variable. Never written "
        "to any file or the console.", secret=True),
    Key("neptune_mode", "logging", "async", STR, "Neptune connection mode; `offline` needs no token and no network.",
        choices=("async", "offline", "debug")),
    Key("log_to_mlflow", "logging", True, BOOL, "Log runs to the local MLflow dashboard."),
    Key("mlflow_tracking_uri", "logging", "sqlite:///mlruns.db", STR,
        "MLflow tracking store; browse it with `python -m utils.dashboard` (keep it off synced folders)."),
    Key("experiment_name", "logging", "stanford-cars", STR, "MLflow experiment the runs are grouped under."),
    Key("tags", "logging", [], STR_LIST, "Tags given to the run in every tracker (e.g. the thesis's experiment ID)."),
    Key("description", "logging", "", STR, "Free-text description of the run, given to every tracker."),
    # Paths
    Key("stanford_raw_data_path", "paths", "<path to the folder containing the raw Stanford Cars downloads>", PATH,
        "Folder with the raw downloads, or a Kaggle mirror's `.zip` (see documentation/dataset.md)."),
    Key("stanford_data_path", "paths", "input/stanford", PATH,
        "Prepared data: `train/`, `test/`, `train_labels.csv`, `test_labels.csv`."),
    Key("output_path", "paths", "output", PATH, "Run folders `<output_path>/<run_name>/` are created here."),
    Key("cache_dir", "paths", None, PATH,
        "Where the image cache lives; null = `<stanford_data_path>/.cache`.", nullable=True),
    # Preprocessing
    Key("image_size", "preprocessing", [227, 227], SIZE, "Images are resized to [height, width]."),
    Key("convert_to_grayscale", "preprocessing", False, BOOL, "Convert images to 1-channel grayscale."),
    Key("normalize", "preprocessing", True, BOOL, "Normalize pixel values with the parameters below."),
    Key("normalization_params_rgb", "preprocessing",
        {"mean": [0.4707, 0.4602, 0.4550], "std": [0.2594, 0.2585, 0.2635]}, NORM,
        "Per-channel mean/std used when `convert_to_grayscale` is false (3 values each)."),
    Key("normalization_params_grayscale", "preprocessing", {"mean": [0.4627], "std": [0.2545]}, NORM,
        "Mean/std used when `convert_to_grayscale` is true (1 value each)."),
    # Augmentations
    Key("crop_to_bboxes", "augmentations", False, BOOL, "Crop training images to their bounding boxes (data prepared from by-class folders has none: training then stops with one line)."),
    Key("erase_background", "augmentations", False, BOOL,
        "Paste the bbox crop centred on a white canvas of the original size (only with `crop_to_bboxes`)."),
    Key("augment_images", "augmentations", True, BOOL, "Apply `image_augmentations` to training images."),
    Key("image_augmentations", "augmentations", C50_IMAGE_AUGMENTATIONS, TRANSFORMS,
        "torchvision.transforms.v2 names with their parameters, applied in this order before conversion to tensor.",
        nullable=True),
    Key("augment_tensors", "augmentations", False, BOOL, "Apply `tensor_augmentations` to training tensors."),
    Key("tensor_augmentations", "augmentations", {"RandomErasing": {"p": 0.5, "scale": [0.02, 0.25]}}, TRANSFORMS,
        "torchvision.transforms.v2 names with parameters, applied after conversion to tensor, before Normalize.",
        nullable=True),
    # Network and training
    Key("architecture", "network", "ghost", STR, "A name of `models/arch_dict.py` (e.g. ghost, mob_v2, eff_b0)."),
    Key("batch_size", "network", 64, POS_INT, "Images per training batch (per device), at least 2 (batch norm). "
        "When an epoch would end with a batch of one image, that image is left out of the epoch (with a warning)."),
    Key("valid_batch_size", "network", None, POS_INT,
        "Images per validation batch (per device); null = 4 x batch_size. Larger batches fit (validation keeps no "
        "activations), give the same results and launch fewer kernels per image.", nullable=True),
    Key("num_epochs", "network", 200, POS_INT, "Maximum number of epochs."),
    Key("dropout", "network", 0.2, PROBABILITY, "Dropout rate before the last Linear layer (GhostNet only)."),
    Key("output_channels", "network", 320, POS_INT,
        "Width of the layer mapped to the classes (GhostNet only; 1280 in the original GhostNet)."),
    Key("se_gate", "network", "clamp", STR,
        "GhostNet's squeeze-excite gate: clamp (the expand layer's output clamped to [0, 1], as the 2020 runs "
        "trained) or hard_sigmoid (the paper's relu6(x + 3) / 6).", choices=("clamp", "hard_sigmoid")),
    Key("early_stopping_patience", "network", None, POS_INT,
        "Epochs without a lower `valid_loss` before stopping; null = the thesis's rule: 15, or 3x the patience of "
        "ReduceLROnPlateau when the config gives it one.", nullable=True),
    Key("checkpoint_monitor", "network", "valid_loss", STR,
        "What picks `checkpoints/best.ckpt`: the lowest valid_loss (as in 2020) or the highest valid_acc.",
        choices=("valid_loss", "valid_acc")),
    Key("validation_split", "network", "test", VALIDATION_SPLIT,
        "Images validated on each epoch: test (the thesis's choice: early stopping and best.ckpt then see the images "
        "the accuracy is reported on, so that figure is optimistic) or a fraction such as 0.1 of the training "
        "images, held out per class (drawn with `seed`, 0 when null); the test split is then evaluated once, on "
        "best.ckpt, at the end (test_acc, test_top5 in summary.json)."),
    # Optimizer, scheduler, loss
    Key("optimizer", "optimization", "AdamW", STR, "A class name of `torch.optim`."),
    Key("optimizer_params", "optimization", {"lr": 0.001, "weight_decay": 0.6}, PARAMS,
        "Keyword arguments of the optimizer. Adam, AdamW, SGD and Adagrad run PyTorch's fused implementation (one "
        "kernel per step) unless `fused` or `foreach` is given here."),
    Key("lr_scheduler", "optimization", "MultiStepLR", STR,
        "A class name of `torch.optim.lr_scheduler`, or null for a constant learning rate.", nullable=True),
    Key("lr_scheduler_params", "optimization", {"gamma": 0.1, "milestones": [67, 82, 95, 107]}, PARAMS,
        "Keyword arguments of the scheduler; `lr_lambda` may be a string \"lambda epoch: ...\" (arithmetic, `pow`, "
        "`min`, `max`, `abs`, `exp`, `log`, `sqrt`, `cos`, `sin`, `floor`, `ceil`, `pi`, `e`).", nullable=True),
    Key("loss_function", "optimization", "LabelSmoothingCrossEntropy", STR,
        "LabelSmoothingCrossEntropy or a loss class name of `torch.nn`."),
    Key("loss_params", "optimization", None, PARAMS, "Keyword arguments of the loss.", nullable=True),
    # Run and hardware
    Key("run_name", "run", None, NAME,
        "Run folder name; null = `<architecture>_<YYYYmmddHHMMSS>`, made unique if taken.", nullable=True),
    Key("seed", "run", 42, NON_NEG_INT, "Seed of every random generator (null = not seeded).", nullable=True),
    Key("deterministic", "run", False, BOOL, "Use deterministic algorithms only (slower; identical reruns)."),
    Key("accelerator", "hardware", "auto", STR, "Lightning accelerator: auto, cpu, gpu, cuda, mps.",
        choices=("auto", "cpu", "gpu", "cuda", "mps")),
    Key("devices", "hardware", 1, DEVICES, "Lightning devices: a count, a list of indices or 'auto' (every GPU). "
        "One by default, as the thesis trained; with several processes each takes `batch_size` images per step "
        "(the effective batch is logged)."),
    Key("num_nodes", "hardware", 1, POS_INT, "Number of machines (multi-node DDP)."),
    Key("strategy", "hardware", "auto", STR, "Lightning strategy: auto, ddp, ddp_spawn, ..."),
    Key("sync_batchnorm", "hardware", False, BOOL, "Synchronise BatchNorm statistics across DDP processes."),
    Key("precision", "hardware", "32-true", PRECISION, "Lightning precision, e.g. 32-true or bf16-mixed."),
    Key("channels_last", "hardware", "auto", AUTO_BOOL, "Use the channels_last memory format (faster convs on GPUs); "
        "auto = on for a run on one CUDA GPU, off otherwise."),
    Key("compile", "hardware", False, BOOL, "Compile the network and the on-device preprocessing (conversion, "
        "augmentations, Normalize) with torch.compile."),
    Key("compile_mode", "hardware", "reduce-overhead", STR, "torch.compile's mode when compile is true: "
        "reduce-overhead replays the compiled kernels as CUDA graphs (on a CPU it is default), default, or "
        "max-autotune (long compilation). See documentation/performance.md.",
        choices=("default", "reduce-overhead", "max-autotune")),
    Key("compile_cache_dir", "hardware", None, PATH, "Where torch.compile keeps what it compiled "
        "(TORCHINDUCTOR_CACHE_DIR); null = torch's default in the system's temporary folder. A folder that outlives "
        "the machine (on Colab, one on Drive) lets later runs on the same kind of machine, with the same torch, "
        "compile faster.", nullable=True),
    Key("cuda_graphs", "hardware", "auto", AUTO_BOOL, "Replay each training batch's on-device preprocessing, forward, "
        "loss and backward as one CUDA graph; the optimizer step, other batch sizes and validation run eagerly. "
        "The fastest setting measured on a GPU (documentation/performance.md); one CUDA GPU, precision 32-true, "
        "with compile only with compile_mode default. auto = on where it applies (one CUDA GPU, 32-true, no "
        "compile_mode that replays graphs itself), off otherwise; a step that cannot be graphed then trains eagerly "
        "with a warning, where true stops with an error."),
    Key("async_checkpoints", "hardware", True, BOOL, "Write checkpoints from a background thread while the next "
        "epoch trains (Lightning's AsyncCheckpointIO; the weights are copied first). A run waits for the writing "
        "before it ends, however it ends."),
    # Data loading
    Key("num_workers", "data_loading", None, NON_NEG_INT,
        "DataLoader worker processes; null = one per available CPU core (at most 8).", nullable=True),
    Key("pin_memory", "data_loading", True, BOOL, "Pin host memory of batches (faster copies to a GPU)."),
    Key("persistent_workers", "data_loading", True, BOOL, "Keep DataLoader workers alive between epochs."),
    Key("prefetch_factor", "data_loading", 2, POS_INT, "Batches loaded in advance by each worker."),
    Key("cache_images", "data_loading", True, BOOL,
        "Cache the decoded, resized uint8 images once, so each epoch only runs the random augmentations."),
    Key("gpu_augmentations", "data_loading", "auto", AUTO_BOOL,
        "Run the augmentations on the training device, with per-sample random parameters (pixels differ slightly "
        "from the workers' PIL path; see documentation/device_augmentations.md). auto = on for a run on one CUDA "
        "GPU when every configured augmentation runs there, off otherwise (false: always in the workers)."),
    Key("skip_corrupt_images", "data_loading", False, BOOL,
        "Skip images that do not decode (with a warning, counted in summary.json) instead of failing."),
)

KEYS: dict[str, Key] = {key.name: key for key in SCHEMA}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(key.section for key in SCHEMA))


def defaults() -> dict[str, Any]:
    """A fresh config holding every key's default."""
    return {key.name: copy.deepcopy(key.default) for key in SCHEMA}
