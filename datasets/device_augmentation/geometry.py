"""Per-sample RandomAffine and RandomRotation on a device batch: one inverse matrix per sample, then
`F.affine_grid` + `F.grid_sample`.

Coordinates follow torchvision's tensor kernels: pixel centres measured from the image centre, y pointing down,
`align_corners=False`, so a parameter set here moves pixels where `v2.functional.affine` / `rotate` move them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

from datasets.device_augmentation.ops import DeviceOp, RandomFlip, constant, uniform
from utils.errors import ConfigError

GRID_MODES = {InterpolationMode.NEAREST: "nearest", InterpolationMode.BILINEAR: "bilinear",
              InterpolationMode.BICUBIC: "bicubic"}


def _grid_mode(spec: v2.RandomAffine | v2.RandomRotation) -> str:
    name = type(spec).__name__
    try:
        mode = InterpolationMode(spec.interpolation) if isinstance(spec.interpolation, str) else spec.interpolation
    except ValueError:
        mode = spec.interpolation
    if mode not in GRID_MODES:
        valid = ", ".join(m.value for m in GRID_MODES)
        raise ConfigError(f"gpu augmentation {name} parameter 'interpolation' is {spec.interpolation!r}; "
                          f"on the device it must be one of {valid}")
    return GRID_MODES[mode]


def _fill(spec: v2.RandomAffine | v2.RandomRotation) -> list[float] | None:
    fill = spec.fill
    if isinstance(fill, dict):
        raise ConfigError(f"gpu augmentation {type(spec).__name__} parameter 'fill' must be a number or a list of "
                          "numbers on the device, not a mapping")
    values = [float(v) for v in fill] if isinstance(fill, (list, tuple)) else [float(fill or 0)]
    return None if all(v == 0 for v in values) else values


def affine_matrices(angle: Tensor, translate_x: Tensor, translate_y: Tensor, scale: Tensor, shear_x: Tensor,
                    shear_y: Tensor) -> Tensor:
    """(B, 2, 3) forward matrices in centred pixel coordinates (degrees for the angles), in torchvision's meaning:
    translate . rotate(angle) . scale . y-shear . x-shear, about the image centre."""
    a, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    cos, sin, tan_x, tan_y = torch.cos(a), torch.sin(a), torch.tan(sx), torch.tan(sy)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rotation = torch.stack([cos, -sin, sin, cos], dim=-1).view(-1, 2, 2)
    shear_y_m = torch.stack([one, zero, -tan_y, one], dim=-1).view(-1, 2, 2)
    shear_x_m = torch.stack([one, -tan_x, zero, one], dim=-1).view(-1, 2, 2)
    linear = scale.view(-1, 1, 1) * rotation @ shear_y_m @ shear_x_m
    return torch.cat([linear, torch.stack([translate_x, translate_y], dim=-1).unsqueeze(-1)], dim=-1)


def _precise(values: Tensor) -> Tensor:
    # A few numbers per sample: float64 where they are usually made, on a worker's CPU (not every GPU has float64).
    return values.double() if values.device.type == "cpu" else values.float()


def grid_theta(forward: Tensor, center: tuple[float, float], height: int, width: int) -> Tensor:
    """(B, 6) `F.affine_grid` matrices (flattened) that resample through each forward matrix (B, 2, 3) about
    `center` (pixels from the image centre), in grid_sample's [-1, 1] coordinates with align_corners=False."""
    forward = _precise(forward)
    linear, shift = forward[:, :, :2], forward[:, :, 2]
    a, b, c, d = linear[:, 0, 0], linear[:, 0, 1], linear[:, 1, 0], linear[:, 1, 1]
    inverse = torch.stack([d, -b, -c, a], dim=-1).view(-1, 2, 2) / (a * d - b * c).view(-1, 1, 1)
    # Output point p came from inverse @ (p - center - shift) + center.
    centre = constant(tuple(center), forward.device, forward.dtype)
    offset = centre - (inverse @ (centre + shift).unsqueeze(-1)).squeeze(-1)
    # Centred pixels -> grid_sample's [-1, 1] coordinates (align_corners=False): x / (W/2), y / (H/2).
    half = constant((width / 2, height / 2), forward.device, forward.dtype)
    theta = torch.cat([inverse * half.view(1, 1, 2) / half.view(1, 2, 1), (offset / half).unsqueeze(-1)], dim=-1)
    return theta.reshape(-1, 6).float()


def warp(batch: Tensor, theta: Tensor, mode: str, fill: list[float] | None) -> Tensor:
    """Resample each image through its `grid_theta` row (B, 6); points from outside the image take `fill`
    (None = 0)."""
    # The grid does not depend on the channel count; 1 there keeps affine_grid's size check (`min(size) <= 0`) from
    # comparing the batch size with the channels, which would make torch.compile specialise on batches above 3.
    size = [batch.shape[0], 1, batch.shape[2], batch.shape[3]]
    grid = F.affine_grid(theta.reshape(-1, 2, 3).to(batch.dtype), size, align_corners=False)
    if fill is None:
        return F.grid_sample(batch, grid, mode=mode, padding_mode="zeros", align_corners=False).clamp_(0, 1)
    # A ones channel sampled alongside tells how much of each output pixel came from inside the image.
    ones = torch.ones_like(batch[:, :1])
    sampled = F.grid_sample(torch.cat([batch, ones], dim=1), grid, mode=mode, padding_mode="zeros",
                            align_corners=False)
    image, inside = sampled[:, :-1], sampled[:, -1:].clamp(0, 1)
    fill_t = constant(tuple(fill), batch.device, batch.dtype).view(1, -1, 1, 1)
    return (image + (1 - inside) * fill_t).clamp_(0, 1)


def _center(spec: v2.RandomAffine | v2.RandomRotation, height: int, width: int) -> tuple[float, float]:
    # torchvision's `center` is in pixels from the top-left corner; ours from the image centre.
    if spec.center is None:
        return 0.0, 0.0
    return float(spec.center[0]) - width / 2, float(spec.center[1]) - height / 2


class RandomAffine(DeviceOp):
    """torchvision's RandomAffine per sample: angle, translation (whole pixels, rounded as torchvision does),
    scale and shear each drawn uniformly from their configured ranges."""

    name = "RandomAffine"

    def __init__(self, spec: v2.RandomAffine) -> None:
        self.spec = spec
        self.mode = _grid_mode(spec)
        self.fill = _fill(spec)

    def sample_params(self, shape, device, generator=None):
        batch_size, _, height, width = shape
        spec, n = self.spec, batch_size

        def draw(low: float, high: float) -> Tensor:
            return uniform(low, high, n, device, generator)

        zeros = torch.zeros(n, device=device)
        params = {"angle": draw(*spec.degrees)}
        if spec.translate is not None:
            max_dx, max_dy = float(spec.translate[0] * width), float(spec.translate[1] * height)
            # torch.round rounds half to even, like Python's round() in torchvision.
            params["translate_x"] = draw(-max_dx, max_dx).round()
            params["translate_y"] = draw(-max_dy, max_dy).round()
        else:
            params["translate_x"], params["translate_y"] = zeros, zeros.clone()
        params["scale"] = draw(*spec.scale) if spec.scale is not None else torch.ones(n, device=device)
        shear = spec.shear
        params["shear_x"] = draw(shear[0], shear[1]) if shear is not None else zeros.clone()
        params["shear_y"] = draw(shear[2], shear[3]) if shear is not None and len(shear) == 4 else zeros.clone()
        return params

    def width(self, shape):
        return 6

    def prepare(self, params, shape):
        forward = affine_matrices(**{k: _precise(params[k]) for k in
                                     ("angle", "translate_x", "translate_y", "scale", "shear_x", "shear_y")})
        return grid_theta(forward, _center(self.spec, *shape[-2:]), *shape[-2:])

    def apply_prepared(self, batch, prepared, generator=None):
        return warp(batch, prepared, self.mode, self.fill)


class RandomRotation(DeviceOp):
    """torchvision's RandomRotation per sample: angle uniform in the configured range, counter-clockwise for
    positive angles (torchvision's rotate turns the opposite way to its affine); the image keeps its size."""

    name = "RandomRotation"

    def __init__(self, spec: v2.RandomRotation) -> None:
        if spec.expand:
            raise ConfigError("gpu augmentation RandomRotation parameter 'expand' must be false on the device "
                              "(every image of a batch keeps its size)")
        self.spec = spec
        self.mode = _grid_mode(spec)
        self.fill = _fill(spec)

    def sample_params(self, shape, device, generator=None):
        return {"angle": uniform(*self.spec.degrees, shape[0], device, generator)}

    def width(self, shape):
        return 6

    def prepare(self, params, shape):
        angle = _precise(params["angle"])
        zeros = torch.zeros_like(angle)
        forward = affine_matrices(-angle, zeros, zeros, torch.ones_like(angle), zeros, zeros)
        return grid_theta(forward, _center(self.spec, *shape[-2:]), *shape[-2:])

    def apply_prepared(self, batch, prepared, generator=None):
        return warp(batch, prepared, self.mode, self.fill)


class FlipThenWarp(DeviceOp):
    """A RandomHorizontalFlip or RandomVerticalFlip directly followed by a RandomAffine or RandomRotation, as one
    resampling: mirroring is affine too, so each flipped sample's warp matrix takes the flip in. Each op draws its
    parameters as it would alone; the batch is read and written once instead of three times."""

    def __init__(self, flip: RandomFlip, warp: RandomAffine | RandomRotation) -> None:
        self.flip, self.warp = flip, warp
        self.name = f"{flip.name} + {warp.name}"

    def sample_params(self, shape, device, generator=None):
        return {"flip": self.flip.sample_params(shape, device, generator)["flip"],
                "warp": self.warp.sample_params(shape, device, generator)}

    def width(self, shape):
        return self.warp.width(shape)

    def prepare(self, params, shape):
        theta = self.warp.prepare(params["warp"], shape).view(-1, 2, 3).clone()
        # The warp samples the flipped image at theta @ (x, y, 1); in grid_sample's centred coordinates the
        # flipped image's point (x, y) is the original's (-x, y), or (x, -y) for a vertical flip.
        row = 0 if self.flip.dim == -1 else 1
        theta[:, row] *= (1 - 2 * params["flip"].float())[:, None]
        return theta.reshape(-1, 6)

    def apply_prepared(self, batch, prepared, generator=None):
        return self.warp.apply_prepared(batch, prepared, generator)
