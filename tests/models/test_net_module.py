"""The LightningModule: what its checkpoints hold, with and without torch.compile, and what compile covers."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from datasets.device_augmentation.augmenter import DrawingCollate
from models.net_module import NetModule
from utils.configuration import validate


def test_checkpoint_state_holds_each_weight_once_under_net() -> None:
    module = NetModule("ghost", num_classes=5)
    keys = list(module.state_dict())
    assert keys and all(key.startswith("net.") for key in keys)
    assert len(keys) == len(module.net.state_dict())


@pytest.mark.slow  # torch.compile on the CPU
def test_compiled_module_saves_the_same_keys_and_loads_into_an_uncompiled_one() -> None:
    compiled = NetModule("ghost", num_classes=5, compile=True)  # compilation itself waits for the first forward
    plain = NetModule("ghost", num_classes=5)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(compiled.state_dict())
    images = torch.rand(2, 3, 32, 32)
    plain.eval()
    compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(images), compiled(images), atol=1e-5, rtol=1e-4)  # through the compiled net


def test_a_compiled_module_pickles_and_comes_back_compiled_around_its_own_network() -> None:
    compiled = pickle.loads(pickle.dumps(NetModule("ghost", num_classes=5, compile=True)))  # as ddp_spawn does
    assert compiled._compiled_net._orig_mod is compiled.net and compiled._compiled_preprocess is not None
    plain = pickle.loads(pickle.dumps(NetModule("ghost", num_classes=5)))
    assert plain._compiled_net is None and plain._compiled_preprocess is None


@pytest.mark.slow  # torch.compile on the CPU
def test_compile_also_compiles_the_preprocessing_in_one_graph_with_the_eager_results() -> None:
    augmentations = validate({})["image_augmentations"]  # flip, affine and colour jitter by default
    # Bilinear: with nearest, float rounding differences between compiled and eager code can move a sample point
    # across a pixel border now and then, which changes that pixel entirely.
    augmentations["RandomAffine"] = {**augmentations["RandomAffine"], "interpolation": "bilinear"}
    config = validate({"gpu_augmentations": True, "image_size": [48, 48], "compile": True,
                       "image_augmentations": augmentations})
    module = NetModule.from_config(config, 5, [str(i) for i in range(5)]).train()
    assert module.augment is not None and len(module.augment.ops) == 3
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    drawn = module.augment.draw(tuple(images.shape))  # as the train loader's workers draw them
    for parameters in (drawn, None):
        explained = torch._dynamo.explain(module._preprocess)(images, True, parameters)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0)  # a break would split the fusion
    # An epoch's last batch is smaller: the graph takes any batch size from the start, so it does not compile again.
    torch.manual_seed(0)
    torch._dynamo.utils.counters.clear()
    with torch._inductor.config.patch(fx_graph_cache=False):  # a graph cached by an earlier run brings its guards
        for batch, train in ((images, True), (images[:3], True), (images, False)):
            parameters = module.augment.draw(tuple(batch.shape))
            compiled = module.preprocess(batch, train, parameters)
            torch.testing.assert_close(compiled, module._preprocess(batch, train, parameters), atol=1e-4,
                                       rtol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # training and evaluation
    # Drawing on the device: the compiled graph draws eager's random numbers when told to, so pixels compare.
    with torch._inductor.config.patch(fallback_random=True):
        for batch in (images, images[:3]):
            torch.manual_seed(0)
            compiled = module.preprocess(batch, True)
            torch.manual_seed(0)
            torch.testing.assert_close(compiled, module._preprocess(batch, True, None), atol=1e-4, rtol=1e-4)
    assert module._compiled_preprocess is not None


def test_channels_last_preprocessing_writes_the_network_layout_directly_with_the_same_values() -> None:
    settings = {"gpu_augmentations": True, "image_size": [32, 32]}
    plain = NetModule.from_config(validate(settings), 5, [str(i) for i in range(5)])
    last = NetModule.from_config(validate({**settings, "channels_last": True}), 5, [str(i) for i in range(5)])
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    drawn = last.augment.draw(tuple(images.shape))
    out = last.preprocess(images, True, drawn)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, plain.preprocess(images, True, drawn))
    explained = torch._dynamo.explain(last._preprocess)(images, True, drawn)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_compile_mode_reaches_torch_compile_for_the_network_and_the_preprocessing(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch, "compile", lambda target, **options: calls.append(options) or target)
    config = validate({"compile": True, "compile_mode": "reduce-overhead"})
    NetModule.from_config(config, 5, [str(i) for i in range(5)])
    assert calls == [{"mode": "reduce-overhead"}] * 2


@pytest.mark.parametrize(("compile", "mode", "marks"), [(True, "reduce-overhead", 1), (True, "max-autotune", 1),
                                                        (True, "default", 0), (False, "reduce-overhead", 0)])
def test_each_batch_starts_a_cuda_graph_step_only_when_cuda_graphs_are_compiled(monkeypatch, compile, mode,
                                                                                 marks) -> None:
    """CUDA graphs reuse their outputs' memory on replay: each batch tells torch that a new step begins."""
    monkeypatch.setattr(torch, "compile", lambda target, **options: target)
    begun = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: begun.append(1))
    config = validate({"compile": compile, "compile_mode": mode, "image_size": [16, 16]})
    module = NetModule.from_config(config, 5, [str(i) for i in range(5)])
    module.trainer = SimpleNamespace(training=True)
    images, targets = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8), torch.tensor([0, 1])
    out, _ = module.on_after_batch_transfer((images, targets), 0)
    assert out.dtype == torch.float32 and len(begun) == marks


def _fit(module: NetModule, epochs: int = 2) -> pl.Trainer:
    """Lightning's real loop on the CPU: 10 uint8 images of 32 px in batches of 4 (the last one of 2), validated;
    with device augmentations, the train loader draws their parameters (seeded) as train.py's does."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=generator)
    data = TensorDataset(images, torch.randint(0, 5, (10,), generator=generator))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    collate = None if module.augment is None else DrawingCollate(module.augment)
    torch.manual_seed(2)
    trainer.fit(module, DataLoader(data, batch_size=4, collate_fn=collate), DataLoader(data, batch_size=4))
    return trainer


def test_cuda_graphs_train_as_eager_steps_do_around_lightnings_loop(monkeypatch) -> None:
    """Without CUDA the graph records nothing (capture=False) and each "replay" runs the same preprocessing,
    forward, loss and backward into the graph's buffers: what is checked is everything around the graph. The graph
    must read the batch as the loader sent it (uint8 images and the drawn augmentation parameters) and preprocess it
    once; Lightning's backward and its zero_grad between training_step and backward must leave a replay's gradients
    alone; the epoch's last, smaller batch must be preprocessed and run eagerly into the same (zeroed) gradient
    tensors; and making the graph (warm-up passes and one recorded pass) must leave batch norm's statistics as they
    were: weights, statistics and metrics after two epochs equal those of plain training."""
    import models.cuda_graphs
    import models.net_module

    replays = []
    real_run = models.cuda_graphs.TrainingGraph.run
    monkeypatch.setattr(models.cuda_graphs.TrainingGraph, "run",
                        lambda graph, inputs, targets: replays.append([tuple(x.shape) for x in inputs]) or real_run(
                            graph, inputs, targets))
    monkeypatch.setattr(models.net_module, "_graphable", lambda images: True)
    config = validate({"gpu_augmentations": True, "image_size": [32, 32], "dropout": 0.0, "lr_scheduler": "StepLR",
                       "lr_scheduler_params": {"step_size": 1, "gamma": 0.5}})
    names = [str(i) for i in range(5)]
    torch.manual_seed(0)
    graphed = NetModule.from_config({**config, "cuda_graphs": True}, 5, names)
    plain = NetModule.from_config(config, 5, names)
    plain.load_state_dict(graphed.state_dict())
    trainers = {"graphed": _fit(graphed), "plain": _fit(plain)}
    width = graphed.augment.draw((1, 3, 32, 32)).shape[1]
    assert replays == [[(4, 3, 32, 32), (4, width)]] * 4  # two full batches per epoch; the batches of 2 ran eagerly
    assert [tensor.dtype for tensor in graphed._graphed_step.inputs] == [torch.uint8, torch.float32]
    for (name, value), graphed_value in zip(plain.state_dict().items(), graphed.state_dict().values()):
        torch.testing.assert_close(graphed_value, value, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("train_loss", "train_acc", "valid_loss", "valid_acc"):
        torch.testing.assert_close(trainers["graphed"].callback_metrics[key], trainers["plain"].callback_metrics[key],
                                   rtol=1e-5, atol=1e-6, msg=key)
    assert not any(key.startswith("_graphed") for key in graphed.__getstate__())


def test_a_training_step_that_cannot_be_graphed_is_one_config_error_and_keeps_its_statistics(monkeypatch) -> None:
    import models.cuda_graphs
    import models.net_module
    from utils.errors import ConfigError

    def fails(graph):  # noqa: ANN001, ANN202
        graph._pass()  # a pass moved the statistics before the capture failed
        raise RuntimeError("operation not permitted when stream is capturing\nCUDA error details")

    monkeypatch.setattr(models.cuda_graphs.TrainingGraph, "_record", fails)
    monkeypatch.setattr(models.net_module, "_graphable", lambda images: True)
    module = NetModule("ghost", num_classes=5, cuda_graphs=True)
    module.trainer = SimpleNamespace(training=True)
    before = {name: buffer.clone() for name, buffer in module.net.named_buffers()}
    module.train()
    with pytest.raises(ConfigError, match=r"cuda_graphs: true, but the training step could not be graphed "
                                          r"\(operation not permitted when stream is capturing\); set cuda_graphs: "
                                          r"false$"):
        images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        module.training_step(module.on_after_batch_transfer((images, torch.tensor([0, 1, 2, 3])), 0), 0)
    for name, buffer in module.net.named_buffers():
        torch.testing.assert_close(buffer, before[name])


def test_cuda_graphs_auto_falls_back_to_eager_steps_with_one_warning_where_capture_fails(monkeypatch, caplog) -> None:
    """`cuda_graphs: auto` resolved to true (graph_fallback): a step that cannot be graphed is tried once, said in
    one warning line, and every batch then trains eagerly, as plain training does (the capture stood in for)."""
    import logging

    import models.cuda_graphs
    import models.net_module

    attempts = []

    def fails(graph):  # noqa: ANN001, ANN202
        attempts.append(1)
        graph._pass()  # a pass moved the statistics before the capture failed
        raise RuntimeError("operation not permitted when stream is capturing\nCUDA error details")

    monkeypatch.setattr(models.cuda_graphs.TrainingGraph, "_record", fails)
    monkeypatch.setattr(models.net_module, "_graphable", lambda images: True)
    config = validate({"gpu_augmentations": True, "image_size": [32, 32], "dropout": 0.0})
    names = [str(i) for i in range(5)]
    torch.manual_seed(0)
    fallback = NetModule.from_config({**config, "cuda_graphs": True}, 5, names, graph_fallback=True)
    plain = NetModule.from_config(config, 5, names)
    plain.load_state_dict(fallback.state_dict())
    with caplog.at_level(logging.WARNING, logger="cars"):
        trainers = {"fallback": _fit(fallback), "plain": _fit(plain)}
    assert attempts == [1]
    assert [record.getMessage() for record in caplog.records if record.name == "cars"] == [
        "cuda_graphs: auto, but the training step could not be graphed (operation not permitted when stream is "
        "capturing): training with the eager step"]
    for (name, value), fallback_value in zip(plain.state_dict().items(), fallback.state_dict().values()):
        torch.testing.assert_close(fallback_value, value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(trainers["fallback"].callback_metrics["train_loss"],
                               trainers["plain"].callback_metrics["train_loss"], rtol=1e-5, atol=1e-6)


def _gates(module: NetModule) -> set[str]:
    from models.architectures.ghostnet import SqueezeExcite

    return {se.gate for se in module.net.modules() if isinstance(se, SqueezeExcite)}


@pytest.mark.parametrize("se_gate", ["clamp", "hard_sigmoid"])
def test_the_configs_se_gate_reaches_ghostnet_and_its_checkpoint(se_gate: str, tmp_path) -> None:
    from models.inference import load_module

    module = NetModule.from_config(validate({"se_gate": se_gate, "image_size": [32, 32]}), 4, list("abcd"))
    assert _gates(module) == {se_gate}
    trainer = pl.Trainer(accelerator="cpu", max_epochs=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "gate.ckpt")
    assert _gates(load_module(tmp_path / "gate.ckpt")) == {se_gate}


def test_a_checkpoint_from_before_se_gate_loads_with_the_hard_sigmoid_it_was_trained_with() -> None:
    assert validate({})["se_gate"] == "clamp"
    assert _gates(NetModule("ghost", num_classes=3)) == {"hard_sigmoid"}
