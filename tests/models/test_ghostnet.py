"""GhostNet: the 2020 runs' parameter counts, squeeze-excite gate and initialisation, input channels, the head."""

import pytest
import torch
from torch.nn.init import _calculate_fan_in_and_fan_out

from models.arch_dict import build_architecture
from models.architectures.ghostnet import GhostBottleneck, GhostModule, GhostNet, SqueezeExcite


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Every num_params the 2020 runs logged (all_experiments.txt), with the runs that logged it.
@pytest.mark.parametrize(
    ("img_channels", "out_channels", "logged"),
    [
        (3, 320, 3_041_412),  # C-22, C-26 ... C-66
        (3, 640, 3_411_972),  # C-23
        (3, 960, 3_782_532),  # C-24
        (3, 1280, 4_153_092),  # C-1 ... C-21, C-58
        (3, 1600, 4_523_652),  # C-25
        (1, 1280, 4_152_804),  # grayscale: C-8, C-9, C-12
    ],
)
def test_parameter_count_matches_2020_logged_value(img_channels, out_channels, logged):
    assert count(GhostNet(num_classes=196, img_channels=img_channels, out_channels=out_channels)) == logged


def test_imagenet_size_count_is_ours_not_logged():
    # No 2020 run had 1000 classes; this is what the paper's ImageNet setting gives with the thesis's head.
    assert count(GhostNet(num_classes=1000, out_channels=1280)) == 5_183_016


@pytest.mark.parametrize(("out_channels", "thesis_table"), [(640, 3_411_970), (960, 3_782_530), (1600, 4_523_650)])
def test_thesis_table_counts_are_two_below_ours(out_channels, thesis_table):
    # Thesis §4.2.8 lists every count 2 below the logged num_params (3041410 vs 3041412 at 320 channels).
    assert count(GhostNet(num_classes=196, out_channels=out_channels)) == thesis_table + 2


def gate_output(gate: str, values: list[float]) -> torch.Tensor:
    """What SqueezeExcite multiplies into an all-ones input when its expand layer outputs `values`."""
    se = SqueezeExcite(len(values) * 4, reduction=4, gate=gate)
    with torch.no_grad():
        se.expand.weight.zero_()
        se.expand.bias.copy_(torch.tensor(values).repeat(4))
        return se(torch.ones(1, len(values) * 4, 3, 3))[0, : len(values), 0, 0]


GATE_INPUTS = [-4.0, -0.5, 0.0, 0.25, 1.0, 1.5, 4.0]


def test_clamp_gate_closes_negative_inputs_passes_unit_interval_and_caps_at_one():
    expected = torch.tensor([0.0, 0.0, 0.0, 0.25, 1.0, 1.0, 1.0])
    assert torch.allclose(gate_output("clamp", GATE_INPUTS), expected)


def test_hard_sigmoid_gate_is_relu6_of_x_plus_3_over_6():
    expected = torch.tensor([0.0, 2.5 / 6, 0.5, 3.25 / 6, 4 / 6, 4.5 / 6, 1.0])
    assert torch.allclose(gate_output("hard_sigmoid", GATE_INPUTS), expected)


def test_se_gate_reaches_every_squeeze_excite_and_changes_the_logits():
    torch.manual_seed(0)
    clamp = GhostNet(num_classes=5, out_channels=16).eval()
    paper = build_architecture("ghost", 5, 3, 0.2, 16, se_gate="hard_sigmoid").eval()
    paper.load_state_dict(clamp.state_dict())
    gates = {se.gate for se in paper.modules() if isinstance(se, SqueezeExcite)}
    assert gates == {"hard_sigmoid"} and {se.gate for se in clamp.modules() if isinstance(se, SqueezeExcite)} == {
        "clamp"}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(clamp(x), paper(x))


def test_unknown_gate_is_refused():
    with pytest.raises(ValueError, match="se_gate 'sigmoid'"):
        GhostNet(se_gate="sigmoid")


def test_fresh_weights_follow_2020_kaiming_fan_out_rule_outside_squeeze_excite_and_head():
    torch.manual_seed(0)
    model = GhostNet(num_classes=196, out_channels=320)
    se_convs = {id(c) for m in model.modules() if isinstance(m, SqueezeExcite) for c in (m.reduce, m.expand)}
    checked = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            weight = module.weight.detach()
            fan_in, fan_out = _calculate_fan_in_and_fan_out(weight)
            if id(module) in se_convs:
                # PyTorch's default (as 2020's Linear layers): uniform within 1 / sqrt(fan_in)
                assert weight.abs().max() <= fan_in ** -0.5 + 1e-6, name
                continue
            assert fan_out == module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            expected = (2 / fan_out) ** 0.5
            assert abs(weight.std().item() / expected - 1) < 0.25, name
            assert abs(weight.mean().item()) < 0.3 * expected, name
            checked += 1
        elif isinstance(module, torch.nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    assert checked > 60  # stem, Ghost modules, depthwise and shortcut convs, the 960-channel 1x1 conv
    # the 5x5 depthwise conv of 72 channels: std sqrt(2 / (72 * 25)) = 0.033, where PyTorch's default gives 0.115
    depthwise = model.features[4].downsample[0]
    assert depthwise.groups == 72 and 0.028 < depthwise.weight.std().item() < 0.039
    # the head keeps PyTorch's defaults: Linear weights uniform within 1 / sqrt(fan_in)
    assert model.classifier[0].weight.abs().max() <= 960 ** -0.5


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
