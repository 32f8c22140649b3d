"""The epoch metrics of training and validation: mean loss and top-1 accuracy, in a few kernels per batch."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class LossAndAccuracy(Metric):
    """The epoch's mean loss per sample and top-1 accuracy: the values of torchmetrics' `MeanMetric` over each
    sample's batch loss and `MulticlassAccuracy(average="micro")`, kept as one (3,) state, the sums of loss x
    samples, correct predictions and samples, which torchmetrics adds up across DDP ranks.

    Those two metrics launch 22 small kernels per batch between them, this one 7: on a GPU a small network's step is
    bound by kernel launches, and the metrics run every batch. Nothing is read back from the device before
    `compute`, and a NaN loss shows as a NaN mean.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self) -> None:
        super().__init__()
        self.add_state("totals", default=torch.zeros(3), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """`loss` the batch mean, `logits` (batch, classes), `targets` class indices (batch,)."""
        count = targets.numel()  # a Python number: multiplying by it copies nothing to the device
        correct = (logits.argmax(dim=-1) == targets).sum(dtype=self.totals.dtype)
        # add_ on views, not `+=` on items: that would copy each result back as a further kernel.
        self.totals[:2].add_(torch.stack([loss.detach().to(self.totals.dtype) * count, correct]))
        self.totals[2].add_(count)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, accuracy) over every sample since the last reset."""
        loss_sum, correct, count = self.totals
        return loss_sum / count, correct / count
