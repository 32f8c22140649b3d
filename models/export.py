"""Export a checkpoint's network for deployment: ONNX or TorchScript, plus a JSON with class names and preprocessing.

    python -m models.export --checkpoint CKPT --format onnx|torchscript --output PATH

Input contract of the exported model (also written to `PATH` with suffix `.json`):
- one float32 tensor `images` of shape (batch, channels, height, width); the batch size is free, height and width
  are the checkpoint's `image_size`, channels 3 (RGB, in that order) or 1 (grayscale) as it was trained;
- pixels prepared as in evaluation: decode, convert to RGB, resize the whole image to (height, width) with bilinear
  interpolation and antialiasing (no crop), convert to grayscale (ITU-R 601-2 luma, as PIL's "L") when channels is 1,
  scale to [0, 1] (divide uint8 values by 255), then normalise each channel: (x - mean) / std;
- the output `logits` has shape (batch, num_classes); softmax gives probabilities; index i is class id i + 1 and
  `class_names[i]` in the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from utils.cli import run_main
from utils.errors import UserError

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# torch.export specialises a dimension whose example size is 0 or 1, so the example batch has 2 images.
EXAMPLE_BATCH = 2


def preprocessing_contract(module: torch.nn.Module) -> dict[str, Any]:
    """What a caller must do to an image before the exported model sees it (values from the checkpoint)."""
    channels = module.hparams.img_channels
    normalization = module.hparams.normalization
    return {
        "input_name": INPUT_NAME,
        "input_shape": ["batch", channels, *module.hparams.image_size],
        "dtype": "float32",
        "image_size": list(module.hparams.image_size),
        "channels": channels,
        "grayscale": channels == 1,
        "channel_order": "RGB" if channels == 3 else "L (PIL luma of the RGB image)",
        "resize": {"interpolation": "bilinear", "antialias": True, "keep_aspect_ratio": False},
        "value_range_before_normalization": [0.0, 1.0],
        "normalize": normalization is not None,
        # Without normalization in training, mean 0 and std 1 make the same formula a no-op.
        "mean": list(normalization["mean"]) if normalization else [0.0] * channels,
        "std": list(normalization["std"]) if normalization else [1.0] * channels,
        "output_name": OUTPUT_NAME,
        "output": "logits (batch, num_classes); softmax gives probabilities; index i is class_ids[i]",
    }


def export_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX with the torch.export-based exporter (torch's default since 2.9), one self-contained file."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"ONNX export needs the {' and '.join(missing)} package(s): pip install onnx onnxscript")
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(net, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)


def export_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript by tracing (the networks have no data-dependent control flow in eval mode)."""
    with warnings.catch_warnings():
        # torch deprecates TorchScript in favour of torch.export; the user asked for it, so no warning each time.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
        traced = torch.jit.trace(net, example)
    traced.save(str(path))


def export(checkpoint: Path, fmt: str, output: Path) -> Path:
    """Write the network of `checkpoint` to `output` in `fmt`, and its contract to `output` with suffix .json."""
    from models.inference import class_names, load_module

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    sidecar = output.with_suffix(".json")
    if sidecar == output:
        raise UserError(f"--output {output} ends in .json, which is where the preprocessing goes: use e.g. "
                        f"{output.with_suffix('.onnx' if fmt == 'onnx' else '.pt')}")
    module = load_module(checkpoint)
    net = module.net.eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(EXAMPLE_BATCH, module.hparams.img_channels, *module.hparams.image_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        (export_onnx if fmt == "onnx" else export_torchscript)(net, example, output)
    names = class_names(module)
    description = {
        "format": fmt,
        "model_file": output.name,
        "architecture": module.hparams.architecture,
        "checkpoint": str(checkpoint),
        "num_classes": len(names),
        "preprocessing": preprocessing_contract(module),
        "class_ids": list(range(1, len(names) + 1)),
        "class_names": names,
    }
    sidecar.write_text(json.dumps(description, indent=2) + "\n")
    return sidecar


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of train.py, e.g. <run>/checkpoints/best.ckpt")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (needs onnx and onnxscript) or torchscript")
    parser.add_argument("--output", required=True, help="the model file to write, e.g. ghost.onnx or ghost.pt; "
                                                        "its preprocessing goes beside it with suffix .json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    sidecar = export(Path(args.checkpoint), args.format, output)
    print(f"wrote {output} ({args.format}) and {sidecar}")
    return 0


if __name__ == "__main__":
    run_main(main)
