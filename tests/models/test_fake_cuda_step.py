"""The training and validation steps' device work, run on fake CUDA tensors (torch's FakeTensorMode): no kernel
runs and no GPU is needed, but every operator is checked for its device and for whether its result's shape or
value would have to be read back by the host.

On a GPU such a read (`.item()`, a boolean mask, `nonzero`) makes the host wait for the device in every step, and
inside a CUDA graph's capture (`cuda_graphs: true`) it fails the capture; a constant made on the CPU and mixed in
fails on the device. The CUDA tests find these only where a GPU is lent; these find them on every machine, before
a GPU session is spent on them. Autograd's engine needs a real device, so the backward is not run here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import datasets.device_augmentation.color
import datasets.device_augmentation.ops
from datasets.device_augmentation.augmenter import DrawingCollate
from models.net_module import NetModule
from utils.configuration import validate

CUDA = torch.device("cuda", 0)
SIZE = 32
EVERY_OP = {"RandomVerticalFlip": {"p": 0.5}, "RandomRotation": {"degrees": 30}, "RandomGrayscale": {"p": 0.3},
            "ColorJitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.2},
            "RandomHorizontalFlip": {"p": 0.5}, "RandomAffine": {"degrees": 10, "shear": [-5, 5, -5, 5]}}


@pytest.fixture()
def fake_cuda():
    """A FakeTensorMode that makes CUDA tensors without CUDA. The small constants the device ops keep per device
    are forgotten afterwards: a fake one must not reach a real step on a machine with a GPU."""
    datasets.device_augmentation.ops._cached_constant.cache_clear()
    yield FakeTensorMode(allow_non_fake_inputs=True)
    datasets.device_augmentation.ops._cached_constant.cache_clear()


def _to_fake_cuda(module: nn.Module, mode: FakeTensorMode) -> None:
    """Put every parameter, buffer and metric state of `module` on the fake CUDA device, in place
    (`Module.to` swaps tensors, which fake ones refuse)."""
    with mode:
        for sub in module.modules():
            for name, param in sub._parameters.items():
                if param is not None:
                    sub._parameters[name] = nn.Parameter(param.to(CUDA), requires_grad=param.requires_grad)
            for name, buffer in sub._buffers.items():
                if buffer is not None:
                    sub._buffers[name] = buffer.to(CUDA)
            for name in getattr(sub, "_defaults", {}):  # torchmetrics' states
                setattr(sub, name, getattr(sub, name).to(CUDA))


def _module(settings: dict) -> NetModule:
    config = validate({"gpu_augmentations": True, "image_size": [SIZE, SIZE], **settings})
    return NetModule.from_config(config, 5, [str(i) for i in range(5)])


@pytest.mark.parametrize("settings", [
    {"augment_tensors": True},  # the C-50 recipe's augmentations, with RandomErasing's default (zeros)
    {"image_augmentations": EVERY_OP, "augment_tensors": True, "channels_last": True,
     "tensor_augmentations": {"RandomErasing": {"p": 0.5, "value": "random"}}},
    {"image_augmentations": EVERY_OP, "convert_to_grayscale": True},
], ids=["recipe", "every-op", "grayscale"])
@pytest.mark.parametrize("recorded", [False, True], ids=["eager", "recorded"])
def test_training_step_stays_on_the_device_without_reading_back(fake_cuda, monkeypatch, settings, recorded) -> None:
    """The step as cuda_graphs records it (uint8 images and the workers' parameter table in, preprocessing, network
    and loss; the colour mixing as in a capture) and as an eager GPU step runs it (parameters drawn on the device)."""
    monkeypatch.setattr(datasets.device_augmentation.color, "launches_are_free", lambda: recorded)
    module = _module(settings)
    channels = module.hparams.img_channels
    images = torch.randint(0, 256, (4, channels, SIZE, SIZE), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 4])
    drawn = DrawingCollate(module.augment)([(image, target) for image, target in zip(images, targets)])[2]
    module.train()
    _to_fake_cuda(module, fake_cuda)
    with fake_cuda:
        images, targets, drawn = images.to(CUDA), targets.to(CUDA), drawn.to(CUDA)
        for logits in (module._graphed_forward(images, drawn), module(module.preprocess(images, train=True))):
            loss = module.loss(logits, targets)
            module.metrics["train_metrics"].update(loss.detach(), logits.detach(), targets)
            assert logits.device == CUDA and logits.shape == (4, 5) and loss.device == CUDA


def test_validation_step_stays_on_the_device_without_reading_back(fake_cuda) -> None:
    module = _module({"augment_tensors": True})
    module.eval()
    _to_fake_cuda(module, fake_cuda)
    with fake_cuda, torch.no_grad():
        images = torch.randint(0, 256, (6, 3, SIZE, SIZE), dtype=torch.uint8, device=CUDA)
        module.validation_step((module.preprocess(images, train=False), torch.arange(6, device=CUDA) % 5), 0)
        assert module.metrics["valid_metrics"].totals.device == CUDA


def test_the_fake_device_finds_a_read_back_and_a_host_constant(fake_cuda, monkeypatch) -> None:
    """What the tests above rely on: a step that reads a value back, or mixes in a tensor made on the CPU, fails
    under the fake device."""
    module = _module({})
    module.train()
    _to_fake_cuda(module, fake_cuda)
    real_hue_shift = datasets.device_augmentation.color.hue_shift
    with fake_cuda:
        images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8, device=CUDA)
        monkeypatch.setattr(datasets.device_augmentation.color, "hue_shift", lambda pixels, shift: real_hue_shift(
            pixels, shift + float(shift.max())))
        with pytest.raises(Exception, match="_local_scalar_dense"):
            module.preprocess(images, train=True)
        monkeypatch.setattr(datasets.device_augmentation.color, "hue_shift", lambda pixels, shift: real_hue_shift(
            pixels, shift + torch.zeros(len(shift))))
        with pytest.raises(Exception, match="found at least two devices, cuda:0 and cpu"):
            module.preprocess(images, train=True)


def test_the_defaults_resolved_for_one_gpu_train_on_the_device_without_reading_back(fake_cuda) -> None:
    """What `auto` turns on for one CUDA GPU with the C-50 defaults (device augmentations, channels_last, the step
    as cuda_graphs records it) stays on the device: what a run with no flags trains with."""
    from models.device_options import resolve_device_options

    config = resolve_device_options(validate({"image_size": [SIZE, SIZE]}), True, "one CUDA GPU")
    module = NetModule.from_config(config, 5, [str(i) for i in range(5)], graph_fallback=True)
    assert (module.hparams.channels_last, module.hparams.cuda_graphs, module.augment is not None) == (True,) * 3
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 4])
    drawn = DrawingCollate(module.augment)([(image, target) for image, target in zip(images, targets)])[2]
    module.train()
    _to_fake_cuda(module, fake_cuda)
    with fake_cuda:
        logits = module._graphed_forward(images.to(CUDA), drawn.to(CUDA))
        loss = module.loss(logits, targets.to(CUDA))
        assert logits.device == CUDA and logits.shape == (4, 5) and loss.device == CUDA
        stem = next(param for param in module.net.parameters() if param.dim() == 4)
        assert stem.device == CUDA and stem.is_contiguous(memory_format=torch.channels_last)
        assert not stem.is_contiguous()
