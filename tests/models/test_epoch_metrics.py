"""LossAndAccuracy: the epoch mean loss and accuracy that MeanMetric and MulticlassAccuracy give, in fewer kernels."""

from __future__ import annotations

import math

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from benchmarks.diagnostics.op_count import count_ops
from models.epoch_metrics import LossAndAccuracy

CLASSES = 7


def batches(sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for size in sizes:
        logits = torch.randn(size, CLASSES, generator=generator)
        targets = torch.randint(0, CLASSES, (size,), generator=generator)
        out.append((torch.nn.functional.cross_entropy(logits, targets), logits, targets))
    return out


def test_equals_torchmetrics_mean_loss_per_sample_and_micro_accuracy_over_unequal_batches() -> None:
    ours, mean, accuracy = LossAndAccuracy(), MeanMetric(), MulticlassAccuracy(CLASSES, average="micro")
    for loss, logits, targets in batches([16, 16, 5]):  # a short last batch weighs less in the mean
        ours.update(loss, logits, targets)
        mean.update(loss, weight=targets.numel())
        accuracy.update(logits, targets)
    loss, acc = ours.compute()
    torch.testing.assert_close(loss, mean.compute())
    torch.testing.assert_close(acc, accuracy.compute())
    assert 0 < acc < 1


def test_reset_starts_a_new_epoch_and_a_nan_loss_shows() -> None:
    metric = LossAndAccuracy()
    loss, logits, targets = batches([8])[0]
    metric.update(torch.tensor(float("nan")), logits, targets)
    assert math.isnan(metric.compute()[0])
    metric.reset()
    metric.update(loss, logits, targets)
    torch.testing.assert_close(metric.compute()[0], loss)


def test_an_update_launches_fewer_kernels_than_the_two_torchmetrics_it_replaces() -> None:
    loss, logits, targets = batches([64])[0]
    ours, mean, accuracy = LossAndAccuracy(), MeanMetric(), MulticlassAccuracy(CLASSES, average="micro")
    theirs = sum(count_ops(lambda: (mean.update(loss.expand(64)), accuracy.update(logits, targets))).values())
    assert sum(count_ops(lambda: ours.update(loss, logits, targets)).values()) < theirs / 2
