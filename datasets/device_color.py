"""Per-sample ColorJitter and RandomGrayscale on a device batch, with the formulas of torchvision's tensor kernels
(`adjust_brightness`, `adjust_contrast`, `adjust_saturation`, `adjust_hue`, `rgb_to_grayscale`).

1-channel images keep their pixels under saturation, hue and grayscale, as torchvision (and PIL) leave them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2

from datasets.device_ops import DeviceOp, columns, constant, per_sample, rand, uniform

# ITU-R 601-2 luma weights, the ones torchvision's rgb_to_grayscale uses.
LUMA = (0.2989, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def grayscale(batch: Tensor) -> Tensor:
    """(B, 1, H, W) luma of an RGB batch; a 1-channel batch is its own luma."""
    if batch.shape[1] == 1:
        return batch
    weights = constant(LUMA, batch.device, batch.dtype).view(1, 3, 1, 1)
    return (batch * weights).sum(dim=1, keepdim=True)


def hue_shift(batch: Tensor, shift: Tensor) -> Tensor:
    """Rotate each RGB image's hue by shift (B,) turns, keeping HSV saturation and value."""
    minc, maxc = batch.aminmax(dim=1, keepdim=True)
    chroma = maxc - minc
    r, g, b = batch[:, 0:1], batch[:, 1:2], batch[:, 2:3]
    # Grey pixels (chroma 0) get hue 0 below, so any finite divisor does for them.
    safe = chroma.clamp_min(torch.finfo(batch.dtype).tiny)
    # Hue in sixths of a turn, from whichever channel is the largest (red first on ties).
    hue6 = torch.where(maxc == r, ((g - b) / safe) % 6,
                       torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue6 = hue6.masked_fill_(chroma == 0, 0).add_(6 * per_sample(shift)).remainder_(6)
    # HSV -> RGB without branches: channel n (R=5, G=3, B=1) is max - chroma * clamp(min(k, 4 - k), 0, 1),
    # with k = (n + hue6) mod 6.
    n = constant((5.0, 3.0, 1.0), batch.device, batch.dtype).view(1, 3, 1, 1)
    k = (n + hue6).remainder_(6)
    return maxc - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)


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
        # Per blend slot: factor, mean weight, luma weight; then the hue shift when there is a hue step.
        return 3 * self._slots(shape) + int(self._hue_step(shape))

    def prepare(self, params, shape):
        # Each sample blends (brightness, contrast, saturation) and shifts its hue in its own order. The hue step is
        # the costly one, so it runs once for the whole batch: each sample's blends before its hue step run in up
        # to three slots before it, and those after in up to three slots after; a slot a sample does not use blends
        # it with factor 1, which leaves it unchanged. This table holds every slot's per-sample numbers, so that
        # the device only runs image-sized kernels.
        order = params["order"]
        ones = torch.ones_like(params["brightness"])
        by_component = torch.stack([params["brightness"], params["contrast"], params["saturation"], ones], dim=1)
        factor = by_component.float().gather(1, order)  # (B, 4): each position's factor; 1 for the hue step
        # Blend targets: t = mean_weight * mean(luma) + luma_weight * luma; black for brightness.
        mean_weight = (order == CONTRAST).float()
        # Saturation blends with luma; a 1-channel image is its own luma, so it stays unchanged, as in torchvision.
        luma_weight = (order == SATURATION).float()
        if not self._hue_step(shape):
            slots = [(factor[:, k], mean_weight[:, k], luma_weight[:, k]) for k in range(4)]
            return columns(*(value for slot in slots for value in slot))
        hue_at = (order == HUE).int().argmax(dim=1)
        slots = []
        for position, used in [(k, k < hue_at) for k in range(3)] + [(k, k > hue_at) for k in range(1, 4)]:
            slots.append((torch.where(used, factor[:, position], 1), mean_weight[:, position] * used,
                          luma_weight[:, position] * used))
        return columns(*(value for slot in slots for value in slot), params["hue"])

    def apply_prepared(self, batch, prepared, generator=None):
        table = prepared.to(batch.dtype)
        shape = tuple(batch.shape)
        hue = self._hue_step(shape)
        for slot in range(self._slots(shape)):
            if hue and slot == 3:
                batch = hue_shift(batch, table[:, -1])
            batch = self._blend(batch, *(table[:, 3 * slot + k] for k in range(3)))
        return batch

    @staticmethod
    def _blend(batch: Tensor, factor: Tensor, mean_weight: Tensor, luma_weight: Tensor) -> Tensor:
        """torchvision's blend, per sample: clamp(f * x + (1 - f) * target, 0, 1)."""
        luma = grayscale(batch)
        target = torch.addcmul(per_sample(mean_weight) * luma.mean(dim=(1, 2, 3), keepdim=True),
                               per_sample(luma_weight), luma)
        return torch.lerp(target, batch, per_sample(factor)).clamp_(0, 1)


class RandomGrayscale(DeviceOp):
    """torchvision's RandomGrayscale per sample: with probability p an RGB image becomes its luma in all three
    channels."""

    name = "RandomGrayscale"

    def __init__(self, spec: v2.RandomGrayscale) -> None:
        self.p = float(spec.p)

    def sample_params(self, shape, device, generator=None):
        return {"gray": rand(shape[0], device, generator) < self.p}

    def width(self, shape):
        return 1

    def prepare(self, params, shape):
        return columns(params["gray"])

    def apply_prepared(self, batch, prepared, generator=None):
        if batch.shape[1] == 1:
            return batch
        # lerp with a weight of exactly 0 or 1 returns that end exactly
        return torch.lerp(batch, grayscale(batch).expand_as(batch), per_sample(prepared[:, 0]).to(batch.dtype))
