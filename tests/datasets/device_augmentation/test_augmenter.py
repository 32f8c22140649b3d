"""Per-sample device augmentations: parameter distributions, pixel agreement with torchvision's kernels, errors."""

import math

import pytest
import torch
import yaml
from scipy import stats
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from datasets.device_augmentation.augmenter import DeviceAugmenter, build_op
from utils.configuration import PROJECT_ROOT
from utils.errors import ConfigError

CPU = torch.device("cpu")
DRAWS = 20_000


def draws(name: str, params: dict | None, shape=(DRAWS, 3, 40, 60), seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return build_op(name, params).sample_params(shape, CPU, generator)


def image(channels: int = 3, height: int = 24, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, channels, height, width, generator=torch.Generator().manual_seed(seed))


def assert_uniform(values: torch.Tensor, low: float, high: float) -> None:
    assert low <= values.min().item() and values.max().item() <= high
    # Range fully used and flat: a KS test against U[low, high].
    assert values.min().item() < low + 0.01 * (high - low) and values.max().item() > high - 0.01 * (high - low)
    assert stats.kstest(values.double().numpy(), "uniform", args=(low, high - low)).pvalue > 1e-3


# --- parameter distributions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["RandomHorizontalFlip", "RandomVerticalFlip", "RandomGrayscale"])
def test_flip_and_grayscale_rate_matches_p(name):
    rate = next(iter(draws(name, {"p": 0.3}).values())).float().mean().item()
    assert abs(rate - 0.3) < 0.015


def test_flip_default_p_is_torchvisions_half():
    assert draws("RandomHorizontalFlip", None)["flip"].float().mean().item() == pytest.approx(0.5, abs=0.015)


def test_affine_angle_scale_shear_are_uniform_in_configured_ranges():
    p = draws("RandomAffine", {"degrees": 25, "translate": [0.1, 0.1], "scale": [0.9, 1.1], "shear": 8})
    assert_uniform(p["angle"], -25, 25)
    assert_uniform(p["scale"], 0.9, 1.1)
    assert_uniform(p["shear_x"], -8, 8)
    assert torch.all(p["shear_y"] == 0)  # a scalar shear is x-only, as in torchvision


def test_affine_translate_is_rounded_pixels_within_fraction_of_size():
    width, height = 60, 40
    p = draws("RandomAffine", {"degrees": 0, "translate": [0.1, 0.2]}, shape=(DRAWS, 3, height, width))
    for values, limit in ((p["translate_x"], 0.1 * width), (p["translate_y"], 0.2 * height)):
        assert torch.all(values == values.round())
        assert set(values.unique().tolist()) == set(range(-round(limit), round(limit) + 1))
        # round(U(-L, L)): the two end values get half the share of the inner ones.
        inner = (values == 0).float().mean().item()
        assert inner == pytest.approx(1 / (2 * limit), rel=0.1)
        assert (values == round(limit)).float().mean().item() == pytest.approx(0.5 / (2 * limit), rel=0.15)


def test_affine_defaults_leave_translate_scale_shear_neutral():
    p = draws("RandomAffine", {"degrees": [10, 20]})
    assert_uniform(p["angle"], 10, 20)
    assert torch.all(p["translate_x"] == 0) and torch.all(p["translate_y"] == 0)
    assert torch.all(p["scale"] == 1) and torch.all(p["shear_x"] == 0)


def test_affine_four_value_shear_draws_y_shear():
    p = draws("RandomAffine", {"degrees": 0, "shear": [-4, 6, 2, 5]})
    assert_uniform(p["shear_x"], -4, 6)
    assert_uniform(p["shear_y"], 2, 5)


def test_rotation_angle_is_uniform():
    assert_uniform(draws("RandomRotation", {"degrees": 30})["angle"], -30, 30)


def test_jitter_factors_follow_torchvision_ranges():
    p = draws("ColorJitter", {"brightness": 0.2, "contrast": [0.5, 1.5], "saturation": 1.4, "hue": 0.1})
    assert_uniform(p["brightness"], 0.8, 1.2)
    assert_uniform(p["contrast"], 0.5, 1.5)
    assert_uniform(p["saturation"], 0.0, 2.4)  # lower end clipped at 0: max(0, 1 - 1.4)
    assert_uniform(p["hue"], -0.1, 0.1)


def test_jitter_order_is_a_uniform_permutation_per_sample():
    order = draws("ColorJitter", {"brightness": 0.2})["order"]
    assert torch.all(order.sort(dim=1).values == torch.arange(4))
    for position in range(4):
        share = torch.bincount(order[:, position], minlength=4).float() / DRAWS
        assert torch.allclose(share, torch.full((4,), 0.25), atol=0.015)


def test_erasing_box_area_and_ratio_within_configured_ranges():
    shape = (DRAWS, 3, 40, 60)
    p = draws("RandomErasing", {"p": 0.5, "scale": [0.02, 0.25]}, shape=shape)
    assert p["apply"].float().mean().item() == pytest.approx(0.5, abs=0.015)
    assert 0.02 <= p["area_fraction"].min() and p["area_fraction"].max() <= 0.25
    assert 0.3 <= p["aspect_ratio"].min() and p["aspect_ratio"].max() <= 3.3  # torchvision's default ratio
    box_fraction = p["height"] * p["width"] / (40 * 60)
    assert torch.allclose(box_fraction, p["area_fraction"], atol=0.03)
    assert torch.all(p["top"] >= 0) and torch.all(p["top"] + p["height"] <= 40)
    assert torch.all(p["left"] >= 0) and torch.all(p["left"] + p["width"] <= 60)


def test_erasing_box_sizes_match_torchvisions_sampler():
    torch.manual_seed(0)
    reference = v2.RandomErasing(p=1.0, scale=(0.02, 0.25))
    frame = torch.zeros(3, 40, 60)
    ref = [reference.make_params([frame]) for _ in range(3000)]
    ref_h = [r["h"] for r in ref if r["v"] is not None]
    ref_w = [r["w"] for r in ref if r["v"] is not None]
    p = draws("RandomErasing", {"p": 1.0, "scale": [0.02, 0.25]}, shape=(3000, 3, 40, 60))
    assert stats.ks_2samp(ref_h, p["height"].numpy()).pvalue > 1e-3
    assert stats.ks_2samp(ref_w, p["width"].numpy()).pvalue > 1e-3


def test_erasing_skips_samples_whose_ten_tries_never_fit():
    p = draws("RandomErasing", {"p": 1.0, "scale": [0.999, 1.0], "ratio": [1.0, 1.0]}, shape=(100, 3, 16, 16))
    assert not p["apply"].any()


def test_two_samples_of_one_batch_get_different_parameters():
    augmenter = DeviceAugmenter({"RandomAffine": {"degrees": 25}, "ColorJitter": {"brightness": 0.2}},
                                {"RandomErasing": None})
    affine, jitter, erasing = augmenter.sample_params((2, 3, 32, 32), CPU)
    assert affine["angle"][0] != affine["angle"][1]
    assert jitter["brightness"][0] != jitter["brightness"][1]
    assert erasing["area_fraction"][0] != erasing["area_fraction"][1]
    batch = image(height=32, width=32).expand(2, -1, -1, -1)
    out = augmenter(batch)
    assert not torch.equal(out[0], out[1])


def test_parameters_drawn_for_another_batch_shape_are_refused():
    augmenter = template_augmenter()
    drawn = augmenter.draw((4, 3, 32, 32))
    assert augmenter.apply_drawn(torch.rand(4, 3, 32, 32), drawn).shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="do not fit a batch of shape"):
        augmenter.apply_drawn(torch.rand(3, 3, 32, 32), drawn)
    with pytest.raises(ValueError, match="do not fit a batch of shape"):
        augmenter.apply_drawn(torch.rand(4, 1, 32, 32), drawn)  # grayscale images have no hue step


# --- pixels -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim"), [("RandomHorizontalFlip", -1), ("RandomVerticalFlip", -2)])
def test_flip_mirrors_exactly_the_chosen_samples(name, dim):
    batch = torch.cat([image(seed=1), image(seed=2)])
    out = build_op(name, {"p": 0.5}).apply(batch, {"flip": torch.tensor([True, False])})
    assert torch.equal(out[0], batch[0].flip(dim)) and torch.equal(out[1], batch[1])


def neutral_affine(n: int = 1) -> dict[str, torch.Tensor]:
    zeros = torch.zeros(n)
    return {"angle": zeros, "translate_x": zeros, "translate_y": zeros, "scale": torch.ones(n),
            "shear_x": zeros, "shear_y": zeros}


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_identity_affine_returns_the_image(interpolation):
    x = image()
    out = build_op("RandomAffine", {"degrees": 10, "interpolation": interpolation}).apply(x, neutral_affine())
    assert torch.allclose(out, x, atol=1e-5)


def test_affine_matches_torchvision_affine_for_each_sample():
    op = build_op("RandomAffine", {"degrees": 25, "translate": [0.1, 0.1], "scale": [0.8, 1.2],
                                   "shear": [-8, 8, -5, 5], "interpolation": "bilinear"})
    batch = torch.cat([image(seed=s) for s in range(4)])
    params = op.sample_params(tuple(batch.shape), CPU, torch.Generator().manual_seed(3))
    out = op.apply(batch, params)
    for i in range(4):
        ref = TF.affine(batch[i], angle=params["angle"][i].item(),
                        translate=[params["translate_x"][i].item(), params["translate_y"][i].item()],
                        scale=params["scale"][i].item(), shear=[params["shear_x"][i].item(), params["shear_y"][i].item()],
                        interpolation=InterpolationMode.BILINEAR, fill=None)
        assert torch.allclose(out[i], ref, atol=1e-4)


def test_rotation_matches_torchvision_rotate_and_rot90():
    op = build_op("RandomRotation", {"degrees": 40, "interpolation": "bilinear"})
    x = image()
    out = op.apply(x, {"angle": torch.tensor([31.0])})
    assert torch.allclose(out, TF.rotate(x, 31.0, interpolation=InterpolationMode.BILINEAR), atol=1e-4)
    square = image(height=20, width=20)
    turned = op.apply(square, {"angle": torch.tensor([90.0])})
    expected = torch.rot90(square, k=1, dims=(-2, -1))
    assert torch.allclose(turned[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-4)


@pytest.mark.parametrize("flip", ["RandomHorizontalFlip", "RandomVerticalFlip"])
@pytest.mark.parametrize("warp", [("RandomAffine", {"degrees": 25, "translate": [0.1, 0.1], "scale": [0.9, 1.1],
                                                    "shear": 8, "fill": 0.3}),
                                  ("RandomRotation", {"degrees": 40})])
def test_a_flip_before_a_warp_runs_as_one_warp_with_the_same_pixels(flip, warp):
    augmenter = DeviceAugmenter({flip: {"p": 0.5}, warp[0]: warp[1]}, None)
    assert [step.name for step in augmenter.steps] == [f"{flip} + {warp[0]}"]
    batch = torch.cat([image(seed=seed) for seed in range(8)])
    generator = torch.Generator().manual_seed(3)
    flip_params, warp_params = augmenter.sample_params(tuple(batch.shape), batch.device, generator)
    assert 0 < flip_params["flip"].sum() < 8
    fused = augmenter.steps[0].apply(batch, {"flip": flip_params["flip"], "warp": warp_params})
    one_by_one = augmenter.ops[1].apply(augmenter.ops[0].apply(batch, flip_params), warp_params)
    torch.testing.assert_close(fused, one_by_one, atol=1e-4, rtol=0)


def test_only_a_flip_directly_before_a_warp_is_fused():
    augmenter = DeviceAugmenter({"RandomHorizontalFlip": None, "ColorJitter": {"hue": 0.1},
                                 "RandomAffine": {"degrees": 5}}, None)
    assert [step.name for step in augmenter.steps] == ["RandomHorizontalFlip", "ColorJitter", "RandomAffine"]
    assert [step.name for step in template_augmenter().steps] == [
        "RandomHorizontalFlip + RandomAffine", "ColorJitter", "RandomErasing"]


def test_affine_fills_outside_with_configured_value():
    op = build_op("RandomAffine", {"degrees": 0, "translate": [0.5, 0.0], "fill": 0.25})
    params = neutral_affine()
    params["translate_x"] = torch.tensor([8.0])
    out = op.apply(torch.ones(1, 3, 8, 16), params)
    assert torch.all(out[..., :8] == 0.25) and torch.all(out[..., 8:] == 1)


def jitter_params(**factors) -> dict[str, torch.Tensor]:
    params = {"brightness": torch.ones(1), "contrast": torch.ones(1), "saturation": torch.ones(1),
              "hue": torch.zeros(1), "order": torch.tensor([[0, 1, 2, 3]])}
    params.update({k: torch.tensor([v]) if not isinstance(v, torch.Tensor) else v for k, v in factors.items()})
    return params


@pytest.mark.parametrize(("component", "reference"), [("brightness", TF.adjust_brightness),
                                                      ("contrast", TF.adjust_contrast),
                                                      ("saturation", TF.adjust_saturation)])
@pytest.mark.parametrize("factor", [0.3, 1.7])
def test_blend_adjustments_match_torchvision(component, reference, factor):
    x = image()
    out = build_op("ColorJitter", {component: 0.9}).apply(x, jitter_params(**{component: factor}))
    assert torch.allclose(out, reference(x, factor), atol=1e-6)


@pytest.mark.parametrize("shift", [-0.5, -0.2, 0.07, 0.5])
def test_hue_shift_matches_torchvision_adjust_hue(shift):
    x = image()
    x[..., :4, :4] = 0.5  # grey pixels have no hue
    out = build_op("ColorJitter", {"hue": 0.5}).apply(x, jitter_params(hue=shift))
    assert torch.allclose(out, TF.adjust_hue(x, shift), atol=1e-5)


def test_jitter_applies_each_samples_own_order():
    x = torch.cat([image(seed=1), image(seed=1)])
    params = jitter_params(brightness=torch.tensor([1.5, 1.5]), contrast=torch.tensor([0.4, 0.4]),
                           saturation=torch.ones(2), hue=torch.tensor([0.2, 0.2]),
                           order=torch.tensor([[0, 1, 2, 3], [3, 1, 2, 0]]))
    out = build_op("ColorJitter", {"brightness": 0.5, "contrast": 0.6, "hue": 0.2}).apply(x, params)
    first = TF.adjust_hue(TF.adjust_contrast(TF.adjust_brightness(x[0], 1.5), 0.4), 0.2)
    second = TF.adjust_brightness(TF.adjust_contrast(TF.adjust_hue(x[1], 0.2), 0.4), 1.5)
    assert torch.allclose(out[0], first, atol=1e-5) and torch.allclose(out[1], second, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_compiled_jitter_mixes_channels_without_matrix_products_and_gives_eager_pixels(channels):
    """Under torch.compile the colour blends and the hue step are multiply-adds (fused by the compiler), not the
    eager path's batched matrix products; the pixels stay the same."""
    import torch._dynamo

    op = build_op("ColorJitter", {"brightness": 0.5, "contrast": 0.6, "saturation": 0.7, "hue": 0.3})
    x = torch.cat([image(channels, seed=seed) for seed in range(4)])
    generator = torch.Generator().manual_seed(3)
    prepared = op.prepare(op.sample_params(tuple(x.shape), CPU, generator), tuple(x.shape))
    graphs = []

    def record(graph_module, example_inputs):  # a torch.compile backend that keeps the traced graph and runs it
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(op.apply_prepared, backend=record)(x, prepared)
    targets = {node.target for graph in graphs for node in graph.graph.nodes if node.op == "call_function"}
    assert graphs and not targets & {torch.matmul, torch.bmm, torch.baddbmm}
    eager = op.apply_prepared(x, prepared)
    assert not torch.equal(eager, x)  # the jitter did change the pixels
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)  # rounding only: a level is 1/255


@pytest.mark.parametrize("channels", [1, 3])
def test_jitter_recorded_in_a_cuda_graph_mixes_channels_without_matrix_products_and_gives_eager_pixels(
        monkeypatch, channels):
    """In a CUDA graph (cuda_graphs: true) a launch costs the host nothing, so the colour blends and the hue step
    use in-place multiply-adds (fewer bytes than a slow batched product of inner size 3); the pixels stay the
    same. The capture is stood in for: this checks what runs while one is recorded."""
    op = build_op("ColorJitter", {"brightness": 0.5, "contrast": 0.6, "saturation": 0.7, "hue": 0.3})
    x = torch.cat([image(channels, seed=seed) for seed in range(4)])
    prepared = op.prepare(op.sample_params(tuple(x.shape), CPU, torch.Generator().manual_seed(3)), tuple(x.shape))
    products = []
    for name in ("matmul", "bmm", "baddbmm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, _real=real, **kwargs: products.append(1) or _real(*args,
                                                                                                          **kwargs))
    eager = op.apply_prepared(x, prepared)
    assert products  # eagerly, batched matrix products
    products.clear()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    recorded = op.apply_prepared(x, prepared)
    assert not products
    assert not torch.equal(eager, x)  # the jitter did change the pixels
    torch.testing.assert_close(recorded, eager, atol=1e-5, rtol=0)  # rounding only: a level is 1/255


def test_grayscale_turns_chosen_samples_into_luma():
    x = torch.cat([image(seed=1), image(seed=2)])
    out = build_op("RandomGrayscale", {"p": 0.5}).apply(x, {"gray": torch.tensor([True, False])})
    assert torch.allclose(out[0], TF.rgb_to_grayscale(x[0], num_output_channels=3), atol=1e-6)
    assert torch.equal(out[1], x[1])


def test_erasing_sets_the_box_to_value_and_nothing_else():
    x = image(height=20, width=30)
    params = {"apply": torch.tensor([True]), "top": torch.tensor([3.0]), "left": torch.tensor([5.0]),
              "height": torch.tensor([4.0]), "width": torch.tensor([7.0])}
    out = build_op("RandomErasing", {"value": 0.5}).apply(x, params)
    assert torch.all(out[..., 3:7, 5:12] == 0.5)
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[..., 3:7, 5:12] = False
    assert torch.equal(out[outside], x[outside])


def test_one_channel_images_keep_pixels_under_colour_ops_and_augment():
    x = image(channels=1)
    jitter = build_op("ColorJitter", {"saturation": 0.5, "hue": 0.3})
    assert torch.equal(jitter.apply(x, jitter_params(saturation=0.2, hue=0.25)), x)
    assert torch.equal(build_op("RandomGrayscale", {"p": 1.0})(x), x)
    bright = build_op("ColorJitter", {"brightness": 0.5}).apply(x, jitter_params(brightness=1.3))
    assert torch.allclose(bright, TF.adjust_brightness(x, 1.3))
    out = template_augmenter()(torch.rand(4, 1, 24, 32))
    assert out.shape == (4, 1, 24, 32)


# --- the augmenter ------------------------------------------------------------------------------------------------


def template_augmenter() -> DeviceAugmenter:
    config = yaml.safe_load((PROJECT_ROOT / "config_template.yml").read_text())
    return DeviceAugmenter(config["image_augmentations"], config["tensor_augmentations"])


def test_template_augmentations_run_in_config_order_then_tensor_ones():
    assert [op.name for op in template_augmenter().ops] == [
        "RandomHorizontalFlip", "RandomAffine", "ColorJitter", "RandomErasing"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_keeps_shape_dtype_device_and_range(dtype):
    batch = torch.rand(6, 3, 24, 32).to(dtype)
    out = template_augmenter()(batch)
    assert out.shape == batch.shape and out.dtype == dtype and out.device == batch.device
    assert out.min() >= 0 and out.max() <= 1


def test_seeded_generator_reproduces_output():
    augmenter, batch = template_augmenter(), torch.rand(6, 3, 24, 32)
    first = augmenter(batch, torch.Generator().manual_seed(7))
    assert torch.equal(first, augmenter(batch, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, augmenter(batch, torch.Generator().manual_seed(8)))


def test_unknown_name_is_a_config_error_listing_supported_ones():
    with pytest.raises(ConfigError) as error:
        DeviceAugmenter({"RandomPerspectiv": None}, None)
    message = str(error.value)
    assert "gpu augmentation 'RandomPerspectiv' is not supported with gpu_augmentations: true" in message
    assert "RandomAffine" in message and "RandomErasing" in message


def test_unknown_parameter_names_transform_and_suggests():
    with pytest.raises(ConfigError, match=r"'degree'.*RandomAffine.*did you mean 'degrees'"):
        build_op("RandomAffine", {"degree": 10})


@pytest.mark.parametrize(("name", "params", "culprit"), [
    ("RandomAffine", {"degrees": 10, "translate": [1.5, 0.1]}, "translate"),
    ("ColorJitter", {"brightness": 0.2, "hue": 0.9}, "hue"),
    ("RandomErasing", {"scale": [0.1, 2.0]}, "scale"),
])
def test_bad_parameter_value_names_transform_and_parameter(name, params, culprit):
    with pytest.raises(ConfigError, match=rf"{name} parameter '{culprit}'"):
        build_op(name, params)


def test_missing_required_parameter_and_expand_are_config_errors():
    with pytest.raises(ConfigError, match="RandomAffine needs parameter 'degrees'"):
        build_op("RandomAffine", None)
    with pytest.raises(ConfigError, match="RandomRotation parameter 'expand'"):
        build_op("RandomRotation", {"degrees": 10, "expand": True})


def test_erasing_area_uniform_and_ratio_log_uniform_when_every_box_fits():
    p = draws("RandomErasing", {"p": 1.0, "scale": [0.01, 0.02]})
    assert_uniform(p["area_fraction"], 0.01, 0.02)
    assert_uniform(p["aspect_ratio"].log(), math.log(0.3), math.log(3.3))


@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_makes_its_tensors_on_the_batch_device(channels):
    # PyTorch's "meta" device runs no kernels but refuses any tensor left on the CPU, as CUDA would; on a GPU such a
    # tensor is an error, or a copy that makes the CPU wait.
    augmenter = DeviceAugmenter({"RandomVerticalFlip": None, "RandomRotation": {"degrees": 10, "fill": 0.5},
                                 "RandomHorizontalFlip": None, "RandomAffine": {"degrees": 5, "shear": [1, 2, 3, 4]},
                                 "ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.1},
                                 "RandomGrayscale": {"p": 0.5}},
                                {"RandomErasing": {"p": 1.0, "value": "random"}})
    batch = torch.rand(4, channels, 24, 32, device="meta")
    assert augmenter(batch).device.type == "meta"  # parameters drawn on the device
    drawn = augmenter.draw(tuple(batch.shape)).to("meta")  # drawn in a worker, moved with the batch
    assert augmenter.apply_drawn(batch, drawn).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_stays_on_device_and_seeds_reproduce():
    augmenter, batch = template_augmenter(), torch.rand(8, 3, 24, 32, device="cuda").bfloat16()
    first = augmenter(batch, torch.Generator(device="cuda").manual_seed(3))
    assert first.device == batch.device and first.dtype == torch.bfloat16
    assert torch.equal(first, augmenter(batch, torch.Generator(device="cuda").manual_seed(3)))
