"""Predict car models from images with a training checkpoint alone.

    python predict.py --checkpoint CKPT IMAGE_OR_DIR [IMAGE_OR_DIR ...] [--top-k 5] [--batch-size 32] [--json]
                      [--device auto|cpu|cuda]

A folder means its image files (jpg, jpeg, png, bmp, webp; sorted by name). Images that cannot be read are reported
on stderr, one line each naming the file, and the rest are still predicted; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utils.cli import device_option, positive_int, run_main
from utils.errors import UserError
from utils.files import checkpoint_path_problem


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Predict the car model in each image with a checkpoint of train.py.")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of train.py, e.g. <run>/checkpoints/best.ckpt")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes to print per image (default: 5)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--device", type=device_option, default="auto",
                        help="where the network runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or "
                             "cuda:N (default: auto)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document ({images: [...], errors: [...]}) instead of text")
    args = parser.parse_args(argv)
    problem = checkpoint_path_problem(Path(args.checkpoint))
    if problem:  # checked before the heavy imports, so that a mistyped path answers at once
        raise UserError(problem)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Heavy imports after argument parsing, so that --help and usage errors answer at once.
    import torch
    from PIL import Image

    from models.inference import (
        class_names,
        eval_prefix,
        image_files,
        load_image,
        load_module,
        predict_probabilities,
        resolve_device,
    )
    from models.inference import top_k as best_classes

    paths = [path for given in args.inputs for path in image_files(Path(given))]
    if not paths:
        raise UserError(f"no image files in {', '.join(args.inputs)} (looked for jpg, jpeg, png, bmp, webp)")
    device = resolve_device(args.device)  # before reading the images: a missing GPU is said at once
    module = load_module(Path(args.checkpoint), device)
    names, prefix = class_names(module), eval_prefix(module)
    results, errors = [], []

    def flush(batch: list[tuple[Path, torch.Tensor]]) -> None:
        probabilities = predict_probabilities(module, torch.stack([tensor for _, tensor in batch]))
        for (path, _), predictions in zip(batch, best_classes(probabilities, names, args.top_k)):
            results.append({"image": str(path), "predictions": [p.as_dict() for p in predictions]})
            if not args.json:
                print(path)
                for p in predictions:
                    print(f"  {p.probability:7.2%}  {p.class_name} (class {p.class_id})")

    batch: list[tuple[Path, torch.Tensor]] = []
    for path in paths:
        try:
            batch.append((path, load_image(path, prefix)))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            errors.append({"image": str(path), "error": reason})
            print(f"error: cannot read image {path}: {reason}", file=sys.stderr)
            continue
        if len(batch) == args.batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "images": results, "errors": errors}, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    run_main(main)
