"""The network's training forward and backward as CUDA graphs (`cuda_graphs: true`), with PyTorch's
`torch.cuda.make_graphed_callables`.

On an H100 a compiled GhostNet step was bound by the host (2026-11-26, documentation/performance.md): even with
torch.compile's own CUDA graphs, the host's forward and backward took about 12 ms of a 19 ms step, presumably the
Python around each replay and the gradients handed back one tensor at a time. A graphed callable is one autograd
node: its forward replays one graph, its backward another, and Lightning's loop, the loss, the optimizer and the
schedulers stay as they are. Not yet run on a GPU.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.errors import ConfigError


class _Forward(nn.Module):
    """A plain holder of the network, so that graphing patches this holder's forward, not the network's own
    (validation, inference and batches of other sizes keep calling the network directly)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def graph_training_passes(net: nn.Module, sample: torch.Tensor) -> nn.Module:
    """A module that runs `net`'s training forward and backward as CUDA graphs, for batches shaped like `sample`.

    `make_graphed_callables` runs a few warm-up passes on `sample` before it captures, which would also move batch
    norm's running statistics: they are put back, in place (the graphs hold their addresses). Call in training mode,
    outside autocast, with `net` on a CUDA device. A network that cannot be graphed (an operation that waits for
    the host, say) is a ConfigError naming the setting.
    """
    buffers = list(net.buffers())
    saved = [buffer.clone() for buffer in buffers]
    try:
        return torch.cuda.make_graphed_callables(_Forward(net), (sample.detach(),))
    except (RuntimeError, AssertionError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ConfigError(f"cuda_graphs: true, but the network could not be graphed ({reason}); set cuda_graphs: "
                          "false") from error
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)
