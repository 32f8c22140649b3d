"""Label-smoothing cross-entropy (thesis §4.2.1, Fig. 13): (1 - eps) * CE(target) + eps * mean over classes of CE."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

REDUCTIONS = ("mean", "sum", "none")


class LabelSmoothingCrossEntropy(nn.Module):
    """loss_i = (1 - eps) * ce(i) + eps * sum_j ce(j) / N, with ce(j) = -log softmax(logits)_j and N classes.

    Equivalent to `torch.nn.CrossEntropyLoss(label_smoothing=eps)`: the target distribution is 1 - eps on the true
    class plus eps / N on every class.

    Args:
        smoothing: eps, in [0, 1).
        reduction: 'mean' (over the batch), 'sum' or 'none' (one loss per sample).
    """

    def __init__(self, smoothing: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.smoothing = smoothing
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`logits` (batch, classes), `target` class indices (batch,)."""
        neg_log_probs = -F.log_softmax(logits, dim=-1)
        true_class = neg_log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        loss = (1.0 - self.smoothing) * true_class + self.smoothing * neg_log_probs.mean(dim=-1)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}, reduction={self.reduction!r}"
