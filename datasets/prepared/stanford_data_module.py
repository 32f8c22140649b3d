"""LightningDataModule over the prepared Stanford Cars folders.

Validation uses the test split by default, as in the thesis; `validation_split: <fraction>` holds out a seeded,
class-stratified share of the training images instead, and the test split becomes the test loader (evaluated once).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
from lightning_fabric.utilities.seed import pl_worker_init_function
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from datasets.device_augmentation.augmenter import DeviceAugmenter, DrawingCollate, device_augmentation_settings
from datasets.prepared import image_cache
from datasets.prepared.stanford_data import (
    BBOX_COLUMNS,
    StanfordCarsDataset,
    check_folder_matches,
    hold_out,
    read_labels,
    require_bboxes,
)
from datasets.prepared.transforms import PrefixSettings, build_v2_pipeline
from utils.errors import ConfigError

log = logging.getLogger("cars")


def init_worker(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: a Ctrl-C or a SIGTERM sent to the whole process group must reach
    only the main process, which stops training cleanly and then shuts the workers down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pl_worker_init_function(worker_id)


def default_num_workers() -> int:
    """One DataLoader worker per CPU core this process may use, at most 8."""
    return min(len(os.sched_getaffinity(0)), 8)


class StanfordCarsDataModule(pl.LightningDataModule):
    """Train, validation and (with a held-out validation split) test loaders for one config.

    The labels are read at construction, so `num_classes`, `class_names` and `img_channels` are known before the
    model is built; images and the cache are touched in `setup`, which every DDP rank calls. `parts` maps each
    stage ("train", "valid", "test") to its image folder and label rows; with `validation_split: test` the
    validation and test datasets are one object.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.data_path = Path(config["stanford_data_path"])
        self.labels = {split: read_labels(self.data_path, split) for split in ("train", "test")}
        for split, labels in self.labels.items():
            check_folder_matches(labels, self.data_path / split)
        if config["crop_to_bboxes"]:
            require_bboxes(self.labels["train"], self.data_path / "train_labels.csv")
        self.num_workers = config["num_workers"] if config["num_workers"] is not None else default_num_workers()
        size = tuple(config["image_size"])
        self.prefix = {
            "train": PrefixSettings(size, config["convert_to_grayscale"], config["crop_to_bboxes"],
                                    config["crop_to_bboxes"] and config["erase_background"]),
            "test": PrefixSettings(size, config["convert_to_grayscale"], False, False),
        }
        self.parts: dict[str, tuple[str, pd.DataFrame]] = {
            "train": ("train", self.labels["train"]), "valid": ("test", self.labels["test"]),
            "test": ("test", self.labels["test"])}
        if config["validation_split"] != "test":
            kept, held = hold_out(self.labels["train"], config["validation_split"], config["seed"] or 0)
            if held.empty:
                raise ConfigError(f"validation_split {config['validation_split']} holds out no training image "
                                  f"({len(kept)} images in {kept['class'].nunique()} classes): use a larger fraction")
            self.parts.update(train=("train", kept), valid=("train", held))
            log.info("validation: %d training images held out (validation_split %s); the test split's %d images "
                     "are evaluated once, on best.ckpt", len(held), config["validation_split"],
                     len(self.labels["test"]))
        on_cpu_workers = config["gpu_augmentations"] is not True  # an unresolved `auto` counts as off
        self.image_augment = (build_v2_pipeline(config["image_augmentations"], "image_augmentations")
                              if config["augment_images"] and on_cpu_workers else None)
        self.tensor_augment = (build_v2_pipeline(config["tensor_augmentations"], "tensor_augmentations")
                               if config["augment_tensors"] and on_cpu_workers else None)
        # With gpu_augmentations the train loader's workers draw each batch's parameters; the device applies them.
        on_device = device_augmentation_settings(config)
        self.drawing_collate = None
        if on_device is not None:
            augmenter = DeviceAugmenter(on_device["image"], on_device["tensor"])
            augmenter.draw((1, self.img_channels, *size))  # a bad setting fails here, not in a worker
            self.drawing_collate = DrawingCollate(augmenter)
        self.datasets: dict[str, StanfordCarsDataset] = {}

    @property
    def num_classes(self) -> int:
        """Classes are the raw 1-based ids, so the model needs as many outputs as the largest id."""
        return int(max(labels["class"].max() for labels in self.labels.values()))

    @property
    def class_names(self) -> list[str]:
        """Class names indexed by 0-based label (unknown ids get a placeholder)."""
        both = pd.concat(self.labels.values())
        names = dict(zip(both["class"], both["class_name"]))
        return [str(names.get(i, f"class {i}")) for i in range(1, self.num_classes + 1)]

    @property
    def img_channels(self) -> int:
        return 1 if self.config["convert_to_grayscale"] else 3

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for part, (folder, labels) in self.parts.items():
            if part == "test" and self.validates_on_test:
                self.datasets["test"] = self.datasets["valid"]
                continue
            train = part == "train"
            # Validation and test images get the test split's preprocessing: no bbox crop, no augmentation.
            prefix = self.prefix["train" if train else "test"]
            cache = None
            if self.config["cache_images"]:
                cache_dir = Path(self.config["cache_dir"] or self.data_path / ".cache")
                bboxes = [tuple(int(v) for v in row) for row in labels[BBOX_COLUMNS].to_numpy()]
                # keyed by the file list too: a held-out share and the rest of train get caches of their own
                cache = image_cache.open_or_build(
                    cache_dir, folder, self.data_path / folder, list(labels["image_fname"]), bboxes,
                    prefix, max(self.num_workers, 1), self.config["skip_corrupt_images"])
            self.datasets[part] = StanfordCarsDataset(
                self.data_path, folder, prefix,
                image_augment=self.image_augment if train else None,
                tensor_augment=self.tensor_augment if train else None,
                cache=cache, labels=labels)

    @property
    def skipped_images(self) -> int:
        """Images left out because they do not decode (skip_corrupt_images)."""
        return sum(dataset.skipped for dataset in {id(d): d for d in self.datasets.values()}.values())

    @property
    def validates_on_test(self) -> bool:
        """Whether validation runs on the test split (the thesis's choice) rather than on held-out training images."""
        return self.config["validation_split"] == "test"

    def batch_size(self, split: str) -> int:
        """The training batch size, or the validation one (`valid_batch_size`, null = 4 x batch_size)."""
        if split == "train":
            return self.config["batch_size"]
        return self.config["valid_batch_size"] or 4 * self.config["batch_size"]

    def _sampler(self, split: str, shuffle: bool) -> Sampler | None:
        """Under DDP each process reads its share; validation shares are not padded with repeats, so accuracy
        synced over the processes equals a single-process evaluation."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        dataset = self.datasets[split]
        if split == "train":
            return DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                      shuffle=shuffle, seed=self.config["seed"] or 0)
        return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                            shuffle=False)

    def _drops_a_batch_of_one(self, sampler: Sampler | None) -> bool:
        """True when the epoch's last training batch would hold a single image. Batch norm cannot train on one
        sample per channel (GhostNet's head fails on it), so that image is left out of the epoch instead."""
        images = len(sampler) if sampler is not None else len(self.datasets["train"])
        if images % self.batch_size("train") != 1 or images == 1:
            return False
        log.warning("the last training batch of each epoch would hold 1 image (%d images per process, batch_size "
                    "%d), which batch norm cannot train on: it is left out of each epoch (a batch_size that does "
                    "not leave 1 keeps it)", images, self.batch_size("train"))
        return True

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        sampler = self._sampler(split, shuffle)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size(split),
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            drop_last=split == "train" and self._drops_a_batch_of_one(sampler),
            num_workers=workers,
            worker_init_fn=init_worker if workers > 0 else None,
            pin_memory=self.config["pin_memory"] and self.trainer is not None
            and isinstance(self.trainer.accelerator, CUDAAccelerator),
            persistent_workers=self.config["persistent_workers"] and workers > 0,
            prefetch_factor=self.config["prefetch_factor"] if workers > 0 else None,
            collate_fn=self.drawing_collate if split == "train" else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
