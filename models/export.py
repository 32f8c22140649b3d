"""Export a checkpoint's network for phones: ONNX, ONNX Runtime Mobile (.ort) or ExecuTorch (.pte), fp32 or int8.

    python -m models.export --checkpoint CKPT --format onnx|ort|executorch --output PATH
        [--int8] [--calibration-images N] [--seed S] [-d DATA_PATH] [--with-preprocessing] [--verify]

`PATH` is the model file (`.onnx`, `.ort` or `.pte`); the labels and the preprocessing contract go to `PATH` with
suffix `.json` (and the `.ort` format's operator config to `<stem>.required_operators.config`).

Input of the exported model, as the JSON says:
- default: one float32 tensor `images` (batch, channels, height, width): the image resized to the checkpoint's
  `image_size` (bilinear, antialiased, whole image), RGB (or PIL "L" luma when the model is grayscale), scaled to
  [0, 1] and normalised per channel with the JSON's mean and std;
- `--with-preprocessing`: one uint8 tensor `images` (batch, height, width, channels), the resized pixels as an app
  has them (0-255, RGB); the model scales and normalises inside.
The output `logits` has shape (batch, num_classes); index i is class id i + 1 and `class_names[i]` in the JSON.
`--int8` quantizes after training (static, per-channel weights), calibrated on N training images of the prepared
data chosen with `--seed`. `--verify` then runs the written model on the validation split (`models/verify_exported.py`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.export_onnx import INPUT_NAME, OUTPUT_NAME, convert_to_ort, quantize_onnx, require, write_onnx
from utils.cli import positive_int, run_main
from utils.errors import UserError

SUFFIXES = {"onnx": ".onnx", "ort": ".ort", "executorch": ".pte"}
FORMATS = tuple(SUFFIXES)
# torch.export specialises a dimension whose example size is 0 or 1, so the example batch of ONNX has 2 images.
EXAMPLE_BATCH = 2
DEFAULT_CALIBRATION_IMAGES = 128


class WithPreprocessing(nn.Module):
    """uint8 pixels (batch, height, width, channels) -> the network's logits; scaling and normalisation inside."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std in one multiply-add, the same arithmetic as NetModule.preprocess
        self.register_buffer("scale", 1 / (255 * std_t))
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = pixels.permute(0, 3, 1, 2).to(torch.float32)
        return self.net(images * self.scale + self.shift)


def normalization(module: nn.Module) -> tuple[list[float], list[float]]:
    """The checkpoint's mean and std (0 and 1 when training did not normalise: the formula is then a no-op)."""
    channels = module.hparams.img_channels
    params = module.hparams.normalization
    if params is None:
        return [0.0] * channels, [1.0] * channels
    return list(params["mean"]), list(params["std"])


def preprocessing_contract(module: nn.Module, with_preprocessing: bool = False, batch: str | int = "batch"
                           ) -> dict[str, Any]:
    """What a caller must do to an image before the exported model sees it (values from the checkpoint)."""
    channels = module.hparams.img_channels
    height, width = module.hparams.image_size
    mean, std = normalization(module)
    contract = {
        "input_name": INPUT_NAME,
        "image_size": [height, width],
        "channels": channels,
        "grayscale": channels == 1,
        "channel_order": "RGB" if channels == 3 else "L (PIL luma of the RGB image)",
        "resize": {"interpolation": "bilinear", "antialias": True, "keep_aspect_ratio": False},
        "with_preprocessing": with_preprocessing,
        "mean": mean,
        "std": std,
        "output_name": OUTPUT_NAME,
        "output": "logits (batch, num_classes); softmax gives probabilities; index i is class_ids[i]",
    }
    if with_preprocessing:
        contract.update({"input_shape": [batch, height, width, channels], "layout": "NHWC", "dtype": "uint8",
                         "value_range": [0, 255], "normalize": "inside the model"})
    else:
        contract.update({"input_shape": [batch, channels, height, width], "layout": "NCHW", "dtype": "float32",
                         "value_range_before_normalization": [0.0, 1.0],
                         "normalize": "(x - mean) / std per channel, by the caller"})
    return contract


def calibration_images(module: nn.Module, data_path: Path, count: int, seed: int) -> list[torch.Tensor]:
    """`count` training images (uint8, (C, H, W), eval preprocessing: whole image, no crop) drawn with `seed`."""
    from datasets.prepared.stanford_data import StanfordCarsDataset
    from models.inference import eval_prefix

    dataset = StanfordCarsDataset(data_path, "train", eval_prefix(module))
    chosen = np.random.default_rng(seed).permutation(len(dataset))[:count]
    return [dataset[int(i)][0] for i in chosen]


def model_input(module: nn.Module, images: torch.Tensor, with_preprocessing: bool) -> torch.Tensor:
    """A uint8 batch (B, C, H, W) after the eval prefix, as the exported model takes it."""
    if with_preprocessing:
        return images.permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        return module.preprocess(images, train=False).contiguous()


def check_output(fmt: str, output: Path) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if output.suffix != SUFFIXES[fmt]:
        raise UserError(f"--output {output} should end in {SUFFIXES[fmt]} for --format {fmt} "
                        f"(its labels and preprocessing go beside it as {output.stem}.json)")


def export(checkpoint: Path, fmt: str, output: Path, int8: bool = False, with_preprocessing: bool = False,
           data_path: Path | None = None, calibration_count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0
           ) -> Path:
    """Write the network of `checkpoint` to `output` in `fmt`, and its contract to `output` with suffix .json."""
    from models.inference import class_names, load_module

    check_output(fmt, output)
    require(("executorch",) if fmt == "executorch" else ("onnx", "onnxscript", "onnxruntime"),
            f"--format {fmt}")
    module = load_module(checkpoint)
    calibration = None
    if int8:
        if data_path is None:
            from models.evaluate import default_data_path

            data_path = default_data_path(checkpoint)
        images = calibration_images(module, Path(data_path), calibration_count, seed)
        calibration = [model_input(module, image[None], with_preprocessing) for image in images]
    net = module.net.eval().to(memory_format=torch.contiguous_format)
    mean, std = normalization(module)
    if with_preprocessing:
        net = WithPreprocessing(net, mean, std).eval()
    batch = 1 if fmt == "executorch" else EXAMPLE_BATCH
    example = model_input(module, torch.randint(0, 256, (batch, module.hparams.img_channels,
                                                         *module.hparams.image_size), dtype=torch.uint8),
                          with_preprocessing)
    output.parent.mkdir(parents=True, exist_ok=True)
    description: dict[str, Any] = {}
    if fmt == "executorch":
        from models.export_executorch import write_pte

        write_pte(net, example, output, calibration)
    else:
        with tempfile.TemporaryDirectory() as folder:
            onnx_path = output if fmt == "onnx" and not int8 else Path(folder) / "fp32.onnx"
            write_onnx(net, example, onnx_path)
            if int8:
                int8_path = output if fmt == "onnx" else Path(folder) / "int8.onnx"
                quantize_onnx(onnx_path, int8_path, [batch.numpy() for batch in calibration])
                onnx_path = int8_path
            if fmt == "ort":
                description["operator_config"] = convert_to_ort(onnx_path, output).name
    names = class_names(module)
    description = {
        "format": fmt,
        "model_file": output.name,
        "precision": "int8" if int8 else "float32",
        **({"calibration": {"images": len(calibration), "split": "train", "seed": seed,
                            "data_path": str(data_path)}} if int8 else {}),
        **description,
        "architecture": module.hparams.architecture,
        "checkpoint": str(checkpoint),
        "num_classes": len(names),
        "preprocessing": preprocessing_contract(module, with_preprocessing, 1 if fmt == "executorch" else "batch"),
        "class_ids": list(range(1, len(names) + 1)),
        "class_names": names,
    }
    sidecar = output.with_suffix(".json")
    sidecar.write_text(json.dumps(description, indent=2) + "\n")
    return sidecar


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of train.py, e.g. <run>/checkpoints/best.ckpt")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="onnx, ort (ONNX Runtime Mobile) or executorch (.pte for XNNPACK); "
                             "needs pip install -r export_requirements.txt")
    parser.add_argument("--output", required=True, help="the model file to write (.onnx, .ort or .pte); its labels "
                                                        "and preprocessing go beside it with suffix .json")
    parser.add_argument("--int8", action="store_true", help="post-training static int8 quantization")
    parser.add_argument("--calibration-images", type=positive_int, default=DEFAULT_CALIBRATION_IMAGES,
                        help=f"training images that calibrate --int8 (default: {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--seed", type=int, default=0, help="picks the calibration images (default: 0)")
    parser.add_argument("-d", "--data-path", help="prepared data for calibration and --verify (default: "
                                                  "stanford_data_path of the run's config.yml)")
    parser.add_argument("--with-preprocessing", action="store_true",
                        help="the model takes uint8 RGB pixels (batch, height, width, channels) and normalises them")
    parser.add_argument("--verify", action="store_true",
                        help="then run the model on the validation split: accuracy, size and latency beside PyTorch")
    parser.add_argument("--runs", type=positive_int, default=50, help="timed runs for --verify's latency (default: 50)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    data_path = Path(args.data_path) if args.data_path else None
    if not args.int8 and args.calibration_images != DEFAULT_CALIBRATION_IMAGES:
        raise UserError("--calibration-images only applies with --int8")
    sidecar = export(Path(args.checkpoint), args.format, output, args.int8, args.with_preprocessing, data_path,
                     args.calibration_images, args.seed)
    print(f"wrote {output} ({args.format}, {'int8' if args.int8 else 'float32'}) and {sidecar}")
    if args.verify:
        from models.verify_exported import verify

        verify(output, data_path, runs=args.runs)
    return 0


if __name__ == "__main__":
    run_main(main)
