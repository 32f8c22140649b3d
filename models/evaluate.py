"""Evaluate a checkpoint on the test split: top-1 and top-5 accuracy, per-class accuracy, confusion matrix.

    python -m models.evaluate --checkpoint CKPT [-d DATA_PATH] [--output-dir DIR] [--batch-size 64]
                              [--device auto|cpu|cuda]

The data path defaults to `stanford_data_path` in the run's `config.yml` (`<run>/config.yml` beside
`<run>/checkpoints/`); the output folder to `<run>/evaluation/`. It receives `per_class_accuracy.csv`,
`predictions.csv` (one row per test image), `confusion_matrix.png` and `metrics.json`. Images are preprocessed as in
training's validation (`models/inference.py`). For `best.ckpt` of a run validated on the test split (the default) the
top-1 accuracy equals summary.json's `best_checkpoint_valid_acc` (the epoch the checkpoint holds is printed); with a
held-out validation split (`validation_split: 0.1`) it equals `test_acc`.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: evaluation runs on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix  # noqa: E402

from utils.cli import device_option, non_negative_int, positive_int, run_main  # noqa: E402
from utils.errors import ConfigError, DataError  # noqa: E402

log = logging.getLogger("cars")

WORST_CLASSES = 10
# Up to this many classes the confusion matrix names every class; above it ticks show every tenth class id.
NAMED_TICKS_MAX = 40


@dataclass
class Evaluation:
    """Results on one split: accuracies, the confusion matrix (rows: true, columns: predicted) and per-image rows."""

    top1: float
    topk: float
    k: int
    confusion: torch.Tensor
    per_class: pd.DataFrame
    predictions: pd.DataFrame


def default_data_path(checkpoint: Path) -> Path:
    """`stanford_data_path` of the run's config.yml (`<run>/checkpoints/CKPT` -> `<run>/config.yml`)."""
    from utils.configuration import read_yaml

    config_path = checkpoint.resolve().parent.parent / "config.yml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path} not found (the checkpoint is not inside a run folder): pass -d DATA_PATH")
    data_path = read_yaml(config_path).get("stanford_data_path")
    if not data_path:
        raise ConfigError(f"{config_path} has no stanford_data_path: pass -d DATA_PATH")
    return Path(data_path)


def default_output_dir(checkpoint: Path) -> Path:
    """`<run>/evaluation` for a checkpoint in a run folder; `<folder>/<checkpoint stem>_evaluation` beside any other."""
    run_dir = checkpoint.resolve().parent.parent
    if checkpoint.resolve().parent.name == "checkpoints" and (run_dir / "config.yml").is_file():
        return run_dir / "evaluation"
    return checkpoint.resolve().parent / f"{checkpoint.stem}_evaluation"


def per_class_table(confusion: torch.Tensor, names: list[str]) -> pd.DataFrame:
    """class_id (1-based), class_name, images, correct, accuracy (NaN for classes without test images)."""
    images = confusion.sum(dim=1)
    correct = confusion.diagonal()
    table = pd.DataFrame({
        "class_id": range(1, len(names) + 1),
        "class_name": names,
        "images": images.tolist(),
        "correct": correct.tolist(),
    })
    table["accuracy"] = table["correct"] / table["images"].where(table["images"] > 0)
    return table


def worst_classes(per_class: pd.DataFrame, count: int = WORST_CLASSES) -> pd.DataFrame:
    """The `count` classes with the lowest accuracy among those with test images (more images first on ties)."""
    present = per_class[per_class["images"] > 0]
    return present.sort_values(["accuracy", "images", "class_id"], ascending=[True, False, True]).head(count)


def evaluate(module: torch.nn.Module, data_path: Path, batch_size: int = 64, num_workers: int = 0) -> Evaluation:
    """Run `module` (a NetModule in eval mode) over the test split of the prepared data at `data_path`."""
    from datasets.prepared.stanford_data import StanfordCarsDataset, check_folder_matches, read_labels
    from models.inference import class_names, eval_prefix, predict_probabilities

    labels = read_labels(data_path, "test")
    check_folder_matches(labels, data_path / "test")
    num_classes = module.hparams.num_classes
    if labels["class"].max() > num_classes or labels["class"].min() < 1:
        raise DataError(f"{data_path}/test_labels.csv has class ids outside 1..{num_classes}, the checkpoint's "
                        f"classes: is it the data the model was trained on?")
    dataset = StanfordCarsDataset(data_path, "test", eval_prefix(module), labels=labels,
                                  corrupt_hint="top-1 needs every test image: replace the file, e.g. by preparing the "
                                               "data again (prepare_stanford_dataset.py --force)")
    names = class_names(module)
    k = min(5, num_classes)
    top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
    topk = MulticlassAccuracy(num_classes, top_k=k, average="micro")
    confusion = MulticlassConfusionMatrix(num_classes)
    rows = []
    on_gpu = next(module.parameters()).device.type == "cuda"
    # pinned batches copy to the GPU without blocking the next batch's loading
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=on_gpu)
    for images, targets in loader:
        probabilities = predict_probabilities(module, images)
        for metric in (top1, topk, confusion):
            metric.update(probabilities, targets)
        best, predicted = probabilities.max(dim=1)
        rows.extend(zip(targets.tolist(), predicted.tolist(), best.tolist()))
    predictions = pd.DataFrame({
        "image_fname": [dataset.fnames[row] for row in dataset.rows],
        "class_id": [target + 1 for target, _, _ in rows],
        "predicted_class_id": [label + 1 for _, label, _ in rows],
        "predicted_class_name": [names[label] for _, label, _ in rows],
        "probability": [probability for _, _, probability in rows],
    })
    matrix = confusion.compute()
    return Evaluation(float(top1.compute()), float(topk.compute()), k, matrix, per_class_table(matrix, names),
                      predictions)


def plot_confusion_matrix(confusion: torch.Tensor, names: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix as a heat map; no per-cell text, so 196 classes stay legible."""
    counts = confusion.double()
    rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    n = len(names)
    side = min(max(6.0, n * 0.08), 20.0)
    fig, ax = plt.subplots(figsize=(side + 2, side))
    shown = ax.imshow(rates, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's test images")
    if n <= NAMED_TICKS_MAX:
        ax.set_xticks(range(n), [str(i) for i in range(1, n + 1)], fontsize=7, rotation=90 if n > 20 else 0)
        ax.set_yticks(range(n), [f"{name} ({i})" for i, name in enumerate(names, start=1)], fontsize=7)
    else:
        ticks = [i for i in range(n) if (i + 1) % 10 == 0 or i == 0]
        ax.set_xticks(ticks, [str(i + 1) for i in ticks], fontsize=7)
        ax.set_yticks(ticks, [str(i + 1) for i in ticks], fontsize=7)
    ax.set_xlabel("predicted class id")
    ax.set_ylabel("true class" if n <= NAMED_TICKS_MAX else "true class id (names: per_class_accuracy.csv)")
    ax.set_title(title)
    # "tight" grows the figure around long class names instead of cutting them off
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_outputs(result: Evaluation, output_dir: Path, checkpoint: Path, data_path: Path,
                  epoch: int | None = None) -> None:
    """per_class_accuracy.csv, predictions.csv, confusion_matrix.png and metrics.json in `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    result.per_class.to_csv(output_dir / "per_class_accuracy.csv", index=False, float_format="%.6g")
    result.predictions.to_csv(output_dir / "predictions.csv", index=False, float_format="%.6g")
    title = f"{checkpoint.resolve().parent.parent.name}: top-1 {result.top1:.2%} on {len(result.predictions)} images"
    plot_confusion_matrix(result.confusion, list(result.per_class["class_name"]), output_dir / "confusion_matrix.png",
                          title)
    metrics = {"checkpoint": str(checkpoint), "checkpoint_epoch": epoch, "data_path": str(data_path),
               "images": len(result.predictions),
               "top1_accuracy": result.top1, f"top{result.k}_accuracy": result.topk}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of train.py, e.g. <run>/checkpoints/best.ckpt")
    parser.add_argument("-d", "--data-path", default=None,
                        help="prepared data folder (default: stanford_data_path of <run>/config.yml)")
    parser.add_argument("--output-dir", default=None, help="where the files go (default: <run>/evaluation)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader worker processes (default: 0)")
    parser.add_argument("--device", type=device_option, default="auto",
                        help="where the network runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or "
                             "cuda:N (default: auto)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from models.inference import load_module, resolve_device
    from utils.run_outputs import checkpoint_epoch

    args = parse_args(argv)
    checkpoint = Path(args.checkpoint)
    device = resolve_device(args.device)
    module = load_module(checkpoint, device)
    epoch = checkpoint_epoch(checkpoint)
    data_path = Path(args.data_path) if args.data_path else default_data_path(checkpoint)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(checkpoint)
    result = evaluate(module, data_path, args.batch_size, args.num_workers)
    write_outputs(result, output_dir, checkpoint, data_path, epoch)
    images = len(result.predictions)
    print(f"checkpoint: {checkpoint} (weights of epoch {epoch}, counted from 0 as in metrics.csv)"
          if epoch is not None else f"checkpoint: {checkpoint}")
    print(f"test images: {images} ({data_path}), evaluated on {device}")
    print(f"top-1 accuracy: {result.top1:.2%}")
    print(f"top-{result.k} accuracy: {result.topk:.2%}")
    print("ten worst classes:" if len(result.per_class) >= WORST_CLASSES else "worst classes:")
    for row in worst_classes(result.per_class).itertuples():
        print(f"  {row.accuracy:7.2%}  {row.class_name} (class {row.class_id}, {row.correct}/{row.images} correct)")
    print(f"written to {output_dir}: per_class_accuracy.csv, predictions.csv, confusion_matrix.png, metrics.json")
    return 0


if __name__ == "__main__":
    run_main(main)
