"""Image-level attacks: each one really distorts the way its name says, and configs build them safely."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.errors import ConfigError
from adaptguard.data.distortions import (
    IMAGE_TRANSFORMS,
    ColorJitter,
    Crop,
    GaussianBlur,
    GaussianNoise,
    ImageTransform,
    Jpeg,
    Reencode,
    Resize,
    Sharpness,
    make_image_transform,
    make_image_transforms,
)
from adaptguard.data.shapes import ShapesDataModule
from tests.helpers import model_source

SIZE = 32
# the one transform with a required setting: another autoencoder (the latent micro base's, shipped)
MICRO_VAE = str(ArtifactCache().shipped("base", model_source("micro").describe()) / "model")


def _build(name: str) -> ImageTransform:
    """Each transform at its defaults (reencode through the micro base's VAE)."""
    return make_image_transform({"name": name, "vae": MICRO_VAE} if name == "reencode" else name)


def _random(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _smooth(n: int = 2) -> torch.Tensor:
    """Low-frequency colour gradients, well inside [-1, 1]: what survives benign resampling and JPEG."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    image = torch.stack([0.8 * torch.sin(2 * x + y), 0.7 * torch.cos(x - 2 * y), 0.6 * x * y])
    return image.expand(n, 3, SIZE, SIZE).clone()


def _checkerboard(n: int = 2) -> torch.Tensor:
    """1-pixel cells of -1 / +1: all energy at the highest spatial frequency."""
    idx = torch.arange(SIZE)
    board = ((idx[:, None] + idx[None, :]) % 2 * 2 - 1).float()
    return board.expand(n, 3, SIZE, SIZE).clone()


def _high_freq_energy(images: torch.Tensor) -> float:
    """Mean squared difference between horizontal and vertical neighbours."""
    dx = images[..., :, 1:] - images[..., :, :-1]
    dy = images[..., 1:, :] - images[..., :-1, :]
    return (dx.pow(2).mean() + dy.pow(2).mean()).item()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(IMAGE_TRANSFORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_range_and_dtype_are_preserved(name, dtype):
    transform = _build(name)
    images = _random(3).to(dtype)
    images[0, :, :4, :4] = 1.0  # saturated corners: out-of-range results would show here
    images[1, :, :4, :4] = -1.0
    out = transform(images, _gen())
    assert out.shape == images.shape
    assert out.dtype == dtype
    assert out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, images)  # every default setting actually does something to random pixels


@pytest.mark.parametrize("name", sorted(IMAGE_TRANSFORMS))
def test_seeded_generator_reproduces_output(name):
    transform = _build(name)
    images = _random()
    assert torch.equal(transform(images, _gen(7)), transform(images, _gen(7)))


def test_gradients_flow_through_every_transform():
    """Needed to reuse the transforms as a distortion layer while training a watermark decoder."""
    for name in IMAGE_TRANSFORMS:
        images = (_smooth() * 0.5).requires_grad_()
        _build(name)(images, _gen()).sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0, name


def test_jpeg_distortion_grows_as_quality_drops():
    images = _smooth()
    error = {q: (Jpeg(quality=q)(images) - images).abs().mean().item() for q in (10, 95, 100)}
    assert error[10] > 3 * error[95]
    assert error[100] < 0.02  # close to identity (uint8 rounding, colour conversion, chroma subsampling)


def test_jpeg_is_a_real_round_trip():
    """A JPEG-compressed image re-compressed at the same quality barely changes; a random image changes a lot."""
    once = Jpeg(quality=50)(_random())
    assert (once - _random()).abs().mean() > 0.2
    assert (Jpeg(quality=50)(once) - once).abs().mean() < 0.05


def test_blur_removes_high_frequency_energy():
    board = _checkerboard()
    assert _high_freq_energy(GaussianBlur()(board)) < 0.05 * _high_freq_energy(board)
    # a smaller sigma weights the centre more and keeps more of the pattern
    assert _high_freq_energy(GaussianBlur(sigma=0.5)(board)) > _high_freq_energy(GaussianBlur()(board))


@pytest.mark.parametrize("std", [0.05, 0.1])
def test_noise_std_is_in_unit_range_units(std):
    images = torch.zeros(4, 3, 64, 64)  # mid-grey: clamping at +-1 is > 5 sigma away
    measured = ((GaussianNoise(std=std)(images, _gen()) - images) / 2).std().item()
    assert measured == pytest.approx(std, rel=0.1)


def test_noise_zero_std_is_identity():
    images = _random()
    assert torch.allclose(GaussianNoise(std=0)(images, _gen()), images)


def test_resize_destroys_pixel_checkerboard_but_keeps_smooth_image():
    board, smooth = _checkerboard(), _smooth()
    assert (Resize()(board) - board).abs().mean() > 0.9  # the pattern averages out to grey
    assert (Resize()(smooth) - smooth).abs().mean() < 0.02
    assert torch.equal(Resize(scale=1.0)(smooth), smooth)


def test_crop_keep_one_is_identity_and_smaller_keep_zooms_in():
    images = _random()
    assert torch.equal(Crop(keep=1.0)(images), images)
    ramp = torch.linspace(-1, 1, SIZE).expand(1, 3, SIZE, SIZE).clone()  # horizontal ramp
    zoomed = Crop(keep=0.5)(ramp)
    assert zoomed.shape == ramp.shape
    assert zoomed[..., 0].max() < -0.4 and zoomed[..., -1].min() > 0.4  # edges now come from the inner half
    assert (zoomed[..., -1] - zoomed[..., 0]).mean() < (ramp[..., -1] - ramp[..., 0]).mean()


def test_color_jitter_is_reproducible_and_seed_dependent():
    jitter, images = ColorJitter(), _smooth(4)
    first, again, other = jitter(images, _gen(1)), jitter(images, _gen(1)), jitter(images, _gen(2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    # factors are drawn per image: identical inputs get different outputs within one batch
    assert not torch.allclose(first[0], first[1])


def test_color_jitter_unit_factors_are_identity():
    images = _random()
    out = ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1))(images, _gen())
    assert torch.allclose(out, images, atol=1e-5)


def test_color_jitter_brightness_moves_mean_the_right_way():
    images = _smooth() * 0.5
    darker = ColorJitter(brightness=(0.5, 0.5), contrast=(1, 1), saturation=(1, 1))(images)
    brighter = ColorJitter(brightness=(1.5, 1.5), contrast=(1, 1), saturation=(1, 1))(images)
    assert darker.mean() < images.mean() < brighter.mean()


def test_sharpness_adds_high_frequency_energy():
    images = _random()
    sharpened = make_image_transform("sharpness")(images)
    assert _high_freq_energy(sharpened) > _high_freq_energy(images)


def test_make_by_name_dict_and_instance():
    jpeg = make_image_transform("jpeg")
    assert isinstance(jpeg, Jpeg) and jpeg.quality == 50
    custom = make_image_transform({"name": "jpeg", "quality": 30})
    assert isinstance(custom, Jpeg) and custom.quality == 30
    blur = GaussianBlur(sigma=1.0)
    assert make_image_transform(blur) is blur
    color = make_image_transform({"name": "color", "brightness": [0.5, 1.5]})  # YAML gives lists
    assert color.brightness == (0.5, 1.5) and color.contrast == (0.8, 1.2)
    for name, cls in IMAGE_TRANSFORMS.items():
        assert isinstance(_build(name), cls) and cls.name == name
        assert issubclass(cls, ImageTransform)


def test_defaults_follow_sleepermark_evaluation():
    assert Jpeg().quality == 50
    assert (GaussianBlur().kernel_size, GaussianBlur().sigma) == (3, 4.0)
    assert GaussianNoise().std == 0.1
    assert Resize().scale == 0.5
    assert make_image_transform("sharpness").describe() == {"name": "sharpness", "factor": 10.0}
    assert ColorJitter().describe() == {
        "name": "color",
        "brightness": (0.8, 1.2),
        "contrast": (0.8, 1.2),
        "saturation": (0.8, 1.2),
    }


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("jpg", ["'jpg'", "jpeg", "sharpness"]),  # unknown name lists the valid names
        ({"name": "nope"}, ["'nope'", "blur"]),
        ({"quality": 30}, ["'name'", "jpeg"]),
        ({"name": "jpeg", "qualty": 30}, ["eval.image_attacks.jpeg.qualty: unknown key", "valid keys: quality"]),
        ({"name": "jpeg", "quality": 0}, ["eval.image_attacks.jpeg.quality: must be in [1, 100], got 0"]),
        ({"name": "jpeg", "quality": 101}, ["quality", "101"]),
        ({"name": "jpeg", "quality": 50.5}, ["quality", "integer"]),
        ({"name": "blur", "kernel_size": 4}, ["blur", "kernel_size", "odd"]),
        ({"name": "blur", "sigma": 0}, ["blur", "sigma"]),
        ({"name": "noise", "std": -0.1}, ["noise", "std", ">= 0"]),
        ({"name": "noise", "std": "big"}, ["noise", "std", "number"]),
        ({"name": "resize", "scale": 1.5}, ["resize", "scale", "(0, 1]"]),
        ({"name": "crop", "keep": 0}, ["crop", "keep"]),
        ({"name": "color", "contrast": [1.2, 0.8]}, ["color", "contrast"]),
        ({"name": "color", "saturation": 0.5}, ["color", "saturation", "expected a list"]),
        ({"name": "sharpness", "factor": -1}, ["sharpness", "factor"]),
        ({"name": "reencode"}, ["eval.image_attacks.reencode.vae: required", "AutoencoderKL"]),
        ({"name": "reencode", "vae": "/no/such/vae"}, ["eval.image_attacks.reencode.vae: /no/such/vae is not an"]),
        (42, ["name", "mapping"]),
    ],
)
def test_bad_specs_raise_config_error_naming_the_key(spec, expected):
    with pytest.raises(ConfigError) as info:
        make_image_transform(spec)
    for part in expected:
        assert part in str(info.value)


def test_labels_show_only_non_default_settings():
    assert Jpeg().label == "jpeg"
    assert Jpeg(quality=30).label == "jpeg(quality=30)"
    assert GaussianBlur(sigma=4).label == "blur"  # 4 and 4.0 are the same setting
    assert GaussianBlur(kernel_size=5, sigma=2).label == "blur(kernel_size=5, sigma=2.0)"
    assert make_image_transform({"name": "color", "brightness": [0.5, 1.5]}).label == "color(brightness=(0.5, 1.5))"
    assert {make_image_transform(name).label for name in IMAGE_TRANSFORMS if name != "reencode"} == set(
        IMAGE_TRANSFORMS
    ) - {"reencode"}


def test_make_image_transforms_builds_list_and_rejects_duplicate_labels():
    transforms = make_image_transforms(["jpeg", {"name": "jpeg", "quality": 30}, Resize(scale=0.25)])
    assert [t.label for t in transforms] == ["jpeg", "jpeg(quality=30)", "resize(scale=0.25)"]
    assert [t.label for t in make_image_transforms("blur")] == ["blur"]
    assert make_image_transforms([]) == []
    with pytest.raises(ConfigError, match="jpeg"):
        make_image_transforms(["jpeg", {"name": "jpeg", "quality": 50}])


def test_transforms_are_immutable_and_reject_bad_input():
    with pytest.raises(AttributeError):
        Jpeg().quality = 10  # type: ignore[misc]
    with pytest.raises(ValueError, match="N, 3, H, W"):
        Jpeg()(torch.zeros(3, SIZE, SIZE))


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 10.0])
def test_sharpness_matches_torchvision(factor):
    """Ours is an out-of-place copy of torchvision's (which breaks autograd); the numbers must not drift."""
    images = _random()
    expected = TF.adjust_sharpness((images + 1) / 2, factor) * 2 - 1
    assert torch.allclose(Sharpness(factor=factor)(images), expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_their_dtype(dtype):
    images = _random().to(dtype)
    for name in IMAGE_TRANSFORMS:
        out = _build(name)(images, _gen())
        assert out.dtype == dtype and out.shape == images.shape, name


def test_reencoding_keeps_what_the_autoencoder_can_draw_and_loses_the_rest():
    """The micro base's VAE redraws the shapes it was trained on closely and a pixel checkerboard not at all;
    sampling the latent instead of taking its mode changes the result, seeded."""
    shapes = ShapesDataModule(resolution=SIZE, splits={"x": {"offset": 0, "size": 4}}).dataset("x")
    images = torch.stack([shapes[i]["image"] for i in range(4)])
    reencode = Reencode(vae=MICRO_VAE)
    assert (reencode(images) - images).pow(2).mean() < 0.2 * (images - images.mean()).pow(2).mean()
    checker = _checkerboard()
    assert _high_freq_energy(reencode(checker)) < 0.1 * _high_freq_energy(checker)
    sampled = Reencode(vae=MICRO_VAE, sample=True)
    short = ":".join(MICRO_VAE.split("/")[-2:])  # base-<hash>:model: a results key, not the whole path
    assert (reencode.label, sampled.label) == (f"reencode(vae={short})", f"reencode(vae={short}, sample)")
    assert torch.equal(reencode(images), reencode(images))
    assert not torch.equal(sampled(images, _gen(1)), reencode(images))
