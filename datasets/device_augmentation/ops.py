"""Per-sample batched augmentations on any device: the shared base, flips and random erasing.

Every op draws one set of random parameters per sample (torchvision's v2 transforms, given a batch, draw one set
for the whole batch). Each op is built from the torchvision transform that the same config entry would make on the
PIL path, so the validated, normalised ranges and defaults are torchvision's own.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor
from torchvision.transforms import v2

from utils.errors import ConfigError

BatchShape = tuple[int, int, int, int]


def rand(size: int | tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """torch.rand(size) on `device`, from `generator` (or the global RNG)."""
    # Passed only when given: torch.compile cannot trace `generator=None` once the batch size is dynamic.
    return torch.rand(size, device=device, **({} if generator is None else {"generator": generator}))


def randn(size: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """torch.randn(size) on `device`, from `generator` (or the global RNG)."""
    return torch.randn(size, device=device, **({} if generator is None else {"generator": generator}))


def uniform(low: float | Tensor, high: float | Tensor, n: int, device: torch.device,
            generator: torch.Generator | None) -> Tensor:
    """n float32 draws from U[low, high), on `device`, from `generator` (or the global RNG)."""
    return low + (high - low) * rand(n, device, generator)


def constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """A small constant tensor on `device`, made once and then reused (do not modify it in place).

    Building `torch.tensor(values, device=cuda)` copies from pageable host memory, which makes the CPU wait for the
    GPU: once per batch, that stall keeps the CPU from queueing the next kernels while the GPU works. Under
    torch.compile the tensor becomes a constant of the compiled graph instead.
    """
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached_constant(values, device, dtype)


@functools.lru_cache(maxsize=64)
def _cached_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def per_sample(mask: Tensor) -> Tensor:
    """A (B,) tensor shaped (B, 1, 1, 1) to broadcast over images."""
    return mask.view(-1, 1, 1, 1)


class DeviceOp:
    """One augmentation on a (B, C, H, W) float batch in [0, 1], in two halves that may run on different devices.

    `sample_params` draws each sample's parameters and `prepare` turns them into one small (B, width) float32 table
    of everything the op needs per sample; both are cheap and can run in a DataLoader worker, on the CPU.
    `apply_prepared` does the image-sized work on the batch's device with that table. Drawing and preparing there
    keeps dozens of tiny kernel launches per batch off a GPU whose training step is bound by launches.
    """

    name = ""

    def sample_params(self, shape: BatchShape, device: torch.device,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw the parameters of each sample of a batch of `shape` (B, C, H, W)."""
        raise NotImplementedError

    def width(self, shape: BatchShape) -> int:
        """Columns of `prepare`'s table for a batch of `shape`."""
        raise NotImplementedError

    def prepare(self, params: dict[str, Tensor], shape: BatchShape) -> Tensor:
        """(B, width) float32: what `apply_prepared` needs per sample, from `sample_params`' draws."""
        raise NotImplementedError

    def apply_prepared(self, batch: Tensor, prepared: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Apply a table from `prepare` (on the batch's device) to the batch; returns a new tensor of its shape.
        Only image-sized random draws (erasing noise) happen here, from `generator` or the global RNG."""
        raise NotImplementedError

    def apply(self, batch: Tensor, params: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Apply parameters from `sample_params` to the batch."""
        prepared = self.prepare(params, tuple(batch.shape)).to(batch.device)
        return self.apply_prepared(batch, prepared, generator)

    def __call__(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        params = self.sample_params(tuple(batch.shape), batch.device, generator)
        return self.apply(batch, params, generator)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def columns(*values: Tensor) -> Tensor:
    """(B,) tensors side by side as a (B, k) float32 table."""
    return torch.stack([value.float() for value in values], dim=1)


class PerSampleChoice(DeviceOp):
    """Base of the ops that change each sample with probability p: `key` names the (B,) draw, `changed` makes the
    changed batch."""

    key = ""

    def __init__(self, p: float) -> None:
        self.p = float(p)

    def sample_params(self, shape, device, generator=None):
        return {self.key: rand(shape[0], device, generator) < self.p}

    def width(self, shape):
        return 1

    def prepare(self, params, shape):
        return columns(params[self.key])

    def changed(self, batch: Tensor) -> Tensor:
        """Every sample of `batch` changed."""
        raise NotImplementedError

    def apply_prepared(self, batch, prepared, generator=None):
        # lerp with a weight of exactly 0 or 1 returns that end exactly
        return torch.lerp(batch, self.changed(batch), per_sample(prepared[:, 0]).to(batch.dtype))


class RandomFlip(PerSampleChoice):
    """Mirror each sample with probability p: left-right (dim -1) or top-bottom (dim -2)."""

    key = "flip"

    def __init__(self, spec: v2.RandomHorizontalFlip | v2.RandomVerticalFlip, dim: int) -> None:
        super().__init__(spec.p)
        self.name = type(spec).__name__
        self.dim = dim

    def changed(self, batch):
        return batch.flip(self.dim)


class RandomErasing(DeviceOp):
    """torchvision's RandomErasing per sample: up to 10 tries at a box of random area and log-uniform aspect ratio
    that fits inside the image; a sample whose 10 tries all fail is left unchanged, as torchvision does."""

    name = "RandomErasing"
    attempts = 10

    def __init__(self, spec: v2.RandomErasing) -> None:
        self.p = float(spec.p)
        self.scale = (float(spec.scale[0]), float(spec.scale[1]))
        self.log_ratio = (math.log(spec.ratio[0]), math.log(spec.ratio[1]))
        self.value = spec.value  # list of 1 or C numbers, or None for per-pixel normal noise

    def sample_params(self, shape, device, generator=None):
        batch_size, channels, height, width = shape
        if self.value is not None and len(self.value) not in (1, channels):
            raise ConfigError(f"gpu augmentation RandomErasing parameter 'value' has {len(self.value)} numbers but the "
                              f"images have {channels} channels: give 1 or {channels}")
        n = batch_size * self.attempts
        area_fraction = uniform(self.scale[0], self.scale[1], n, device, generator).view(batch_size, -1)
        aspect_ratio = uniform(self.log_ratio[0], self.log_ratio[1], n, device, generator).exp().view(batch_size, -1)
        area = area_fraction * (height * width)
        box_h = torch.sqrt(area * aspect_ratio).round()
        box_w = torch.sqrt(area / aspect_ratio).round()
        fits = (box_h < height) & (box_w < width)
        # The first attempt that fits, as torchvision's loop would stop there.
        first = fits.int().argmax(dim=1, keepdim=True)
        pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
        box_h, box_w = pick(box_h), pick(box_w)
        apply = (rand(batch_size, device, generator) < self.p) & fits.any(dim=1)
        # randint(0, H - h + 1) per sample, from uniform draws so each sample has its own upper bound.
        top = (rand(batch_size, device, generator) * (height - box_h + 1)).floor()
        left = (rand(batch_size, device, generator) * (width - box_w + 1)).floor()
        # Guards the float32 product against rounding up to the excluded bound.
        top, left = torch.minimum(top, height - box_h), torch.minimum(left, width - box_w)
        return {"apply": apply, "area_fraction": pick(area_fraction), "aspect_ratio": pick(aspect_ratio),
                "top": top, "left": left, "height": box_h, "width": box_w}

    def width(self, shape):
        return 4

    def prepare(self, params, shape):
        # A sample left unerased gets an empty box (bottom = top), so that the table alone says what to erase.
        height = torch.where(params["apply"], params["height"], 0)
        width = torch.where(params["apply"], params["width"], 0)
        return columns(params["top"], params["top"] + height, params["left"], params["left"] + width)

    def apply_prepared(self, batch, prepared, generator=None):
        height, width = batch.shape[-2:]
        rows = torch.arange(height, device=batch.device, dtype=prepared.dtype).view(1, height, 1)
        cols = torch.arange(width, device=batch.device, dtype=prepared.dtype).view(1, 1, width)
        top, bottom, left, right = (prepared[:, k].view(-1, 1, 1) for k in range(4))
        inside = ((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)).unsqueeze(1)
        if self.value is None:  # per-pixel normal noise, drawn here: an image-sized table is not worth shipping
            fill = randn(tuple(batch.shape), batch.device, generator)
        else:
            fill = constant(tuple(self.value), batch.device).view(1, -1, 1, 1)
        return torch.where(inside, fill.to(batch.dtype), batch)
