"""LabelSmoothingCrossEntropy equals torch's label-smoothed cross-entropy (thesis Fig. 13)."""

import pytest
import torch

from models.label_smoothing_ce import LabelSmoothingCrossEntropy


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 11, generator=generator) * 3
    target = torch.randint(0, 11, (8,), generator=generator)
    return logits, target


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_loss_and_gradient_equal_torch_cross_entropy_with_label_smoothing(reduction, smoothing):
    logits, target = batch()
    ours_in, torch_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = LabelSmoothingCrossEntropy(smoothing, reduction)(ours_in, target)
    reference = torch.nn.CrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)(torch_in, target)
    torch.testing.assert_close(ours, reference)
    ours.sum().backward()
    reference.sum().backward()
    torch.testing.assert_close(ours_in.grad, torch_in.grad)


def test_formula_of_thesis_figure_13_for_one_sample():
    logits, target = batch(1)
    ce = -torch.log_softmax(logits[0], dim=0)
    expected = 0.9 * ce[target[0]] + 0.1 * ce.sum() / ce.numel()
    torch.testing.assert_close(LabelSmoothingCrossEntropy(0.1, "none")(logits, target)[0], expected)


def test_smoothing_penalises_overconfident_correct_predictions():
    target = torch.tensor([0])
    confident, moderate = torch.tensor([[20.0, 0.0, 0.0]]), torch.tensor([[4.0, 0.0, 0.0]])
    loss = LabelSmoothingCrossEntropy(0.1)
    assert loss(confident, target) > loss(moderate, target)


def test_default_smoothing_is_thesis_value():
    assert LabelSmoothingCrossEntropy().smoothing == 0.1


@pytest.mark.parametrize("kwargs", [{"smoothing": 1.0}, {"smoothing": -0.1}, {"reduction": "avg"}])
def test_invalid_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        LabelSmoothingCrossEntropy(**kwargs)
