"""ExecuTorch (.pte) writer for models.export: the network lowered to the XNNPACK backend, fp32 or int8.

int8 goes through the PT2E flow: `torch.export` the network, insert observers with ExecuTorch's `XNNPACKQuantizer`
(symmetric int8, per-channel weights), run the calibration images, convert, export again and lower with
`to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`. The program takes batch 1 (a phone
classifies one photo at a time; XNNPACK plans its memory for fixed shapes).
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.export_onnx import require


def write_pte(net: torch.nn.Module, example: torch.Tensor, path: Path, calibration: list[torch.Tensor] | None) -> None:
    """Lower `net` (fed like `example`, batch 1) to XNNPACK and write the program; int8 when `calibration` is given."""
    require(("executorch",), "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        if calibration is not None:
            net = quantize_pt2e(net, example, calibration)
        program = torch.export.export(net, (example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(lowered.buffer)


def quantize_pt2e(net: torch.nn.Module, example: torch.Tensor, calibration: list[torch.Tensor]) -> torch.nn.Module:
    """The PT2E int8 version of `net` for XNNPACK, calibrated on `calibration` (batch-1 inputs)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(net, (example,)).module(), quantizer)
    for batch in calibration:
        prepared(batch)
    return convert_pt2e(prepared)


class PteRunner:
    """A .pte program's forward method under ExecuTorch's Python runtime."""

    def __init__(self, path: Path) -> None:
        require(("executorch",), "Running a .pte file")
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(Path(path)).load_method("forward")

    @staticmethod
    def use_one_thread() -> None:
        """XNNPACK's thread pool to one thread, for latency comparable with single-threaded PyTorch. The Python
        runtime has no public setting for it; the pybindings' `_unsafe_reset_threadpool` is the one way."""
        from executorch.extension.pybindings import portable_lib

        if hasattr(portable_lib, "_unsafe_reset_threadpool"):
            portable_lib._unsafe_reset_threadpool(1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.method.execute([batch.contiguous()])[0]
