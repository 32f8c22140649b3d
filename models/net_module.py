"""The LightningModule: a network from `models/arch_dict.py`, its loss, optimizer, scheduler and epoch metrics.

Batches arrive as uint8 (or float when tensor augmentations ran in the workers); conversion to float, the optional
on-device augmentations and Normalize run here, on the training device, in `on_after_batch_transfer` (with
`cuda_graphs`, inside the training step's CUDA graph instead).
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from torchmetrics.classification import MulticlassAccuracy

from datasets.device_augmentation.augmenter import DeviceAugmenter, device_augmentation_settings
from models.arch_dict import build_architecture
from models.cuda_graphs import NotGraphable, TrainingGraph
from models.epoch_metrics import LossAndAccuracy
from models.training_parts import CUDA_GRAPH_MODES, build_loss, build_optimizer, build_scheduler

log = logging.getLogger("cars")


class GraphBatch(NamedTuple):
    """A training batch as it left the DataLoader, for the training step's CUDA graph to preprocess and train on:
    `drawn` holds the augmentation parameters the workers drew (None without `gpu_augmentations`)."""

    images: torch.Tensor
    targets: torch.Tensor
    drawn: torch.Tensor | None


class NetModule(pl.LightningModule):
    """Trains one architecture; logs `train_loss, train_acc, valid_loss, valid_acc, lr` once per epoch.

    Args:
        architecture: a name of `models/arch_dict.py`.
        num_classes: number of network outputs.
        img_channels: 1 (grayscale) or 3.
        dropout, output_channels: GhostNet's head (ignored by other architectures).
        se_gate: GhostNet's squeeze-excite gate, "clamp" or "hard_sigmoid". The default is the hard-sigmoid because
            checkpoints written before the key existed were trained with it; `from_config` passes the config's
            value (the 2020 runs' clamp by default).
        loss_function, loss_params: LabelSmoothingCrossEntropy or a torch.nn loss, with its keyword arguments.
        optimizer, optimizer_params: a torch.optim class name and its keyword arguments.
        lr_scheduler, lr_scheduler_params: a torch.optim.lr_scheduler class name (or None) and its arguments.
        normalization: {"mean": [...], "std": [...]} applied on the device, or None.
        device_augmentations: {"image": {...}, "tensor": {...}} run per sample on the device in training, or None.
        image_size, class_names: stored in the checkpoint so that it alone is enough to predict.
        channels_last, compile, compile_mode, cuda_graphs: device speed options (compile_mode is torch.compile's
            `mode`; cuda_graphs replays each training batch's forward, loss and backward as one CUDA graph, see
            `models/cuda_graphs.py`).
        graph_fallback: with cuda_graphs, a training step that cannot be graphed trains eagerly, with one warning,
            instead of stopping (`cuda_graphs: auto`).
    """

    def __init__(self, architecture: str, num_classes: int, img_channels: int = 3, dropout: float = 0.2,
                 output_channels: int = 320, loss_function: str = "LabelSmoothingCrossEntropy",
                 loss_params: dict | None = None, optimizer: str = "AdamW", optimizer_params: dict | None = None,
                 lr_scheduler: str | None = None, lr_scheduler_params: dict | None = None,
                 normalization: dict | None = None, device_augmentations: dict | None = None,
                 image_size: tuple[int, int] = (227, 227), class_names: list[str] | None = None,
                 channels_last: bool = False, compile: bool = False, compile_mode: str = "reduce-overhead",
                 cuda_graphs: bool = False, graph_fallback: bool = False, se_gate: str = "hard_sigmoid") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_architecture(architecture, num_classes=num_classes, img_channels=img_channels,
                                      dropout=dropout, output_channels=output_channels, se_gate=se_gate)
        self.loss = build_loss(loss_function, loss_params)
        if normalization is not None:
            # Normalize's (x - mean) / std as x * scale + shift: one kernel instead of two.
            std = torch.tensor(normalization["std"], dtype=torch.float64).view(1, -1, 1, 1)
            mean = torch.tensor(normalization["mean"], dtype=torch.float64).view(1, -1, 1, 1)
            self.register_buffer("scale", (1 / std).float(), persistent=False)
            self.register_buffer("shift", (-mean / std).float(), persistent=False)
        self.augment = None
        if device_augmentations is not None:
            self.augment = DeviceAugmenter(device_augmentations.get("image"), device_augmentations.get("tensor"))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._compile(compile, compile_mode)
        self.metrics = torch.nn.ModuleDict({f"{stage}_metrics": LossAndAccuracy() for stage in ("train", "valid")})
        # The test split, evaluated once at the end when validation is held out from train (validation_split).
        self.test_metrics = torch.nn.ModuleDict({
            "test_acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "test_top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        })

    def _compile(self, compile: bool, mode: str) -> None:
        # Stored around nn.Module's attribute registration: as a submodule, the compiled wrapper would put a second
        # copy of every weight into checkpoints, under keys that an uncompiled module cannot load.
        self.__dict__["_compiled_net"] = torch.compile(self.net, mode=mode) if compile else None
        # The preprocessing is a long chain of small elementwise kernels: compiled, it fuses into a few.
        self.__dict__["_compiled_preprocess"] = torch.compile(self._preprocess, mode=mode) if compile else None
        # With cuda_graphs, made at the first training batch on a GPU (graphing needs a real batch's shape).
        self.__dict__["_graphed_step"] = None
        self.__dict__["_graphed_now"] = False  # whether the current training batch was a replay
        self.__dict__["_graphed_off"] = False  # the step could not be graphed (graph_fallback): all batches eager

    def __getstate__(self) -> dict[str, Any]:
        # Compiled functions and CUDA graphs do not pickle (ddp_spawn pickles the module): they are made again.
        return {key: value for key, value in super().__getstate__().items()
                if not key.startswith(("_compiled_", "_graphed_"))}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._compile(self.hparams.compile, self.hparams.compile_mode)

    @classmethod
    def from_config(cls, config: dict[str, Any], num_classes: int, class_names: list[str],
                    graph_fallback: bool = False) -> NetModule:
        """The module a config describes, for a dataset of `num_classes` classes (`graph_fallback`: see the class;
        train.py sets it where `cuda_graphs: auto` was resolved to true)."""
        grayscale = config["convert_to_grayscale"]
        normalization = config["normalization_params_grayscale" if grayscale else "normalization_params_rgb"]
        return cls(
            architecture=config["architecture"], num_classes=num_classes, img_channels=1 if grayscale else 3,
            dropout=config["dropout"], output_channels=config["output_channels"],
            loss_function=config["loss_function"], loss_params=config["loss_params"],
            optimizer=config["optimizer"], optimizer_params=config["optimizer_params"],
            lr_scheduler=config["lr_scheduler"], lr_scheduler_params=config["lr_scheduler_params"],
            normalization=normalization if config["normalize"] else None,
            device_augmentations=device_augmentation_settings(config), image_size=tuple(config["image_size"]),
            class_names=class_names, channels_last=config["channels_last"] is True, compile=config["compile"],
            compile_mode=config["compile_mode"], cuda_graphs=config["cuda_graphs"] is True,  # unresolved auto: off
            graph_fallback=graph_fallback, se_gate=config["se_gate"],
        )

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # `is None`, not `or`: a compiled module's truth value asks the network for len(), which GhostNet lacks.
        if self._compiled_net is None:
            return self.net(images)
        return self._compiled_net(_any_batch_size(images))

    def _graph_for(self, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> TrainingGraph | None:
        """The training step's CUDA graph for batches like this one: made at the first training batch; None for
        batches of another shape (the epoch's last, smaller one), which run eagerly."""
        if self._graphed_step is None:
            started = time.perf_counter()
            try:
                graph = TrainingGraph(self.net, self.loss, inputs, targets, forward=self._graphed_forward,
                                      capture=inputs[0].is_cuda)
            except NotGraphable as error:
                if not self.hparams.graph_fallback:
                    raise
                log.warning("cuda_graphs: auto, but the training step could not be graphed (%s): training with the "
                            "eager step", error.reason)
                self.__dict__["_graphed_off"] = True
                return None
            if inputs[0].is_cuda:
                torch.cuda.synchronize(inputs[0].device)  # once: the warm-up passes' GPU work counts too
            log.info("cuda_graphs: training step for batches of %d captured in %.2f s", len(targets),
                     time.perf_counter() - started)
            self.__dict__["_graphed_step"] = graph
        return self._graphed_step if self._graphed_step.matches(inputs, targets) else None

    def _graphed_forward(self, images: torch.Tensor, drawn: torch.Tensor | None = None) -> torch.Tensor:
        # The preprocessing is recorded too: its 44 small operators then cost the host nothing per batch. The network
        # is the compiled one, when compiled, its batch size marked.
        return self(self.preprocess(images, train=True, drawn=drawn))

    def preprocess(self, images: torch.Tensor, train: bool, drawn: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 or [0, 1] float batch -> augmented (optional) and normalized float batch. `drawn` holds the
        augmentation parameters the train loader's workers drew (`DeviceAugmenter.draw`); without it they are
        drawn here, on the batch's device."""
        if self._compiled_preprocess is None:
            return self._preprocess(images, train, drawn)
        drawn = None if drawn is None else _any_batch_size(drawn)
        return self._compiled_preprocess(_any_batch_size(images), train, drawn)

    def _preprocess(self, images: torch.Tensor, train: bool, drawn: torch.Tensor | None) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.div(255)  # true division: ToTensor's float32 values, in one kernel
        if train and self.augment is not None:
            images = self.augment(images) if drawn is None else self.augment.apply_drawn(images, drawn)
        if self.hparams.normalization is not None:
            # Written straight in the layout the network wants: one pass over the batch instead of two.
            out = torch.empty_like(images, memory_format=torch.channels_last) if self.hparams.channels_last else None
            images = torch.addcmul(self.shift, images, self.scale, out=out)
        if self.hparams.channels_last:  # a no-op when Normalize wrote the layout already
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets, *drawn = batch  # the train loader adds drawn parameters with gpu_augmentations
        if self.trainer.training and self.hparams.cuda_graphs and not self._graphed_off and _graphable(images):
            return GraphBatch(images, targets, drawn[0] if drawn else None)  # preprocessed in the training step
        if self._compiled_net is not None and self.hparams.compile_mode in CUDA_GRAPH_MODES:
            # CUDA graphs reuse their output memory on each replay: telling torch where a step begins lets it reuse
            # the last step's instead of failing on outputs still alive (Lightning's loop is not a plain for loop).
            torch.compiler.cudagraph_mark_step_begin()
        return self.preprocess(images, train=self.trainer.training, drawn=drawn[0] if drawn else None), targets

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.loss(logits, targets)
        self.metrics[f"{stage}_metrics"].update(loss, logits.detach(), targets)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if not isinstance(batch, GraphBatch):
            self.__dict__["_graphed_now"] = False
            return self._step(batch, "train")
        inputs = _graph_inputs(batch)
        graph = self._graph_for(inputs, batch.targets)
        self.__dict__["_graphed_now"] = graph is not None
        if graph is None:  # another shape than the graph's: preprocessed and trained eagerly
            return self._step((self.preprocess(batch.images, train=True, drawn=batch.drawn), batch.targets), "train")
        loss, logits = graph.run(inputs, batch.targets)  # the gradients are in the parameters already
        self.metrics["train_metrics"].update(loss, logits, batch.targets)
        return loss

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this between training_step and backward: a replay has just written the gradients. A batch
        # run eagerly beside a graph adds its gradients to the graph's zeroed tensors, which stay attached.
        if self._graphed_now:
            return
        optimizer.zero_grad(set_to_none=self._graphed_step is None)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if not self._graphed_now:  # a replay ran its backward already
            super().backward(loss, *args, **kwargs)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "valid")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, targets = batch
        logits = self(images)
        for metric in self.test_metrics.values():
            metric.update(logits, targets)

    def on_test_epoch_end(self) -> None:
        for name, metric in self.test_metrics.items():
            self.log(name, metric.compute())  # synced across DDP ranks
            metric.reset()

    def on_train_epoch_start(self) -> None:
        # The learning rate used during this epoch (after the previous epoch's scheduler step), as in 2020's logs.
        self._epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("lr", self._epoch_lr, on_step=False, on_epoch=True, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        """Close the epoch: validation runs after the epoch's last training batch, so both stages are complete.

        The values are also kept in `epoch_record` for the metrics.csv writer, which must not depend on the order
        in which Lightning calls the epoch-end hooks of callbacks and of the module.
        """
        fitting = self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        record: dict[str, float] = {"epoch": self.current_epoch}
        for stage in ("train", "valid") if fitting else ("valid",):
            metric = self.metrics[f"{stage}_metrics"]
            # compute() syncs across DDP ranks: the values cover the whole split, not one rank's share.
            values = dict(zip(("loss", "acc"), metric.compute()))
            metric.reset()
            for name, value in values.items():
                record[f"{stage}_{name}"] = float(value)
                if not self.trainer.sanity_checking:
                    self.log(f"{stage}_{name}", value, prog_bar=True)
        if fitting:
            record["lr"] = float(self._epoch_lr)
            self.epoch_record = record

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.hparams.optimizer, self.hparams.optimizer_params or {}, self.parameters())
        scheduler = build_scheduler(self.hparams.lr_scheduler, self.hparams.lr_scheduler_params, optimizer)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}


def _graphable(images: torch.Tensor) -> bool:
    """Whether a batch can run through CUDA graphs: on a CUDA device."""
    return images.is_cuda


def _graph_inputs(batch: GraphBatch) -> tuple[torch.Tensor, ...]:
    """What the training step's CUDA graph reads: the images, and the drawn augmentation parameters if any."""
    return (batch.images,) if batch.drawn is None else (batch.images, batch.drawn)


def _any_batch_size(batch: torch.Tensor) -> torch.Tensor:
    """`batch`, marked for torch.compile as having a batch size that varies. Otherwise the first graph is made for
    the first batch's size, and the epoch's last, smaller batch compiles the whole training step a second time
    (with a varying size then); marked, one graph serves every size (see documentation/performance.md)."""
    torch._dynamo.maybe_mark_dynamic(batch, 0)
    return batch
