"""SqueezeNext and HarDNet, written from their papers: structure and the papers' parameter counts."""

import pytest
import torch

from models.architectures.hardnet import HarDNet, HarmonicDenseBlock, harmonic_links
from models.architectures.squeezenext import SqueezeNext, SqueezeNextBlock


def count_on_meta(build) -> int:
    with torch.device("meta"):  # no memory or init cost, even for HarDNet-85's 37 M parameters
        return sum(p.numel() for p in build().parameters())


@pytest.mark.parametrize(
    ("depth", "depthwise", "paper_millions"),
    [(39, True, 3.5), (68, True, 4.2), (68, False, 17.6), (85, False, 36.7)],  # HarDNet paper, ImageNet models
)
def test_hardnet_parameter_counts_match_the_paper(depth, depthwise, paper_millions):
    params = count_on_meta(lambda: HarDNet(depth, depthwise, num_classes=1000))
    assert params / 1e6 == pytest.approx(paper_millions, abs=0.05)


def test_squeezenext_23_at_width_1_has_the_papers_parameter_count():
    assert count_on_meta(lambda: SqueezeNext(1000, 3, 1.0)) / 1e6 == pytest.approx(0.72, abs=0.005)


def test_wider_squeezenext_has_more_parameters():
    counts = [count_on_meta(lambda w=w: SqueezeNext(10, 3, w)) for w in (1.0, 1.5, 2.0, 2.5)]
    assert counts == sorted(counts) and len(set(counts)) == 4


def test_harmonic_links_connect_layer_k_to_k_minus_powers_of_two_dividing_k():
    assert harmonic_links(1) == [0]
    assert harmonic_links(4) == [3, 2, 0]
    assert harmonic_links(6) == [5, 4]
    assert harmonic_links(8) == [7, 6, 4, 0]


def test_harmonic_block_outputs_odd_layers_and_the_last():
    block = HarmonicDenseBlock(in_ch=8, growth=4, multiplier=1.7, num_layers=4, depthwise=False)
    assert block.outputs == [1, 3, 4]
    out = block(torch.randn(1, 8, 6, 6))
    assert out.shape == (1, block.out_channels, 6, 6)
    # layer 4 reads 3 links, so it is the widest: 4 * 1.7^2 = 11.56 -> 12 channels (even)
    assert block.layers[3][0].out_channels == 12


def test_depthwise_block_layers_are_pointwise_then_depthwise():
    block = HarmonicDenseBlock(in_ch=8, growth=4, multiplier=1.7, num_layers=2, depthwise=True)
    pointwise, depthwise = block.layers[0][0][0], block.layers[0][1][0]
    assert pointwise.kernel_size == (1, 1) and depthwise.groups == depthwise.in_channels


def test_squeezenext_block_squeezes_then_separable_convs_then_expands():
    block = SqueezeNextBlock(32, 64, stride=2)
    convs = [m for m in block.body.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 16, 32, 32, 64]
    assert [c.kernel_size for c in convs] == [(1, 1), (1, 1), (3, 1), (1, 3), (1, 1)]
    assert block(torch.randn(1, 32, 16, 16)).shape == (1, 64, 8, 8)
