"""models/export.py: ONNX and TorchScript exports compute what the PyTorch network computes, for any batch size, and
the JSON beside them is enough to preprocess an image the way predict.py does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import run_module
from utils.errors import UserError


@pytest.fixture(scope="module")
def checkpoint(trained_run: Path) -> Path:
    """best.ckpt of a one-epoch run of the real training code on generated data (normalised RGB, 64 px)."""
    return trained_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from models.export import export

    folder = tmp_path_factory.mktemp("exported")
    files = {"onnx": folder / "cars.onnx", "torchscript": folder / "cars_ts.pt"}
    for fmt, path in files.items():
        export(checkpoint, fmt, path)
    return files


def _reference(checkpoint: Path, batch: torch.Tensor) -> np.ndarray:
    from models.inference import load_module

    with torch.no_grad():
        return load_module(checkpoint).net(batch).numpy()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnx_and_torchscript_match_pytorch_on_random_normalised_batches(checkpoint: Path, exported: dict[str, Path],
                                                                        batch_size: int) -> None:
    import onnxruntime

    batch = torch.randn(batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(batch_size))
    expected = _reference(checkpoint, batch)
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images"
    onnx_out = session.run(["logits"], {"images": batch.numpy()})[0]
    scripted = torch.jit.load(str(exported["torchscript"]))
    with torch.no_grad():
        script_out = scripted(batch).numpy()
    assert expected.shape == (batch_size, 3)
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(script_out, expected, atol=1e-4, rtol=0)


def test_json_contract_alone_preprocesses_an_image_as_predict_does(checkpoint: Path, exported: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """Follow the documented contract with PIL and numpy only, run the ONNX model, compare with models.inference."""
    import onnxruntime

    from models.inference import class_names, eval_prefix, load_image, load_module, predict_probabilities

    contract = json.loads(exported["onnx"].with_suffix(".json").read_text())
    pre = contract["preprocessing"]
    module = load_module(checkpoint)
    assert contract["class_names"] == class_names(module) and contract["class_ids"] == [1, 2, 3]
    assert pre["mean"] == module.hparams.normalization["mean"] and pre["std"] == module.hparams.normalization["std"]
    assert pre["input_shape"] == ["batch", 3, 64, 64] and pre["channel_order"] == "RGB"

    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(photo)
    height, width = pre["image_size"]
    pixels = np.asarray(Image.open(photo).convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
    x = (pixels.astype(np.float32) / 255 - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {pre["input_name"]: x.transpose(2, 0, 1)[None]})[0]
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1)
    expected = predict_probabilities(module, load_image(photo, eval_prefix(module))[None])
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)


def test_cli_refuses_json_output_and_non_checkpoints_in_one_line(checkpoint: Path, tmp_path: Path) -> None:
    result = run_module("models.export", ["--checkpoint", str(checkpoint), "--format", "onnx",
                                          "--output", str(tmp_path / "model.json")])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "ends in .json" in result.stderr
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    from models.export import export

    with pytest.raises(UserError, match="notes.ckpt is not a checkpoint written by train.py"):
        export(not_a_checkpoint, "torchscript", tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def test_onnx_export_without_onnx_installed_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    import importlib.util

    from models import export as export_module

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real_find_spec(name))
    with pytest.raises(UserError, match="pip install onnx onnxscript"):
        export_module.export_onnx(torch.nn.Identity(), torch.zeros(2, 3, 4, 4), tmp_path / "m.onnx")
