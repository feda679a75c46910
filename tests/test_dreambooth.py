"""DreamBooth: instance data, cached class images, prior-preservation loss, full and LoRA, constraints."""

import pytest
import torch
import torchvision
from peft.tuners.tuners_utils import BaseTunerLayer

from adaptguard.attacks import DreamBooth
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.errors import ConfigError
from adaptguard.data import DreamBoothDataModule
from adaptguard.data.base import SplitSpec
from adaptguard.data.subject import load_image_folder
from tests.helpers import params_equal
from tests.test_datasets import write_dreambooth


def _write_subject(folder, n=3, size=24):
    """A subject folder as users have them: a few photos of differing sizes (here: orange squares)."""
    folder.mkdir(parents=True)
    for i in range(n):
        img = torch.full((3, size + 4 * i, size), -0.6)
        img[0, 4:16, 4:16], img[1, 4:16, 4:16], img[2, 4:16, 4:16] = 0.9, 0.1, -0.8
        torchvision.utils.save_image(img * 0.5 + 0.5, folder / f"{i:02d}.jpg" if i % 2 else folder / f"{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _frozen_names(model):
    return frozenset(n for n, _ in model.named_parameters() if n.startswith("unet.down_blocks.0.") or ".to_k." in n)


def _attack(subject, **kw):
    kw = {"instance_dir": str(subject), "instance_prompt": "a photo of sks square", "class_prompt": "a photo of square",
          "num_class_images": 6, "steps": 3, "batch_size": 2, "lr": 1e-3, **kw}  # fmt: skip
    return DreamBooth(**kw)


def test_instance_folder_is_loaded_resized_and_cropped(tmp_path):
    images = load_image_folder(_write_subject(tmp_path / "dog"), 16, "attack.instance_dir")
    assert images.shape == (3, 3, 16, 16)  # the txt file is ignored, non-square images center-cropped
    assert images.min() >= -1 and images.max() <= 1
    assert images[:, 0].max() > 0.5  # the orange square survived the resize


@pytest.mark.parametrize("lora", [False, True])
def test_dreambooth_trains_with_prior_preservation_and_honours_the_constraint(
    lora, micro_model, micro_data, ctx, tmp_path
):
    subject = _write_subject(tmp_path / "subject")
    constraint = FineTuneConstraint(_frozen_names(micro_model))
    attack = _attack(subject, lora=lora, rank=2, alpha=2)
    attacked = attack.run(micro_model, micro_data, constraint, ctx)
    same = params_equal(micro_model, attacked)
    assert all(same[n] for n in constraint.frozen)
    changed = {n for n, s in same.items() if not s}
    assert changed and all(n.startswith("unet.") for n in changed)
    if lora:
        assert not any(isinstance(m, BaseTunerLayer) for m in attacked.modules())
        assert all(any(t in n for t in (".to_q.", ".to_v.", ".to_out.0.")) for n in changed)
    cost = attack.cost()
    assert cost["instance_images"] == 3
    class_dirs = list((ctx.cache.root / "class_images").glob("*/"))
    assert len(class_dirs) == 1 and len(list(class_dirs[0].glob("*.png"))) == 6


def test_class_images_are_generated_once_per_model_and_prompt(micro_model, micro_data, ctx, tmp_path):
    subject = _write_subject(tmp_path / "subject")
    attack = _attack(subject, steps=1)
    first = attack.class_images(micro_model, ctx)
    folder = next((ctx.cache.root / "class_images").glob("*/"))
    stamp = (folder / "00000.png").stat().st_mtime_ns
    again = attack.class_images(micro_model, ctx)
    assert torch.equal(first, again) and (folder / "00000.png").stat().st_mtime_ns == stamp
    other = _attack(subject, class_prompt="a photo of circle").class_images(micro_model, ctx)
    assert len(list((ctx.cache.root / "class_images").glob("*/"))) == 2 and not torch.equal(first, other)


def test_prior_loss_is_instance_plus_weighted_class_loss(micro_model, tmp_path):
    objective = _attack(tmp_path, prior_loss_weight=0.5).objective()
    batch = {"image": torch.rand(2, 3, 16, 16) * 2 - 1, "caption": ["a photo of sks square"] * 2,
             "class_image": torch.rand(2, 3, 16, 16) * 2 - 1, "class_caption": ["a photo of square"] * 2}  # fmt: skip
    torch.manual_seed(0)
    terms = objective(micro_model, batch)
    assert torch.allclose(terms["loss"], terms["instance"] + 0.5 * terms["prior"])
    assert _attack(tmp_path, with_prior_preservation=False).objective() is None  # plain denoising loss


@pytest.mark.parametrize(
    "kwargs,key",
    [({"rank": 0, "lora": True}, "attack.rank"), ({"num_class_images": 0}, "attack.num_class_images"),
     ({"instance_prompt": " "}, "attack.instance_prompt"), ({"save": "adapter"}, "attack.save")],
)  # fmt: skip
def test_bad_dreambooth_parameters_name_the_key(kwargs, key, tmp_path):
    with pytest.raises(ConfigError, match=key):
        _attack(tmp_path, **kwargs)


def test_unset_prompts_follow_the_dataset_subject_and_set_ones_win(micro_data, tmp_path):
    micro_data.splits["instance"] = SplitSpec.parse("instance", {"where": {"kind": "star"}, "size": 2})
    attack = DreamBooth()
    attack.check_data(micro_data)
    assert (attack.instance_prompt, attack.class_prompt) == ("a photo of sks star", "a photo of star")
    dogs = DreamBoothDataModule(root=str(write_dreambooth(tmp_path / "db")), subject="dog", splits={"instance": {}})
    assert DreamBooth().resolve_prompts(dogs) == ("a photo of sks dog", "a photo of dog")
    assert DreamBooth(instance_prompt="a photo of zwx dog").resolve_prompts(dogs) == ("a photo of zwx dog",
                                                                                        "a photo of dog")  # fmt: skip
    with pytest.raises(ConfigError, match="attack.instance_prompt, attack.class_prompt: set both"):
        DreamBooth(instance_dir=str(_write_subject(tmp_path / "mine"))).check_data(micro_data)


def test_empty_or_missing_instance_folder_is_a_clear_error(micro_data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="attack.instance_dir: .* holds no images"):
        _attack(tmp_path / "empty").check_data(micro_data)
    with pytest.raises(ConfigError, match="attack.instance_dir: .* is not a folder"):
        _attack(tmp_path / "nowhere").check_data(micro_data)
    with pytest.raises(ConfigError, match="dataset.splits.instance"):
        DreamBooth().check_data(micro_data)  # no folder and no instance split
