"""ONNX and ONNX Runtime Mobile (.ort) writers for models.export: fp32, or int8 by ONNX Runtime's static quantization.

int8 is post-training static quantization in the QDQ format (QuantizeLinear/DequantizeLinear pairs around each
quantized operator), weights signed int8 per output channel, activations unsigned int8 per tensor, calibrated by
min/max on the images the caller gives. The `.ort` file comes from ONNX Runtime's own converter
(`python -m onnxruntime.tools.convert_onnx_models_to_ort`), which also writes the operator config a reduced-size
(minimal) ONNX Runtime Mobile build is compiled with.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

INPUT_NAME, OUTPUT_NAME = "images", "logits"
# The converter names the operator config after the model: <stem>.required_operators.config
OPERATOR_CONFIG_SUFFIX = ".required_operators.config"


def require(packages: tuple[str, ...], purpose: str) -> None:
    """Raise one line naming what to install when a package of `packages` is missing."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{purpose} needs the {' and '.join(missing)} package(s): "
                        f"pip install -r export_requirements.txt")


def write_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """fp32 ONNX with the torch.export-based exporter (torch's default since 2.9), one self-contained file, batch free."""
    require(("onnx", "onnxscript", "onnxruntime"), "ONNX export")
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        torch.onnx.export(net, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: list[np.ndarray]) -> None:
    """Static int8 quantization of `fp32_path` (QDQ, per-channel weights), calibrated on `calibration` inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as folder:
        # ONNX Runtime's recommended pre-processing: shape inference and graph optimisation before quantizing.
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def convert_to_ort(onnx_path: Path, ort_path: Path) -> Path:
    """ONNX -> ONNX Runtime Mobile format at `ort_path`; returns the operator config written beside it."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / f"{ort_path.stem}.onnx"
        shutil.copyfile(onnx_path, source)
        result = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(source),
                                 "--output_dir", folder], capture_output=True, text=True)
        written = Path(folder) / f"{ort_path.stem}.ort"
        config = Path(folder) / f"{ort_path.stem}{OPERATOR_CONFIG_SUFFIX}"
        if result.returncode != 0 or not written.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"ONNX Runtime's converter failed on {onnx_path.name}: {last[:300]}")
        shutil.move(written, ort_path)
        config_path = ort_path.parent / config.name
        shutil.move(config, config_path)
    return config_path
