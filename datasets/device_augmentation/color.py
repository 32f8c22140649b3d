"""Per-sample ColorJitter and RandomGrayscale on a device batch, with the formulas of torchvision's tensor kernels
(`adjust_brightness`, `adjust_contrast`, `adjust_saturation`, `adjust_hue`, `rgb_to_grayscale`).

1-channel images keep their pixels under saturation, hue and grayscale, as torchvision (and PIL) leave them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2

from datasets.device_augmentation.ops import DeviceOp, PerSampleChoice, constant, rand, uniform

# ITU-R 601-2 luma weights, the ones torchvision's rgb_to_grayscale uses.
LUMA = (0.2989, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
# Rows: g - b, b - r, r - g (the hue numerators when red, green or blue is the largest channel).
CHANNEL_DIFFERENCES = (0.0, 1.0, -1.0, -1.0, 0.0, 1.0, 1.0, -1.0, 0.0)


def grayscale(batch: Tensor) -> Tensor:
    """(B, 1, H, W) luma of an RGB batch; a 1-channel batch is its own luma."""
    if batch.shape[1] == 1:
        return batch
    weights = constant(LUMA, batch.device, batch.dtype).view(1, 3, 1, 1)
    return (batch * weights).sum(dim=1, keepdim=True)


def channel_mix(matrix: Tensor, pixels: Tensor, offset: Tensor | None = None) -> Tensor:
    """`matrix` @ `pixels` (+ `offset`) for a (B, C, N) batch of pixels and a (B, C, C) or (C, C) matrix: each pixel's
    channels mixed linearly.

    Eagerly, one batched matrix product: one kernel launch. Where launches cost the host nothing, C multiply-adds
    instead (`launches_are_free`): a matrix product with an inner size of 3 is a slow cuBLAS call (on an H100,
    ColorJitter's seven took 1.45 ms of a 16 ms training step, 2026-11-26), which torch.compile cannot fuse with
    the kernels around it, and which reads and writes more than the three in-place multiply-adds would."""
    if not launches_are_free():
        return torch.matmul(matrix, pixels) if offset is None else torch.baddbmm(offset, matrix, pixels)
    columns = matrix if matrix.dim() == 3 else matrix.unsqueeze(0)
    first, first_pixels = columns[:, :, :1], pixels[:, :1]
    mixed = first * first_pixels if offset is None else torch.addcmul(offset, first, first_pixels)
    for channel in range(1, pixels.shape[1]):
        mixed = mixed.addcmul_(columns[:, :, channel:channel + 1], pixels[:, channel:channel + 1])
    return mixed


def launches_are_free() -> bool:
    """Whether this code is being traced by torch.compile (its kernels are fused) or recorded into a CUDA graph
    (`cuda_graphs: true`, replayed without the host launching each kernel): then fewer bytes moved, not fewer
    kernels, is what makes a step fast."""
    if torch.compiler.is_compiling():
        return True
    # Without CUDA set up, nothing is being recorded (and asking would fail on a machine without a driver).
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def hue_shift(pixels: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each image of a (B, 3, N) batch of RGB pixels by shift (B,) turns, keeping HSV saturation
    and value."""
    maxc, largest = pixels.max(dim=1, keepdim=True)  # the first largest channel: red, then green, on ties
    chroma = maxc - pixels.amin(dim=1, keepdim=True)
    # Grey pixels (chroma 0) have all three differences 0, so hue 0 below; any finite divisor does for them.
    safe = chroma.clamp_min(torch.finfo(pixels.dtype).tiny)
    # Hue in sixths of a turn: (g - b) / chroma when red is largest, 2 + (b - r) / chroma for green, 4 + (r - g) /
    # chroma for blue. The three differences come from one product with a constant matrix.
    differences = channel_mix(constant(CHANNEL_DIFFERENCES, pixels.device, pixels.dtype).view(3, 3), pixels)
    hue6 = torch.addcdiv(torch.add(shift.view(-1, 1, 1) * 6, largest, alpha=2),
                         differences.gather(1, largest), safe)
    # HSV -> RGB without branches: channel n (R=5, G=3, B=1) is max - chroma * clamp(min(k, 4 - k), 0, 1),
    # with k = (n + hue6) mod 6; the mod also wraps the shifted hue into one turn.
    k = (constant((5.0, 3.0, 1.0), pixels.device, pixels.dtype).view(1, 3, 1) + hue6).remainder_(6)
    return torch.addcmul(maxc, chroma, torch.minimum(k, 4 - k).clamp_(0, 1), value=-1)


class ColorJitter(DeviceOp):
    """torchvision's ColorJitter per sample: each sample draws its four factors and its own order of the four
    adjustments; components left out of the config are skipped."""

    name = "ColorJitter"

    def __init__(self, spec: v2.ColorJitter) -> None:
        self.ranges = (spec.brightness, spec.contrast, spec.saturation, spec.hue)

    def sample_params(self, shape, device, generator=None):
        batch_size = shape[0]
        # argsort of uniform keys: a uniformly random permutation of the four adjustments per sample.
        order = rand((batch_size, 4), device, generator).argsort(dim=1)
        params = {"order": order}
        neutral = (1.0, 1.0, 1.0, 0.0)
        for key, bounds, identity in zip(("brightness", "contrast", "saturation", "hue"), self.ranges, neutral):
            if bounds is None:
                params[key] = torch.full((batch_size,), identity, device=device)
            else:
                params[key] = uniform(bounds[0], bounds[1], batch_size, device, generator)
        return params

    def _hue_step(self, shape) -> bool:
        return shape[1] == 3 and self.ranges[HUE] is not None

    def _slots(self, shape) -> int:
        """Blend slots: three before and three after the hue step, or one per position without it."""
        return 6 if self._hue_step(shape) else 4

    def width(self, shape):
        # Per blend slot: a C x C colour matrix and C mean weights; then the hue shift when there is a hue step.
        channels = shape[1]
        return (channels * channels + channels) * self._slots(shape) + int(self._hue_step(shape))

    def prepare(self, params, shape):
        # Each sample blends (brightness, contrast, saturation) and shifts its hue in its own order. The hue step is
        # the costly one, so it runs once for the whole batch: each sample's blends before its hue step run in up
        # to three slots before it, and those after in up to three slots after; a slot a sample does not use is
        # the identity for it. This table holds every slot's per-sample numbers, so that the device only runs
        # image-sized kernels.
        order = params["order"]
        ones = torch.ones_like(params["brightness"])
        by_component = torch.stack([params["brightness"], params["contrast"], params["saturation"], ones], dim=1)
        factor = by_component.float().gather(1, order)  # (B, 4): each position's factor; 1 for the hue step
        contrast = (order == CONTRAST).float()
        saturation = (order == SATURATION).float()
        if shape[1] == 1:  # a 1-channel image is its own luma: saturation leaves it unchanged, as in torchvision
            factor = torch.where(order == SATURATION, 1.0, factor)
            saturation = torch.zeros_like(saturation)
        if not self._hue_step(shape):
            positions = [(k, torch.ones_like(order[:, k], dtype=torch.bool)) for k in range(4)]
        else:
            hue_at = (order == HUE).int().argmax(dim=1)
            positions = [(k, k < hue_at) for k in range(3)] + [(k, k > hue_at) for k in range(1, 4)]
        slots = [_blend_coefficients(torch.where(used, factor[:, k], 1), contrast[:, k] * used,
                                     saturation[:, k] * used, shape[1]) for k, used in positions]
        table = torch.cat([part for slot in slots for part in slot], dim=1)
        return torch.cat([table, params["hue"].float()[:, None]], dim=1) if self._hue_step(shape) else table

    def apply_prepared(self, batch, prepared, generator=None):
        table = prepared.to(batch.dtype)
        shape = tuple(batch.shape)
        size, channels = shape[0], shape[1]
        hue = self._hue_step(shape)
        pixels = batch.reshape(size, channels, -1)
        width = channels * channels + channels
        for slot in range(self._slots(shape)):
            if hue and slot == 3:
                pixels = hue_shift(pixels, table[:, -1])
            start = slot * width
            matrix = table[:, start:start + channels * channels].view(size, channels, channels)
            mean_weights = table[:, start + channels * channels:start + width].view(size, 1, channels)
            pixels = self._blend(pixels, matrix, mean_weights)
        return pixels.view(shape)

    @staticmethod
    def _blend(pixels: Tensor, matrix: Tensor, mean_weights: Tensor) -> Tensor:
        """torchvision's blend clamp(f * x + (1 - f) * target, 0, 1) for every sample at once: with target = luma
        (saturation), the mean of luma (contrast) or black (brightness), the blend is `matrix` @ pixel plus
        `mean_weights` . the image's channel means. One batched matrix product instead of a chain of elementwise
        kernels (see `channel_mix`)."""
        offset = channel_mix(mean_weights, pixels.mean(dim=2, keepdim=True))  # (B, 1, 1)
        return channel_mix(matrix, pixels, offset).clamp_(0, 1)


def _blend_coefficients(factor: Tensor, contrast: Tensor, saturation: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """Per sample, the (C*C) colour matrix and (C) mean weights of a blend with factor f towards luma (where
    `saturation` is 1), the mean of luma (where `contrast` is 1) or black (brightness, where both are 0)."""
    luma = constant(LUMA if channels == 3 else (1.0,), factor.device)
    rest = (1 - factor)[:, None]
    identity = constant((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) if channels == 3 else (1.0,), factor.device)
    # f * I + (1 - f) * 1 w^T: every channel becomes f * itself plus (1 - f) * luma.
    matrix = factor[:, None] * identity + (rest * saturation[:, None]) * luma.repeat(channels)
    return matrix, rest * contrast[:, None] * luma


class RandomGrayscale(PerSampleChoice):
    """torchvision's RandomGrayscale per sample: with probability p an RGB image becomes its luma in all three
    channels."""

    name = "RandomGrayscale"
    key = "gray"

    def __init__(self, spec: v2.RandomGrayscale) -> None:
        super().__init__(spec.p)

    def changed(self, batch):
        return grayscale(batch).expand_as(batch)

    def apply_prepared(self, batch, prepared, generator=None):
        return batch if batch.shape[1] == 1 else super().apply_prepared(batch, prepared, generator)
