"""The architecture registry: every name builds, reads 1 or 3 channels, and rejects unknown names helpfully."""

import pytest
import torch

from models.arch_dict import (
    MIN_IMAGE_SIZE,
    architecture_family,
    build_architecture,
    get_architectures_dictionary,
    min_image_size,
    replace_first_conv,
)
from utils.errors import ConfigError

NAMES = (
    "sq_10 sq_11 sqnxt_1 sqnxt_1v5 sqnxt_2 sqnxt_2v5 mob_v2 mob_v3_small mob_v3_large eff_b0 eff_b1 eff_b2 eff_b3 eff_b4 eff_b5 eff_b6 eff_b7 "
    "ghost hard_39 hard_39dw hard_68 hard_68dw hard_85 hard_85dw shuff_v2_x05 shuff_v2_x10 shuff_v2_x15 shuff_v2_x20"
).split()


def test_registry_holds_exactly_the_2020_names_and_mobilenet_v3():
    assert sorted(get_architectures_dictionary()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_architecture_classifies_grayscale_and_rgb_batches(name):
    constructor = get_architectures_dictionary()[name]
    for channels in (1, 3):
        model = constructor(num_classes=7, img_channels=channels).eval()
        with torch.no_grad():
            assert model(torch.randn(2, channels, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", NAMES)
def test_minimum_image_size_works_and_one_pixel_less_fails(name):
    model = get_architectures_dictionary()[name](num_classes=3, img_channels=1).train()
    size = min_image_size(name)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 3)
    if size > 1:
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 1, size - 1, size - 1))


def test_minimum_size_table_covers_every_name_with_no_unused_entries():
    assert {architecture_family(n) for n in NAMES} == set(MIN_IMAGE_SIZE)
    assert all(min_image_size(n) >= 1 for n in NAMES)


def test_build_architecture_gives_ghostnet_the_dropout_and_head_width():
    model = build_architecture("ghost", num_classes=196, img_channels=1, dropout=0.4, output_channels=320)
    assert model.dropout == 0.4 and model.classifier[3].p == 0.4
    assert model.classifier[0].out_features == 320
    assert model.features[0][0].in_channels == 1


def test_build_architecture_ignores_ghostnet_settings_for_other_networks():
    model = build_architecture("shuff_v2_x05", num_classes=5, img_channels=1, dropout=0.4, output_channels=320)
    assert model.fc.out_features == 5 and model.conv1[0].in_channels == 1


def test_unknown_architecture_is_a_config_error_listing_valid_names():
    with pytest.raises(ConfigError) as error:
        build_architecture("ghostnet", num_classes=5, img_channels=3, dropout=0.2, output_channels=320)
    message = str(error.value)
    assert message.startswith("config error: architecture 'ghostnet' is not in models/arch_dict.py")
    assert "'ghost'" in message and all(n in message for n in NAMES)
    with pytest.raises(ConfigError, match="hard_86"):
        min_image_size("hard_86")


def test_replacing_the_first_conv_keeps_its_geometry():
    model = get_architectures_dictionary()["sq_10"](num_classes=4, img_channels=3)
    before = model.features[0]
    after = replace_first_conv(model, 1).features[0]
    assert after.in_channels == 1
    assert (after.out_channels, after.kernel_size, after.stride, after.padding) == (
        before.out_channels,
        before.kernel_size,
        before.stride,
        before.padding,
    )


def test_mobilenet_v3_is_torchvisions_from_scratch_with_img_channels():
    small = build_architecture("mob_v3_small", num_classes=196, img_channels=1, dropout=0.2, output_channels=320)
    assert small.features[0][0].in_channels == 1 and small.classifier[-1].out_features == 196
    # torchvision's MobileNetV3 with 1000 classes: 2.54 M (small) and 5.48 M (large) parameters
    for name, params in (("mob_v3_small", 2_542_856), ("mob_v3_large", 5_483_032)):
        model = build_architecture(name, num_classes=1000, img_channels=3, dropout=0.2, output_channels=320)
        assert sum(p.numel() for p in model.parameters()) == params
