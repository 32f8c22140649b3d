"""GhostNet: the 2020 runs' parameter counts, input channels, and the thesis's head settings."""

import pytest
import torch

from models.architectures.ghostnet import GhostBottleneck, GhostModule, GhostNet


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("num_classes", "out_channels", "logged"),
    [(196, 320, 3_041_412), (196, 1280, 4_153_092), (1000, 1280, 5_183_016)],
)
def test_parameter_count_matches_2020_logged_value(num_classes, out_channels, logged):
    assert count(GhostNet(num_classes=num_classes, out_channels=out_channels)) == logged


@pytest.mark.parametrize(("out_channels", "thesis_table"), [(640, 3_411_970), (960, 3_782_530), (1600, 4_523_650)])
def test_other_head_sizes_are_thesis_table_plus_the_same_two_as_the_logged_runs(out_channels, thesis_table):
    # Thesis §4.2.8 lists every count 2 below the logged num_params (3041410 vs 3041412 at 320 channels).
    assert count(GhostNet(num_classes=196, out_channels=out_channels)) == thesis_table + 2


def test_backbone_does_not_depend_on_classes_or_head_width():
    small, large = GhostNet(num_classes=10, out_channels=8), GhostNet(num_classes=1000, out_channels=1280)
    assert count(small.features) == count(large.features)


@pytest.mark.parametrize("img_channels", [1, 3])
def test_forward_gives_one_row_of_logits_per_image(img_channels):
    model = GhostNet(num_classes=196, img_channels=img_channels, out_channels=320).eval()
    with torch.no_grad():
        out = model(torch.randn(2, img_channels, 64, 64))
    assert out.shape == (2, 196)
    assert model.features[0][0].in_channels == img_channels


def test_non_square_and_small_inputs_work_thanks_to_global_pooling():
    model = GhostNet(num_classes=7, out_channels=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 72)).shape == (1, 7)


def test_out_channels_sets_the_head_width():
    model = GhostNet(num_classes=196, out_channels=320)
    first, last = model.classifier[0], model.classifier[-1]
    assert (first.in_features, first.out_features, first.bias) == (960, 320, None)
    assert (last.in_features, last.out_features) == (320, 196)


@pytest.mark.parametrize(("dropout", "same"), [(0.0, True), (0.9, False)])
def test_dropout_is_applied_in_training_only_at_the_given_rate(dropout, same):
    torch.manual_seed(0)
    model = GhostNet(num_classes=5, dropout=dropout, out_channels=64).train()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), model(x)) is same
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_ghost_module_makes_half_its_maps_with_the_cheap_depthwise_conv():
    module = GhostModule(16, 24)
    assert module.primary[0].out_channels == 12
    assert module.cheap[0].groups == 12 and module.cheap[0].out_channels == 12
    assert module(torch.randn(1, 16, 8, 8)).shape == (1, 24, 8, 8)
    assert GhostModule(16, 7)(torch.randn(1, 16, 8, 8)).shape == (1, 7, 8, 8)


def test_bottleneck_has_identity_shortcut_only_when_shape_is_kept():
    kept = GhostBottleneck(16, 48, 16)
    strided = GhostBottleneck(16, 48, 24, dw_kernel=5, stride=2, se=True)
    assert isinstance(kept.shortcut, torch.nn.Identity)
    assert strided(torch.randn(1, 16, 16, 16)).shape == (1, 24, 8, 8)
    assert strided.se is not None and kept.se is None


def test_width_multiplier_scales_the_backbone():
    assert (
        count(GhostNet(width_mult=0.5).features) < count(GhostNet().features) < count(GhostNet(width_mult=1.3).features)
    )
