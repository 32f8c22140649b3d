"""Measure an exported model against its checkpoint: accuracy on the validation split, file size, CPU latency.

    python -m models.verify_exported --model PATH [-d DATA_PATH] [--runs 50]

`PATH` is a file written by `models.export` (`.onnx`, `.ort` or `.pte`, with its `.json` beside it, which names the
checkpoint). Every validation image (the prepared data's `test` split, preprocessed as in training's validation) goes
through the exported model with ONNX Runtime or ExecuTorch's runtime and through the checkpoint's network in PyTorch,
one image at a time; top-1 and top-5 of both are printed side by side with how often their top-1 agree. Latency is
the median of `--runs` single-image (batch 1) runs after ten untimed ones, on one CPU thread, for both models in the
same process. An int8 model whose top-1 falls more than one point below the checkpoint's is reported with the gap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.cli import positive_int, run_main
from utils.errors import UserError

WARMUP_RUNS = 10
INT8_ALLOWED_DROP = 1.0  # percentage points of top-1


@dataclass
class Verification:
    """An exported model beside its checkpoint on the validation split (accuracies in %)."""

    images: int
    k: int
    top1: float
    topk: float
    reference_top1: float
    reference_topk: float
    agreement: float  # % of images whose top-1 class is the same for both
    max_logit_difference: float
    size_mb: float
    reference_size_mb: float
    latency_ms: float
    reference_latency_ms: float


def runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function running the exported model on one input batch, on one CPU thread."""
    if path.suffix == ".pte":
        from models.export_executorch import PteRunner

        PteRunner.use_one_thread()
        return PteRunner(path)
    from models.export_onnx import require

    require(("onnxruntime",), f"Running {path.name}")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: torch.from_numpy(session.run(None, {name: batch.numpy()})[0])


def median_latency_ms(run: Callable[[torch.Tensor], object], batch: torch.Tensor, runs: int) -> float:
    """Median wall time (ms) of `runs` calls after WARMUP_RUNS untimed ones."""
    for _ in range(WARMUP_RUNS):
        run(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def read_description(model: Path) -> dict:
    if not model.is_file():
        raise UserError(f"--model {model} not found: write it with python -m models.export")
    sidecar = model.with_suffix(".json")
    if not sidecar.is_file():
        raise UserError(f"{sidecar} not found: models.export writes it beside {model.name}")
    return json.loads(sidecar.read_text())


def measure(model: Path, data_path: Path | None = None, runs: int = 50) -> Verification:
    """Run `model` and its checkpoint's network over the validation split and time both at batch 1."""
    from datasets.prepared.stanford_data import StanfordCarsDataset
    from models.export import model_input
    from models.inference import eval_prefix, load_module

    description = read_description(model)
    checkpoint = Path(description["checkpoint"])
    module = load_module(checkpoint)
    if data_path is None:
        from models.evaluate import default_data_path

        data_path = default_data_path(checkpoint)
    with_preprocessing = description["preprocessing"]["with_preprocessing"]
    dataset = StanfordCarsDataset(Path(data_path), "test", eval_prefix(module))
    run_exported = runner(model)
    net = module.net.eval()
    k = min(5, module.hparams.num_classes)
    hits = np.zeros((4,), dtype=np.int64)  # exported top-1, top-k, reference top-1, top-k
    agree, max_difference = 0, 0.0
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for index in tqdm(range(len(dataset)), desc=f"validating {model.name}", unit="image"):
                image, label = dataset[index]
                exported = run_exported(model_input(module, image[None], with_preprocessing)).float()
                reference = net(module.preprocess(image[None], train=False))
                for offset, logits in ((0, exported), (2, reference)):
                    top = logits.topk(k, dim=1).indices[0]
                    hits[offset] += int(top[0] == label)
                    hits[offset + 1] += int(label in top)
                agree += int(exported.argmax() == reference.argmax())
                max_difference = max(max_difference, float((exported - reference).abs().max()))
            image = dataset[0][0][None]
            exported_latency = median_latency_ms(run_exported, model_input(module, image, with_preprocessing), runs)
            reference_latency = median_latency_ms(net, module.preprocess(image, train=False), runs)
    finally:
        torch.set_num_threads(previous_threads)
    count = len(dataset)
    top1, topk, reference_top1, reference_topk = (100 * hits / count).tolist()
    return Verification(
        images=count, k=k, top1=top1, topk=topk, reference_top1=reference_top1, reference_topk=reference_topk,
        agreement=100 * agree / count, max_logit_difference=max_difference,
        size_mb=model.stat().st_size / 1e6,
        reference_size_mb=sum(p.numel() * p.element_size() for p in net.parameters()) / 1e6,
        latency_ms=exported_latency, reference_latency_ms=reference_latency,
    )


def report(model: Path, result: Verification, precision: str) -> str:
    """The side-by-side table and, for int8, whether top-1 stays within INT8_ALLOWED_DROP points."""
    lines = [
        f"{result.images} validation images; latency: batch 1, 1 CPU thread, median after {WARMUP_RUNS} warm-up runs",
        f"| model | top-1 (%) | top-{result.k} (%) | size (MB) | latency (ms) |",
        "|---|---:|---:|---:|---:|",
        f"| {model.name} ({precision}) | {result.top1:.2f} | {result.topk:.2f} | {result.size_mb:.2f} | "
        f"{result.latency_ms:.2f} |",
        f"| checkpoint in PyTorch (float32) | {result.reference_top1:.2f} | {result.reference_topk:.2f} | "
        f"{result.reference_size_mb:.2f} | {result.reference_latency_ms:.2f} |",
        f"top-1 agreement with PyTorch: {result.agreement:.2f} %; largest logit difference: "
        f"{result.max_logit_difference:.4g}",
    ]
    drop = result.reference_top1 - result.top1
    if precision == "int8":
        if drop <= INT8_ALLOWED_DROP:
            lines.append(f"int8 keeps top-1 within {INT8_ALLOWED_DROP:g} point of float32 ({drop:+.2f} points lost)")
        else:
            lines.append(f"int8 does NOT keep top-1 within {INT8_ALLOWED_DROP:g} point of float32: "
                         f"{drop:.2f} points lost")
    return "\n".join(lines)


def verify(model: Path, data_path: Path | None = None, runs: int = 50) -> Verification:
    """Measure `model` and print the report."""
    result = measure(model, data_path, runs)
    print(report(model, result, read_description(model).get("precision", "float32")))
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.verify_exported", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a file written by models.export (.onnx, .ort or .pte)")
    parser.add_argument("-d", "--data-path", help="prepared data (default: stanford_data_path of the run's config.yml)")
    parser.add_argument("--runs", type=positive_int, default=50, help="timed runs for the latency (default: 50)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    verify(Path(args.model), Path(args.data_path) if args.data_path else None, args.runs)
    return 0


if __name__ == "__main__":
    run_main(main)
