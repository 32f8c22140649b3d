"""The configured augmentations applied to a whole batch on the training device, with per-sample parameters.

`DeviceAugmenter` reads the same `image_augmentations` / `tensor_augmentations` mappings as the PIL path. Each
entry is first built as the torchvision v2 transform it names, so parameter checks, defaults and range rules are
torchvision's own; the device op then samples from that transform's normalised ranges once per sample (a v2
transform given a batch would draw one set for the whole batch).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate
from torchvision.transforms import v2

from datasets.device_augmentation.color import ColorJitter, RandomGrayscale
from datasets.device_augmentation.geometry import FlipThenWarp, RandomAffine, RandomRotation
from datasets.device_augmentation.ops import DeviceOp, RandomErasing, RandomFlip
from utils.configuration import unknown_name_message
from utils.errors import ConfigError

# Config name -> device op built from the torchvision transform of that name.
DEVICE_OPS: dict[str, Callable[[Any], DeviceOp]] = {
    "RandomHorizontalFlip": lambda spec: RandomFlip(spec, dim=-1),
    "RandomVerticalFlip": lambda spec: RandomFlip(spec, dim=-2),
    "RandomAffine": RandomAffine,
    "RandomRotation": RandomRotation,
    "ColorJitter": ColorJitter,
    "RandomGrayscale": RandomGrayscale,
    "RandomErasing": RandomErasing,
}
LOW_PRECISION = (torch.float16, torch.bfloat16)
CPU = torch.device("cpu")


def _torchvision_transform(name: str, params: dict[str, Any]) -> v2.Transform:
    """Build v2.<name>(**params), turning its complaints into a ConfigError that names the parameter at fault."""
    cls = getattr(v2, name)
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p != "self"]
    for key in params:
        if key not in accepted:
            raise ConfigError(unknown_name_message("parameter", key, accepted, f"a parameter of {name}"))
    required = [p.name for p in signature.parameters.values()
                if p.name != "self" and p.default is inspect.Parameter.empty]
    for key in required:
        if key not in params:
            raise ConfigError(f"gpu augmentation {name} needs parameter {key!r}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"gpu augmentation {name} parameter {_culprit(cls, params, required)!r}: {error}") from None


def _culprit(cls: type, params: dict[str, Any], required: list[str]) -> str:
    """The first parameter whose removal (or, if required, a neutral 0) lets the transform build."""
    for key in params:
        trial = {k: v for k, v in params.items() if k != key}
        if key in required:
            trial[key] = 0
        try:
            cls(**trial)
        except (TypeError, ValueError):
            continue
        return key
    return ", ".join(params)


def build_op(name: str, params: dict[str, Any] | None) -> DeviceOp:
    """The device op for one config entry `{name: params}`; ConfigError for unsupported names or bad parameters."""
    if name not in DEVICE_OPS:
        raise ConfigError(unknown_name_message("gpu augmentation", name, list(DEVICE_OPS),
                                               "supported with gpu_augmentations: true"))
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"gpu augmentation {name} parameters must be a mapping of name: value, got {params!r}")
    return DEVICE_OPS[name](_torchvision_transform(name, dict(params or {})))


def device_augmentation_settings(config: dict[str, Any]) -> dict[str, dict | None] | None:
    """What `gpu_augmentations` runs on the device: {"image": mapping or None, "tensor": mapping or None}, or None
    when augmentations run in the DataLoader workers (an unresolved `auto` counts as off)."""
    if config["gpu_augmentations"] is not True:
        return None
    return {"image": config["image_augmentations"] if config["augment_images"] else None,
            "tensor": config["tensor_augmentations"] if config["augment_tensors"] else None}


def fuse_steps(ops: list[DeviceOp]) -> list[DeviceOp]:
    """The ops as they run: a flip directly followed by an affine warp or a rotation becomes one warp
    (`FlipThenWarp`), the same augmentation in one resampling instead of three passes over the batch."""
    steps: list[DeviceOp] = []
    for op in ops:
        if isinstance(op, (RandomAffine, RandomRotation)) and steps and isinstance(steps[-1], RandomFlip):
            steps[-1] = FlipThenWarp(steps[-1], op)
        else:
            steps.append(op)
    return steps


class DeviceAugmenter(torch.nn.Module):
    """Applies the configured augmentations to a (B, C, H, W) float batch in [0, 1], per sample.

    Args:
        image_augmentations: the config's `image_augmentations` mapping {TransformName: {param: value} | None},
            applied in its order; None or {} = none.
        tensor_augmentations: the config's `tensor_augmentations` mapping, applied after the image ones.
    """

    def __init__(self, image_augmentations: dict | None, tensor_augmentations: dict | None) -> None:
        super().__init__()
        entries = list((image_augmentations or {}).items()) + list((tensor_augmentations or {}).items())
        self.ops: list[DeviceOp] = [build_op(name, params) for name, params in entries]
        self.steps = fuse_steps(self.ops)

    def sample_params(self, shape: tuple[int, int, int, int], device: torch.device,
                      generator: torch.Generator | None = None) -> list[dict[str, Tensor]]:
        """Every op's parameters for a batch of `shape`, in the order `forward` would draw them."""
        return [op.sample_params(shape, device, generator) for op in self.ops]

    def draw(self, shape: tuple[int, int, int, int], device: torch.device = CPU,
             generator: torch.Generator | None = None) -> Tensor:
        """(B, K) float32: every op's prepared per-sample parameters for a batch of `shape`, side by side.

        The DataModule's train loader draws these in its workers (`DrawingCollate`), so that the training device
        only runs the image-sized kernels of `apply_drawn`.
        """
        tables = [step.prepare(step.sample_params(shape, device, generator), shape) for step in self.steps]
        return torch.cat(tables, dim=1) if tables else torch.zeros(shape[0], 0, device=device)

    def apply_drawn(self, batch: Tensor, drawn: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Run every op with its columns of `drawn` (from `draw`, on the batch's device)."""
        if batch.dim() != 4 or batch.shape[1] not in (1, 3):
            raise ValueError(f"expected a (B, 1 or 3, H, W) batch, got shape {tuple(batch.shape)}")
        shape = tuple(batch.shape)
        widths = [step.width(shape) for step in self.steps]
        if tuple(drawn.shape) != (shape[0], sum(widths)):
            raise ValueError(f"drawn parameters of shape {tuple(drawn.shape)} do not fit a batch of shape {shape} "
                             f"and these augmentations ({shape[0]} x {sum(widths)} expected)")
        dtype = batch.dtype
        # Half-precision grids and HSV round-trips lose visible precision (and CPU grid_sample lacks bfloat16).
        work = batch.float() if dtype in LOW_PRECISION else batch
        start = 0
        for step, width in zip(self.steps, widths):
            work = step.apply_prepared(work, drawn[:, start:start + width], generator)
            start += width
        return work.to(dtype)

    def forward(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment the batch; random draws come from `generator` (on the batch's device) or the global RNG."""
        return self.apply_drawn(batch, self.draw(tuple(batch.shape), batch.device, generator), generator)

    def extra_repr(self) -> str:
        return ", ".join(repr(op) for op in self.ops)


class DrawingCollate:
    """The DataLoader's default collate plus, as a third element, the batch's augmentation parameters
    (`DeviceAugmenter.draw`), drawn where the collate runs: in a worker process, off the training loop."""

    def __init__(self, augmenter: DeviceAugmenter) -> None:
        self.augmenter = augmenter

    def __call__(self, items: list) -> list:
        images, targets = default_collate(items)
        return [images, targets, self.augmenter.draw(tuple(images.shape))]
