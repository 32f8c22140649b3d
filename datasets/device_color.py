"""Per-sample ColorJitter and RandomGrayscale on a device batch, with the formulas of torchvision's tensor kernels
(`adjust_brightness`, `adjust_contrast`, `adjust_saturation`, `adjust_hue`, `rgb_to_grayscale`).

1-channel images keep their pixels under saturation, hue and grayscale, as torchvision (and PIL) leave them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2

from datasets.device_ops import DeviceOp, constant, per_sample, uniform

# ITU-R 601-2 luma weights, the ones torchvision's rgb_to_grayscale uses.
LUMA = (0.2989, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def grayscale(batch: Tensor) -> Tensor:
    """(B, 1, H, W) luma of an RGB batch; a 1-channel batch is its own luma."""
    if batch.shape[1] == 1:
        return batch
    r, g, b = batch.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def hue_shift(batch: Tensor, shift: Tensor) -> Tensor:
    """Rotate each RGB image's hue by shift (B,) turns, keeping HSV saturation and value."""
    minc, maxc = batch.aminmax(dim=1, keepdim=True)
    chroma = maxc - minc
    r, g, b = batch.unbind(dim=1)
    r, g, b = r.unsqueeze(1), g.unsqueeze(1), b.unsqueeze(1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # Hue in sixths of a turn, from whichever channel is the largest (red first on ties).
    hue6 = torch.where(maxc == r, ((g - b) / safe) % 6,
                       torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue6 = torch.where(chroma > 0, hue6, torch.zeros_like(hue6))
    hue6 = (hue6 + 6 * per_sample(shift)) % 6
    # HSV -> RGB without branches: channel n (R=5, G=3, B=1) is max - chroma * clamp(min(k, 4 - k), 0, 1),
    # with k = (n + hue6) mod 6.
    n = constant((5.0, 3.0, 1.0), batch.device, batch.dtype).view(1, 3, 1, 1)
    k = (n + hue6) % 6
    return maxc - chroma * torch.minimum(k, 4 - k).clamp(0, 1)


class ColorJitter(DeviceOp):
    """torchvision's ColorJitter per sample: each sample draws its four factors and its own order of the four
    adjustments; components left out of the config are skipped."""

    name = "ColorJitter"

    def __init__(self, spec: v2.ColorJitter) -> None:
        self.ranges = (spec.brightness, spec.contrast, spec.saturation, spec.hue)

    def sample_params(self, shape, device, generator=None):
        batch_size = shape[0]
        # argsort of uniform keys: a uniformly random permutation of the four adjustments per sample.
        order = torch.rand(batch_size, 4, device=device, generator=generator).argsort(dim=1)
        params = {"order": order}
        neutral = (1.0, 1.0, 1.0, 0.0)
        for key, bounds, identity in zip(("brightness", "contrast", "saturation", "hue"), self.ranges, neutral):
            if bounds is None:
                params[key] = torch.full((batch_size,), identity, device=device)
            else:
                params[key] = uniform(bounds[0], bounds[1], batch_size, device, generator)
        return params

    def apply(self, batch, params):
        rgb = batch.shape[1] == 3
        factors = torch.stack([params["brightness"], params["contrast"], params["saturation"]], dim=1)
        factors = factors.to(batch.dtype)
        for position in range(4):
            op = params["order"][:, position]
            # Brightness, contrast and saturation all blend the image with a target (black, mean grey, luma):
            # one blend per position with each sample's own factor; factor 1 leaves a sample unchanged.
            blended = op < HUE if rgb else (op == BRIGHTNESS) | (op == CONTRAST)
            if self.ranges[BRIGHTNESS] is None:
                blended &= op != BRIGHTNESS
            if self.ranges[CONTRAST] is None:
                blended &= op != CONTRAST
            if self.ranges[SATURATION] is None:
                blended &= op != SATURATION
            factor = torch.where(blended, factors.gather(1, op.clamp(max=2).unsqueeze(1)).squeeze(1),
                                 torch.ones_like(factors[:, 0]))
            luma = grayscale(batch)
            target = torch.where(per_sample(op == CONTRAST), luma.mean(dim=(1, 2, 3), keepdim=True), luma)
            target = torch.where(per_sample(op == BRIGHTNESS), torch.zeros_like(target), target)
            f = per_sample(factor)
            batch = (f * batch + (1 - f) * target).clamp(0, 1)
            if rgb and self.ranges[HUE] is not None:
                shifted = op == HUE
                batch = torch.where(per_sample(shifted), hue_shift(batch, params["hue"].to(batch.dtype)), batch)
        return batch


class RandomGrayscale(DeviceOp):
    """torchvision's RandomGrayscale per sample: with probability p an RGB image becomes its luma in all three
    channels."""

    name = "RandomGrayscale"

    def __init__(self, spec: v2.RandomGrayscale) -> None:
        self.p = float(spec.p)

    def sample_params(self, shape, device, generator=None):
        return {"gray": torch.rand(shape[0], device=device, generator=generator) < self.p}

    def apply(self, batch, params):
        if batch.shape[1] == 1:
            return batch
        return torch.where(per_sample(params["gray"]), grayscale(batch).expand_as(batch), batch)
