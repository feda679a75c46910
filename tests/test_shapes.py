import pytest
import torch

from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ShapesDataModule


def test_deterministic_by_seed_and_different_across_seeds():
    a = ShapesDataModule(splits={"s": {"size": 8}}, world={"seed": 3}).dataset("s")
    b = ShapesDataModule(splits={"s": {"size": 8}}, world={"seed": 3}).dataset("s")
    c = ShapesDataModule(splits={"s": {"size": 8}}, world={"seed": 4}).dataset("s")
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(8))
    assert [a.caption(i) for i in range(8)] == [b.caption(i) for i in range(8)]
    assert [a.caption(i) for i in range(8)] != [c.caption(i) for i in range(8)]


def test_items_follow_the_data_contract():
    ds = ShapesDataModule(resolution=24, splits={"s": {"size": 4}}, domain_attribute="colour").dataset("s")
    item = ds[0]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    a = ds.attributes(0)
    assert item["domain"] == a["colour"]
    for value in (a["kind"], a["colour"], a["background"], a["size"], a["position"]):
        assert value in item["caption"]


def test_image_shows_the_captioned_colours():
    dm = ShapesDataModule(
        resolution=32, splits={"s": {"size": 64, "where": {"colour": ["red"], "background": ["white"]}}}
    )
    ds = dm.dataset("s")
    for i in range(8):
        img = ds[i]["image"] * 0.5 + 0.5
        corner = img[:, 0, 0]
        assert corner.min() > 0.9  # white background
        reddish = (img[0] > 0.7) & (img[1] < 0.35) & (img[2] < 0.35)
        assert reddish.sum() > 10  # a red shape is drawn


def test_split_filters_and_disjoint_windows():
    dm = ShapesDataModule(
        splits={
            "legal": {"where": {"kind": ["circle", "square"]}, "size": 50},
            "illegal": {"where": {"kind": "star"}, "size": 50},
            "owner": {"size": 100},
            "attacker": {"offset": 100, "size": 100},
        }
    )
    assert {dm.dataset("legal").attributes(i)["kind"] for i in range(50)} <= {"circle", "square"}
    assert {dm.dataset("illegal").attributes(i)["kind"] for i in range(50)} == {"star"}
    assert not set(dm.dataset("owner").indices) & set(dm.dataset("attacker").indices)
    batch = next(iter(dm.dataloader("illegal", batch_size=10)))
    assert batch["image"].shape == (10, 3, 32, 32) and set(batch["domain"]) == {"star"}


def test_bad_split_configs_name_the_key():
    with pytest.raises(ConfigError, match=r"dataset.splits.x.where.kind"):
        ShapesDataModule(splits={"x": {"where": {"kind": ["hexagon"]}}})
    with pytest.raises(ConfigError, match=r"dataset.splits.x.where: unknown attribute 'shape'"):
        ShapesDataModule(splits={"x": {"where": {"shape": ["star"]}}})
    with pytest.raises(ConfigError, match=r"dataset.splits.x: unknown keys"):
        ShapesDataModule(splits={"x": {"sise": 3}})
    with pytest.raises(ConfigError, match=r"dataset.splits.owner: this experiment needs"):
        ShapesDataModule(splits={}).dataset("owner")
