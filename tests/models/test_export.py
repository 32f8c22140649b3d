"""models/export.py: every format, run by its own runtime, computes what the checkpoint's network computes (fp32 to
1e-4, int8 to a stated top-1 agreement); --with-preprocessing takes raw uint8 pixels; the JSON lists the classes in
output order; bad inputs are one line each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.helpers import generated_prepared_data, run_module, tiny_config
from utils.errors import UserError

# Share of images whose int8 top-1 class must equal the fp32 model's. A 2-epoch model on 3 classes has close
# logits, so a small quantization error can flip a near tie; trained models keep far more (documentation/deployment.md).
INT8_AGREEMENT = 0.75


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(best.ckpt, prepared data) of a 2-epoch run of the real training code on generated data (RGB, 64 px)."""
    from models.training_run import train
    from utils.configuration import load_config

    base = tmp_path_factory.mktemp("export")
    data = generated_prepared_data(base, train_per_class=6, test_per_class=4)
    run_dir = train(load_config(str(tiny_config(base, data, num_epochs=2))))
    return run_dir / "checkpoints" / "best.ckpt", data


@pytest.fixture(scope="session")
def checkpoint(trained: tuple[Path, Path]) -> Path:
    return trained[0]


def _reference(checkpoint: Path, batch: torch.Tensor) -> np.ndarray:
    from models.inference import load_module

    with torch.no_grad():
        return load_module(checkpoint).net(batch).numpy()


def _onnx_run(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    return session.run(["logits"], {"images": batch})[0]


def _validation_inputs(checkpoint: Path, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (B, C, H, W) validation images after the eval prefix, their normalised float batch)."""
    from datasets.prepared.stanford_data import StanfordCarsDataset
    from models.inference import eval_prefix, load_module

    module = load_module(checkpoint)
    dataset = StanfordCarsDataset(data, "test", eval_prefix(module))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        return images, module.preprocess(images, train=False).contiguous()


def test_onnx_matches_pytorch_for_any_batch_size(checkpoint: Path, tmp_path: Path) -> None:
    from models.export import export

    export(checkpoint, "onnx", tmp_path / "cars.onnx")
    for batch_size in (1, 3):
        batch = torch.randn(batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(batch_size))
        expected = _reference(checkpoint, batch)
        assert expected.shape == (batch_size, 3)
        np.testing.assert_allclose(_onnx_run(tmp_path / "cars.onnx", batch.numpy()), expected, atol=1e-4, rtol=0)


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_labels_file_lists_class_names_in_output_order(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from models.export import export

    checkpoint, data = trained
    sidecar = export(checkpoint, "onnx", tmp_path / "cars.onnx")
    contract = json.loads(sidecar.read_text())
    labels = pd.concat([pd.read_csv(data / "train_labels.csv"), pd.read_csv(data / "test_labels.csv")])
    by_id = labels.drop_duplicates("class").sort_values("class")
    assert contract["class_ids"] == by_id["class"].tolist() == [1, 2, 3]
    assert contract["class_names"] == by_id["class_name"].tolist()
    assert contract["precision"] == "float32" and contract["format"] == "onnx"
    pre = contract["preprocessing"]
    assert pre["input_shape"] == ["batch", 3, 64, 64] and pre["dtype"] == "float32" and pre["layout"] == "NCHW"


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_with_preprocessing_takes_uint8_pixels_and_matches_a_hand_prepared_image(checkpoint: Path,
                                                                                 tmp_path: Path) -> None:
    """An app's uint8 NHWC pixels give the fp32 model's output on the same image normalised by hand (PIL, numpy)."""
    from models.export import export

    sidecar = export(checkpoint, "onnx", tmp_path / "raw.onnx", with_preprocessing=True)
    contract = json.loads(sidecar.read_text())["preprocessing"]
    assert contract["input_shape"] == ["batch", 64, 64, 3] and contract["dtype"] == "uint8"
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    pixels = np.asarray(photo.resize((64, 64), Image.Resampling.BILINEAR))
    by_hand = (pixels.astype(np.float32) / 255 - np.array(contract["mean"], np.float32)) / np.array(
        contract["std"], np.float32)
    expected = _reference(checkpoint, torch.from_numpy(by_hand.transpose(2, 0, 1)[None].copy()))
    np.testing.assert_allclose(_onnx_run(tmp_path / "raw.onnx", pixels[None]), expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_ort_format_runs_in_onnx_runtime_and_writes_its_operator_config(checkpoint: Path, tmp_path: Path) -> None:
    from models.export import export

    sidecar = export(checkpoint, "ort", tmp_path / "cars.ort")
    config = tmp_path / "cars.required_operators.config"
    assert json.loads(sidecar.read_text())["operator_config"] == config.name
    assert "Conv" in config.read_text()
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(_onnx_run(tmp_path / "cars.ort", batch.numpy()), _reference(checkpoint, batch),
                               atol=1e-4, rtol=0)


@pytest.mark.slow
def test_int8_onnx_is_quantized_and_agrees_with_fp32_on_validation_images(trained: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    import onnx

    from models.export import export

    checkpoint, data = trained
    sidecar = export(checkpoint, "onnx", tmp_path / "int8.onnx", int8=True, calibration_count=12, seed=3)
    contract = json.loads(sidecar.read_text())
    assert contract["precision"] == "int8" and contract["calibration"]["images"] == 12
    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    export(checkpoint, "onnx", tmp_path / "fp32.onnx")
    assert (tmp_path / "int8.onnx").stat().st_size < 0.5 * (tmp_path / "fp32.onnx").stat().st_size
    _, batch = _validation_inputs(checkpoint, data)
    fp32 = _onnx_run(tmp_path / "fp32.onnx", batch.numpy()).argmax(1)
    int8 = _onnx_run(tmp_path / "int8.onnx", batch.numpy()).argmax(1)
    assert (fp32 == int8).mean() >= INT8_AGREEMENT


@pytest.mark.slow
def test_executorch_fp32_and_int8_run_in_its_runtime(trained: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("executorch", reason="pip install -r export_requirements.txt")
    from models.export import export
    from models.export_executorch import PteRunner

    checkpoint, data = trained
    export(checkpoint, "executorch", tmp_path / "fp32.pte")
    export(checkpoint, "executorch", tmp_path / "int8.pte", int8=True, calibration_count=12)
    _, batch = _validation_inputs(checkpoint, data)
    expected = _reference(checkpoint, batch)
    fp32 = np.concatenate([PteRunner(tmp_path / "fp32.pte")(image[None]).numpy() for image in batch])
    np.testing.assert_allclose(fp32, expected, atol=1e-4, rtol=0)
    int8 = np.concatenate([PteRunner(tmp_path / "int8.pte")(image[None]).numpy() for image in batch])
    assert (int8.argmax(1) == expected.argmax(1)).mean() >= INT8_AGREEMENT
    assert (tmp_path / "int8.pte").stat().st_size < 0.5 * (tmp_path / "fp32.pte").stat().st_size


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_verify_reports_the_exported_models_accuracy_beside_the_checkpoints(trained: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    from models.export import export
    from models.verify_exported import measure, report

    checkpoint, data = trained
    export(checkpoint, "onnx", tmp_path / "cars.onnx")
    result = measure(tmp_path / "cars.onnx", runs=2)
    images, batch = _validation_inputs(checkpoint, data)
    labels = pd.read_csv(data / "test_labels.csv")["class"].to_numpy() - 1
    expected_top1 = 100 * (_reference(checkpoint, batch).argmax(1) == labels).mean()
    assert result.images == len(images) == 12
    assert result.top1 == pytest.approx(expected_top1) and result.reference_top1 == pytest.approx(expected_top1)
    assert result.agreement == 100 and result.topk == result.reference_topk == 100  # top-3 of 3 classes
    assert result.size_mb == pytest.approx((tmp_path / "cars.onnx").stat().st_size / 1e6)
    assert result.latency_ms > 0 and result.reference_latency_ms > 0
    text = report(tmp_path / "cars.onnx", result, "int8")
    assert "| cars.onnx (int8) |" in text and "within 1 point" in text


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_missing_checkpoint_and_wrong_suffix_are_one_line_errors(tmp_path: Path) -> None:
    result = run_module("models.export", ["--checkpoint", str(tmp_path / "none.ckpt"), "--format", "onnx",
                                          "--output", str(tmp_path / "m.onnx")])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "none.ckpt" in result.stderr
    result = run_module("models.export", ["--checkpoint", str(tmp_path / "none.ckpt"), "--format", "ort",
                                          "--output", str(tmp_path / "m.json")])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "should end in .ort" in result.stderr
    assert not list(tmp_path.iterdir())


def test_not_a_checkpoint_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from models.export import export

    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    with pytest.raises(UserError, match="notes.ckpt is not a checkpoint written by train.py"):
        export(not_a_checkpoint, "onnx", tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize(("fmt", "package"), [("executorch", "executorch"), ("onnx", "onnxscript"),
                                              ("ort", "onnxruntime")])
def test_format_without_its_package_says_what_to_install(monkeypatch, tmp_path: Path, fmt: str, package: str) -> None:
    import importlib.util

    from models.export import SUFFIXES, export

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real_find_spec(name))
    with pytest.raises(UserError, match=f"needs the {package} package.*pip install -r export_requirements.txt"):
        export(tmp_path / "any.ckpt", fmt, tmp_path / f"m{SUFFIXES[fmt]}")
