"""Inference from a training checkpoint alone: load it, preprocess images as the eval pipeline does, predict top-k.

A checkpoint of `models/net_module.py: NetModule` stores the architecture, the image size, grayscale (img_channels),
the normalization and the class names, so nothing else is needed. Evaluation images go through the deterministic
prefix of `datasets/prepared/transforms.py` (RGB -> Resize -> optional Grayscale; no bbox crop, as for the test
split) and then `NetModule.preprocess`, exactly as validation batches in training.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from datasets.prepared.transforms import PrefixSettings, apply_prefix, to_uint8_tensor
from models.net_module import NetModule
from utils.errors import UserError
from utils.files import checkpoint_path_problem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class CheckpointError(UserError):
    """A checkpoint path that does not exist or is not a checkpoint written by train.py."""

    prefix = "checkpoint error"


@dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes; `class_id` is 1-based, as in the raw data and the labels CSVs."""

    class_id: int
    class_name: str
    probability: float

    def as_dict(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "class_name": self.class_name, "probability": self.probability}


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict of a train.py run, loaded without executing pickled code; errors name the file."""
    path = Path(path)
    problem = checkpoint_path_problem(path)
    if problem:
        raise CheckpointError(problem)
    try:
        # weights_only: a checkpoint is loaded without executing pickled code (utils/resilience.py keeps the RNG
        # states it stores in plain types for this reason). Warnings (e.g. about a TorchScript file) are dropped:
        # the error below says what the file is not.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (torch.load says {reason})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (no state_dict and hyper_parameters)")
    return checkpoint


def resolve_device(spec: str) -> torch.device:
    """`--device` as a torch device: auto = the first CUDA GPU when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: no CUDA GPU is visible to torch here; use --device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return device


def load_module(path: Path, device: torch.device | str = "cpu") -> NetModule:
    """The checkpoint's NetModule on `device` in eval mode (torch.compile off: not worth it for a few images)."""
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint["hyper_parameters"])
    if "architecture" not in hparams or "num_classes" not in hparams:
        raise CheckpointError(f"{path} is not a checkpoint of models/net_module.py: NetModule (no architecture)")
    module = NetModule(**{**hparams, "compile": False})
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not fit the stored architecture ({str(error)[:200]})") from None
    return module.eval().to(device)


def class_names(module: NetModule) -> list[str]:
    """Names indexed by 0-based label; checkpoints without names get 'class <id>'."""
    names = module.hparams.get("class_names")
    count = module.hparams.num_classes
    return list(names) if names else [f"class {i}" for i in range(1, count + 1)]


def eval_prefix(module: NetModule) -> PrefixSettings:
    """The deterministic preprocessing of the test split for this module's training settings."""
    return PrefixSettings(tuple(module.hparams.image_size), module.hparams.img_channels == 1, False, False)


def load_image(path: Path, prefix: PrefixSettings) -> torch.Tensor:
    """Decode an image file, turn it upright by its EXIF orientation (phone cameras store many photos sideways with a
    tag instead of rotated pixels) and apply the eval prefix: uint8 (C, H, W). Raises OSError when it does not
    decode."""
    with Image.open(path) as image:
        image.load()
        return to_uint8_tensor(apply_prefix(ImageOps.exif_transpose(image), prefix))


@torch.inference_mode()
def predict_probabilities(module: NetModule, images: torch.Tensor) -> torch.Tensor:
    """uint8 batch (B, C, H, W) after the eval prefix -> class probabilities (B, num_classes)."""
    device = next(module.parameters()).device
    logits = module(module.preprocess(images.to(device, non_blocking=True), train=False))
    return torch.softmax(logits.float(), dim=1).cpu()


def top_k(probabilities: torch.Tensor, names: list[str], k: int) -> list[list[Prediction]]:
    """The k most probable classes of each row, most probable first."""
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [Prediction(int(i) + 1, names[int(i)], float(v)) for v, i in zip(row_values, row_indices)]
        for row_values, row_indices in zip(values, indices)
    ]


def image_files(path: Path) -> list[Path]:
    """A file as itself; a folder as its image files (by suffix, sorted by name)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]
