"""A training batch's forward, loss and backward as one CUDA graph (`cuda_graphs: true`).

On an H100 a compiled GhostNet step was bound by the host (2026-11-26, benchmarks/RESULTS.md): even with
torch.compile's own CUDA graphs, the host's forward and backward took about 12 ms of a 19 ms step, presumably the
Python around each replay and the gradients handed back one tensor at a time. Here the whole of that work is one
`torch.cuda.graph`: a step copies its batch into the graph's input buffers and replays it, and the gradients land
in the same tensors every time, already attached to the parameters. Lightning's loop, the optimizer, the schedulers
and the checkpoints stay as they are (NetModule skips Lightning's backward and zero_grad for a replayed batch).
NetModule records its on-device preprocessing in the same graph: its inputs are the batch as it arrives (uint8
images and the augmentation parameters the workers drew). On an H100 (2026-11-26) the full pipeline trained at
88 % of this model-only step, 94 % with compile (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from utils.errors import ConfigError


class NotGraphable(ConfigError):
    """The training step could not be captured; `reason` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cuda_graphs: true, but the training step could not be graphed ({reason}); set "
                         "cuda_graphs: false")
        self.reason = reason


WARMUP = 3  # passes before the capture (cuDNN's choice of kernels, the allocator), as PyTorch's guide advises


class TrainingGraph:
    """`forward`, `loss` and the backward into `net`'s parameters for batches shaped like (`inputs`, `targets`),
    recorded once and replayed by `run`. `inputs` is the batch's tensor, or a sequence of tensors that `forward`
    takes in that order (`forward(*inputs)` gives the logits; default `net` itself).

    Making it runs WARMUP passes on the sample batch (on a side stream) and records one; batch norm's running
    statistics are put back afterwards, in place (the graph holds their addresses), and the sample's gradients are
    not kept. Call it in training mode, outside autocast, with `net` on a CUDA device. `capture=False` records
    nothing: `run` then does the same work eagerly, into the same buffers, which checks everything around the graph
    on a machine without CUDA. A step that cannot be graphed (an operation that waits for the host, say) is
    NotGraphable, a ConfigError naming the setting.
    """

    def __init__(self, net: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 inputs: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor,
                 forward: Callable[..., torch.Tensor] | None = None, capture: bool = True) -> None:
        self.net, self.loss_fn, self.capture = net, loss, capture
        self.forward = net if forward is None else forward
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.inputs = tuple(tensor.detach().clone() for tensor in _as_tuple(inputs))
        self.targets = targets.detach().clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        buffers = list(net.buffers())
        saved = [buffer.clone() for buffer in buffers]
        current = torch.cuda.current_stream() if capture else None
        try:
            self._warm_up()
            for param in self.params:
                param.grad = None  # the recorded backward allocates them in the graph's memory; replays write there
            self.loss, self.logits = self._record()
        except (RuntimeError, AssertionError) as error:
            if current is not None:  # a capture_end that fails leaves the capture's stream current
                torch.cuda.set_stream(current)
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise NotGraphable(reason) from error
        finally:
            with torch.no_grad():
                for buffer, value in zip(buffers, saved):
                    buffer.copy_(value)
        # A parameter the step does not reach keeps no gradient, as in an eager step.
        self.params = [param for param in self.params if param.grad is not None]
        self.grads = [param.grad for param in self.params]

    def matches(self, inputs: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor) -> bool:
        """Whether this batch can be replayed: the recorded shapes and dtypes (the epoch's last batch is often
        smaller)."""
        inputs = _as_tuple(inputs)
        return (len(inputs) == len(self.inputs) and targets.shape == self.targets.shape
                and all(new.shape == old.shape and new.dtype == old.dtype for new, old in zip(inputs, self.inputs)))

    def run(self, inputs: torch.Tensor | Sequence[torch.Tensor],
            targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss and backward of this batch: (loss, logits), both detached and overwritten by the next run;
        the gradients are in the parameters' `.grad`."""
        for buffer, tensor in zip(self.inputs, _as_tuple(inputs)):
            buffer.copy_(tensor)
        self.targets.copy_(targets)
        self._reattach_grads()  # something (a zero_grad with set_to_none) may have dropped them
        if self.graph is not None:
            self.graph.replay()
        else:
            torch._foreach_zero_(self.grads)  # a replay writes the gradients; the eager backward adds to them
            loss, logits = self._pass()
            self.loss.copy_(loss)
            self.logits.copy_(logits)
        return self.loss, self.logits

    def _reattach_grads(self) -> None:
        for param, grad in zip(self.params, self.grads):
            if param.grad is not grad:
                param.grad = grad

    def _pass(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(*self.inputs)
        loss = self.loss_fn(logits, self.targets)
        loss.backward()
        return loss.detach(), logits.detach()

    def _warm_up(self) -> None:
        if not self.capture:
            for _ in range(WARMUP):
                self._pass()
            return
        # The capture uses this stream too: autograd's nodes from the warm-up then refer to no stream outside it.
        self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for _ in range(WARMUP):
                for param in self.params:
                    param.grad = None
                self._pass()
        torch.cuda.current_stream().wait_stream(self.stream)

    def _record(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.capture:
            return self._pass()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread keeps working during the capture, and its host
        # allocator's calls are not part of the graph (in the default "global" mode they would fail it).
        with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
            return self._pass()


def _as_tuple(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
