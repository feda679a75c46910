"""FID/KID: which extractor is used, that it separates good from bad models, and errors."""

import pytest
import torch

from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ATTRIBUTES, ShapesDataModule
from adaptguard.metrics import features
from adaptguard.metrics.fidelity import shares
from adaptguard.metrics.quality import QualityEvaluator
from tests.helpers import model_source


@pytest.mark.parametrize("name", ["pixel", "tiny"])
def test_domain_fid_ranks_the_pretrained_model_above_random_init(name, ctx):
    """The shipped models (pixel: 32 px; tiny: latent, 64 px) draw the shapes; their random inits draw noise."""
    source = model_source(name)
    res = source.resolution
    data = ShapesDataModule(resolution=res, splits={"eval": {"offset": 9000, "size": 32}})
    ev = QualityEvaluator(num_samples=32, kid_subset_size=16, kid_subsets=20)
    pretrained, random_init = source.load(ctx), source.build()
    pretrained.sampler.steps = random_init.sampler.steps = 10  # the ranking, not the best FID
    good, images = ev.evaluate(pretrained, data, "eval", ctx)
    bad, _ = ev.evaluate(random_init, data, "eval", ctx)
    assert set(good.metrics()) == {"fid_shapesnet", "kid_shapesnet_mean", "kid_shapesnet_std", "fidelity_shapesnet",
                                   "fidelity_shapesnet_kind+colour", "fidelity_shapesnet_real",
                                   "fidelity_shapesnet_kind+colour_real"}  # fmt: skip
    assert good.extractor == "shapesnet" and good.num_samples == 32 and good.split == "eval"
    assert images.shape == (32, 3, res, res)
    assert good.fid < 0.5 * bad.fid, (good, bad)
    assert good.kid_mean < 0.5 * bad.kid_mean, (good, bad)
    # prompt fidelity: the pretrained model draws more of what its prompts ask than noise does, and the real
    # images (the ceiling) more than either
    assert set(good.fidelity) == {"kind", "colour", "background", "size", "position", "kind+colour", "all"}
    assert good.fidelity_real == bad.fidelity_real and good.fidelity_real["kind+colour"] >= 0.9
    assert bad.fidelity["kind+colour"] < good.fidelity["kind+colour"] <= good.fidelity_real["kind+colour"] + 0.1
    assert bad.fidelity["all"] <= good.fidelity["all"] <= good.fidelity_real["all"] + 0.1


def test_caption_attributes_round_trip():
    world = ShapesDataModule().world
    for i in range(50):
        a = world.attributes(i)
        assert world.read_caption(world.caption(a)) == {k: a[k] for k in ATTRIBUTES}
    assert world.read_caption("a photo of sks dog") is None
    assert world.read_caption("a small red circle in the center on a pink background") is None  # no such colour


def test_prompt_fidelity_of_real_images_with_their_own_and_with_shuffled_captions(ctx):
    """Real images read as their captions say (the ceiling); with another image's caption they match about
    as often as two random images share kind and colour."""
    data = ShapesDataModule(resolution=32, splits={"eval": {"offset": 9000, "size": 256}})
    ev = QualityEvaluator()
    items = [data.dataset("eval")[i] for i in range(256)]
    images = torch.stack([x["image"] for x in items])
    captions = [x["caption"] for x in items]
    own = shares(ev._score_images(images, captions, data, ctx).matches)
    shuffled = shares(ev._score_images(images, captions[1:] + captions[:1], data, ctx).matches)
    assert own["kind+colour"] >= 0.95 and own["all"] >= 0.85, own
    assert shuffled["kind+colour"] < 0.2 and shuffled["kind"] < 0.4, shuffled
    unreadable = ["a photo of sks dog"] * len(captions)
    none = ev._score_images(images, unreadable, data, ctx)
    assert none.matches == {} and none.features.shape == (
        256,
        128,
    )  # no caption names an attribute: no fidelity, not a zero


def test_quality_is_reproducible(micro_base, micro_data, ctx):
    ev = QualityEvaluator(num_samples=16, kid_subset_size=8, kid_subsets=5)
    first, _ = ev.evaluate(micro_base, micro_data, "eval", ctx)
    again, _ = ev.evaluate(micro_base, micro_data, "eval", ctx)
    assert again == first  # seeded sampling and KID subsets


def test_shipped_feature_extractor_recognises_every_attribute(micro_data, ctx):
    name, net = QualityEvaluator().extractor(micro_data, ctx)
    assert name == "shapesnet"
    assert min(net.test_accuracy.values()) >= 0.95, net.test_accuracy


@pytest.fixture
def inception_weights(tmp_path, monkeypatch):
    """A weights file in torch-fidelity's format (random values: real ones cannot be downloaded here)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as m:  # only to build the architecture without its download
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        m.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "weights-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_features_from_a_local_weights_file(inception_weights, micro_base, micro_data, ctx):
    ev = QualityEvaluator(num_samples=8, kid_subset_size=4, kid_subsets=4, feature="inception",
                          weights_path=str(inception_weights))  # fmt: skip
    report, _ = ev.evaluate(micro_base, micro_data, "eval", ctx)
    assert report.extractor == "inception" and torch.isfinite(torch.tensor(report.fid))


def test_missing_inception_weights_is_a_clear_error(micro_data, ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError, match="eval.fid.weights_path"):
        QualityEvaluator(feature="inception").extractor(micro_data, ctx)
    with pytest.raises(ConfigError, match="does not exist"):
        QualityEvaluator(feature="inception", weights_path=str(tmp_path / "nope.pth")).extractor(micro_data, ctx)
    with pytest.raises(ConfigError, match="eval.fid.feature"):
        QualityEvaluator(feature="clip")


def test_a_rebuilt_feature_extractor_does_not_depend_on_what_ran_before(ctx, monkeypatch):
    """Two empty caches rebuild the same extractor (and so report the same FID) whatever the process drew
    before: its initialisation once came from the global RNG as it happened to be."""
    monkeypatch.setattr(features, "TRAIN_STEPS", 3)
    labelled = ShapesDataModule(resolution=16).feature_training_data()
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(features._train_feature_net(labelled, 16, ctx).state_dict())
    assert nets[0].keys() == nets[1].keys()
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
