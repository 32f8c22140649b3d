"""The Dataset, DataModule and image cache: exact cache, uint8 batches, bbox lookup by name, data errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from datasets.prepared.stanford_data_module import StanfordCarsDataModule
from datasets.prepared.transforms import PrefixSettings, apply_prefix
from utils.configuration import validate
from utils.errors import ConfigError, DataError


def config_for(data: Path, **overrides) -> dict:
    return validate({"stanford_data_path": str(data), "image_size": [40, 48], "num_workers": 0,
                     "augment_images": False, "batch_size": 4, **overrides})


def all_items(module: StanfordCarsDataModule, split: str) -> list[tuple[torch.Tensor, int]]:
    module.setup("fit")
    dataset = module.datasets[split]
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("settings", [
    {},
    {"convert_to_grayscale": True},
    {"crop_to_bboxes": True},
    {"crop_to_bboxes": True, "erase_background": True},
])
def test_cached_items_equal_uncached_items_bit_for_bit(prepared: Path, settings: dict) -> None:
    cached = all_items(StanfordCarsDataModule(config_for(prepared, cache_images=True, **settings)), "train")
    uncached = all_items(StanfordCarsDataModule(config_for(prepared, cache_images=False, **settings)), "train")
    assert len(cached) == len(uncached) == 12
    for (a, label_a), (b, label_b) in zip(cached, uncached):
        assert a.dtype == torch.uint8 and a.shape == b.shape
        assert torch.equal(a, b) and label_a == label_b
    channels = 1 if settings.get("convert_to_grayscale") else 3
    assert cached[0][0].shape == (channels, 40, 48)


def test_uncached_item_is_the_thesis_chain_resize_then_to_tensor(prepared: Path) -> None:
    module = StanfordCarsDataModule(config_for(prepared, cache_images=False))
    image, label = all_items(module, "test")[0]
    labels = pd.read_csv(prepared / "test_labels.csv")
    with Image.open(prepared / "test" / labels["image_fname"][0]) as raw:
        expected = T.Compose([T.Resize([40, 48]), T.PILToTensor()])(raw.convert("RGB"))
    assert torch.equal(image, expected)
    assert label == labels["class"][0] - 1


def test_uint8_batch_normalized_on_device_matches_to_tensor_then_normalize(prepared: Path) -> None:
    from models.net_module import NetModule

    config = config_for(prepared)
    norm = config["normalization_params_rgb"]
    model = NetModule("ghost", num_classes=3, normalization=norm)
    batch = torch.stack([item[0] for item in all_items(StanfordCarsDataModule(config), "test")])
    on_device = model.preprocess(batch, train=False)
    thesis = T.Compose([T.ToPILImage(), T.ToTensor(), T.Normalize(norm["mean"], norm["std"])])
    expected = torch.stack([thesis(image) for image in batch])
    assert on_device.dtype == torch.float32
    torch.testing.assert_close(on_device, expected, atol=1e-6, rtol=1e-6)


def test_bbox_crop_looks_up_the_box_by_file_name_not_row_position(prepared: Path) -> None:
    labels = pd.read_csv(prepared / "train_labels.csv")
    labels.iloc[::-1].to_csv(prepared / "train_labels.csv", index=False)  # rows no longer in listing order
    module = StanfordCarsDataModule(config_for(prepared, crop_to_bboxes=True, cache_images=False))
    module.setup("fit")
    dataset = module.datasets["train"]
    settings = PrefixSettings((40, 48), False, True, False)
    for index in range(len(dataset)):
        row = labels[labels["image_fname"] == dataset.fnames[dataset.rows[index]]].iloc[0]
        with Image.open(prepared / "train" / row["image_fname"]) as raw:
            box = (row["bbox_x1"], row["bbox_y1"], row["bbox_x2"], row["bbox_y2"])
            expected = np.asarray(apply_prefix(raw, settings, box))
        assert np.array_equal(dataset[index][0].permute(1, 2, 0).numpy(), expected)


def test_cache_is_reused_and_rebuilt_when_an_input_changes(prepared: Path) -> None:
    cache_dir = prepared / ".cache"
    StanfordCarsDataModule(config_for(prepared)).setup("fit")
    first = sorted(p.name for p in cache_dir.glob("train-*.npy"))
    StanfordCarsDataModule(config_for(prepared)).setup("fit")
    assert sorted(p.name for p in cache_dir.glob("train-*.npy")) == first
    StanfordCarsDataModule(config_for(prepared, image_size=[32, 32])).setup("fit")
    assert len(list(cache_dir.glob("train-*.npy"))) == 2
    # Replacing an image's content gives a new cache whose pixels show the new content.
    target = prepared / "train" / "00001.jpg"
    Image.new("RGB", (90, 80), (255, 0, 0)).save(target)
    module = StanfordCarsDataModule(config_for(prepared))
    first_item = all_items(module, "train")[0][0]
    assert len(list(cache_dir.glob("train-*.npy"))) == 3
    assert first_item[0].float().mean() > 240 and first_item[1].float().mean() < 15


def test_labels_and_folder_out_of_step_lists_examples(prepared: Path) -> None:
    (prepared / "train" / "00002.jpg").unlink()
    Image.new("RGB", (80, 80)).save(prepared / "train" / "extra.jpg")
    with pytest.raises(DataError, match=r"00002\.jpg.*extra\.jpg"):
        StanfordCarsDataModule(config_for(prepared))


def test_missing_labels_csv_names_the_file(prepared: Path) -> None:
    (prepared / "test_labels.csv").unlink()
    with pytest.raises(DataError, match="test_labels.csv not found"):
        StanfordCarsDataModule(config_for(prepared))


@pytest.mark.parametrize("bad_class", [0, 2.5, "sedan"])
def test_class_ids_that_are_not_whole_numbers_from_1_name_the_row(prepared: Path, bad_class: object) -> None:
    labels = pd.read_csv(prepared / "train_labels.csv")
    labels["class"] = labels["class"].astype(object)
    labels.loc[3, "class"] = bad_class
    labels.to_csv(prepared / "train_labels.csv", index=False)
    with pytest.raises(DataError, match=r"train_labels\.csv: column class .* in row 5"):
        StanfordCarsDataModule(config_for(prepared))


@pytest.mark.parametrize("cache_images", [True, False])
def test_corrupt_image_error_names_the_file(prepared: Path, cache_images: bool) -> None:
    (prepared / "train" / "00003.jpg").write_bytes(b"not a jpeg")
    module = StanfordCarsDataModule(config_for(prepared, cache_images=cache_images))
    with pytest.raises(DataError, match=r"00003\.jpg"):
        all_items(module, "train")


def test_skip_corrupt_images_skips_and_counts(prepared: Path) -> None:
    (prepared / "train" / "00003.jpg").write_bytes(b"not a jpeg")
    module = StanfordCarsDataModule(config_for(prepared, skip_corrupt_images=True))
    items = all_items(module, "train")
    assert len(items) == 11 and module.skipped_images == 1


def test_classes_and_names_come_from_the_data(prepared: Path) -> None:
    module = StanfordCarsDataModule(config_for(prepared))
    assert module.num_classes == 3
    assert module.class_names == ["Car 1", "Car 2", "Car 3"]


def test_train_loader_yields_uint8_batches_with_augmentations(prepared: Path) -> None:
    module = StanfordCarsDataModule(config_for(prepared, augment_images=True))
    module.setup("fit")
    images, labels = next(iter(module.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 40, 48)
    assert labels.dtype == torch.long and labels.min() >= 0 and labels.max() <= 2


def test_tensor_augmentations_yield_float_batches(prepared: Path) -> None:
    module = StanfordCarsDataModule(config_for(prepared, augment_tensors=True))
    module.setup("fit")
    images, _ = next(iter(module.train_dataloader()))
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1


def test_train_loader_workers_draw_the_parameters_the_module_then_applies(prepared: Path) -> None:
    from models.net_module import NetModule

    config = config_for(prepared, gpu_augmentations=True, augment_images=True, num_workers=1, normalize=False,
                        image_augmentations={"RandomHorizontalFlip": {"p": 0.5}})
    module = StanfordCarsDataModule(config)
    module.setup("fit")
    torch.manual_seed(0)  # the workers' seeds derive from it
    batches = list(module.train_dataloader())
    assert all(len(batch) == 3 for batch in batches)  # images, targets, parameters drawn in the worker
    assert all(len(batch) == 2 for batch in module.val_dataloader())
    drawn = torch.cat([batch[2] for batch in batches])
    assert drawn.shape == (12, 1) and set(drawn[:, 0].tolist()) == {0.0, 1.0}  # each sample its own flip
    net = NetModule.from_config(config, module.num_classes, module.class_names).train()
    images, _, flips = batches[0]
    out = net.preprocess(images, train=True, drawn=flips)
    plain = images.float() / 255
    for sample, flip in zip(range(len(images)), flips[:, 0].tolist()):
        expected = plain[sample].flip(-1) if flip else plain[sample]
        assert torch.equal(out[sample], expected)


def test_a_device_augmentation_that_does_not_fit_the_images_fails_before_training(prepared: Path) -> None:
    config = config_for(prepared, gpu_augmentations=True, augment_tensors=True, convert_to_grayscale=True,
                        tensor_augmentations={"RandomErasing": {"value": [0.1, 0.2, 0.3]}})
    with pytest.raises(ConfigError, match="RandomErasing parameter 'value' has 3 numbers"):
        StanfordCarsDataModule(config)


def test_hold_out_is_class_stratified_seeded_and_disjoint() -> None:
    from datasets.prepared.stanford_data import hold_out

    labels = pd.DataFrame({"image_fname": [f"{i:03d}.jpg" for i in range(60)],
                           "class": [1] * 30 + [2] * 20 + [3] * 9 + [4]})
    kept, held = hold_out(labels, 0.1, seed=7)
    assert held["class"].value_counts().to_dict() == {1: 3, 2: 2, 3: 1}  # round(0.1 x n); class 4's one image kept
    assert set(kept["image_fname"]).isdisjoint(held["image_fname"])
    assert len(kept) + len(held) == 60
    again, _ = hold_out(labels, 0.1, seed=7)
    other, _ = hold_out(labels, 0.1, seed=8)
    assert again.equals(kept) and not other.equals(kept)


@pytest.mark.parametrize("cache_images", [True, False])
def test_held_out_validation_gets_the_test_preprocessing_and_test_stays_whole(prepared: Path,
                                                                              cache_images: bool) -> None:
    config = config_for(prepared, validation_split=0.25, crop_to_bboxes=True, cache_images=cache_images,
                        augment_images=True)
    module = StanfordCarsDataModule(config)
    module.setup("fit")
    train, valid, test = (module.datasets[part] for part in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (9, 3, 6)  # one of each class's 4 training images held out
    assert sorted(valid.targets.tolist()) == [0, 1, 2]
    assert valid.image_dir == prepared / "train" and test.image_dir == prepared / "test"
    assert set(valid.fnames).isdisjoint(train.fnames)
    assert train.prefix.crop_to_bbox and train.image_augment is not None
    # validation: no bbox crop, no augmentation, as the test split
    assert not valid.prefix.crop_to_bbox and valid.image_augment is None and valid.prefix == test.prefix
    for index in range(len(valid)):
        with Image.open(prepared / "train" / valid.fnames[valid.rows[index]]) as raw:
            expected = np.asarray(apply_prefix(raw, valid.prefix, None))
        assert np.array_equal(valid[index][0].permute(1, 2, 0).numpy(), expected)
    assert len(module.val_dataloader().dataset) == 3 and len(module.test_dataloader().dataset) == 6


def test_default_validation_is_the_test_split(prepared: Path) -> None:
    module = StanfordCarsDataModule(config_for(prepared))
    module.setup("fit")
    assert module.validates_on_test and module.datasets["valid"] is module.datasets["test"]
    assert len(module.datasets["train"]) == 12 and module.val_dataloader().dataset is module.datasets["test"]


def test_a_split_too_small_to_hold_out_an_image_is_a_config_error(prepared: Path) -> None:
    with pytest.raises(ConfigError, match=r"validation_split 0.05 holds out no training image"):
        StanfordCarsDataModule(config_for(prepared, validation_split=0.05))
