"""Loss, accuracy and learning-rate curves of a run, drawn from its metrics.csv (thesis Figures 10-12)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

PLOTS = {
    "loss.png": (["train_loss", "valid_loss"], "loss", False),
    "accuracy.png": (["train_acc", "valid_acc"], "accuracy", False),
    "lr.png": (["lr"], "learning rate", True),
}


def write_plots(metrics_csv: Path, out_dir: Path, title: str = "") -> list[Path]:
    """Draw `loss.png`, `accuracy.png` and `lr.png` into out_dir; returns the files written (none without rows)."""
    if not metrics_csv.is_file():
        return []
    metrics = pd.read_csv(metrics_csv)
    if metrics.empty:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, (columns, label, log_scale) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for column in columns:
            ax.plot(metrics["epoch"], metrics[column], marker="." if len(metrics) < 30 else None,
                    label=column.replace("_", " "))
        if log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{title} {label}".strip())
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / file_name, dpi=100)
        plt.close(fig)
        written.append(out_dir / file_name)
    return written
