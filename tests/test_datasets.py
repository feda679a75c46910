"""The real-dataset loaders on miniature copies of each dataset's on-disk layout."""

import json

import numpy as np
import pytest
from PIL import Image

from adaptguard.core.errors import DataError
from adaptguard.data import (
    AfhqDataModule,
    CocoDataModule,
    Cub200DataModule,
    DreamBoothDataModule,
    LsunDataModule,
)
from adaptguard.reporting.results import RunResult
from tests.helpers import cli


def _jpg(path, seed, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def write_coco(root, year=2017, n=6):
    for subset in ("train", "val"):
        name = f"{subset}{year}"
        images, anns = [], []
        for i in range(n):
            file = f"COCO_{name}_{i:012d}.jpg" if year == 2014 else f"{i:012d}.jpg"
            _jpg(root / name / file, i)
            images.append({"id": i, "file_name": file})
            anns += [
                {"image_id": i, "id": 10 * i + k, "caption": f"{subset} picture {i} caption {k} "} for k in range(2)
            ]
        images.append({"id": 99, "file_name": "uncaptioned.jpg"})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{name}.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def write_afhq(root, n=3):
    for subset in ("train", "val"):
        for cls in ("cat", "dog", "wild"):
            for i in range(n):
                _jpg(root / subset / cls / f"flickr_{cls}_{i:06d}.jpg", hash((subset, cls, i)) % 1000)
    return root


def write_lsun_lmdb(root, category="church_outdoor", n=8):
    import io

    import lmdb

    db = root / f"{category}_train_lmdb"
    db.mkdir(parents=True)
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((24, 32, 3), 20 * i, dtype=np.uint8)).save(buf, format="webp")
            txn.put(f"{i:040x}".encode(), buf.getvalue())
    env.close()
    return root


def write_cub(root, n_classes=2, per_class=3):
    base = root / "CUB_200_2011"
    lines = {"images.txt": [], "classes.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [],
             "bounding_boxes.txt": []}  # fmt: skip
    image_id = 1
    for c in range(1, n_classes + 1):
        cls = f"{c:03d}.Black_footed_Albatross" if c == 1 else f"{c:03d}.Laysan_Albatross"
        lines["classes.txt"].append(f"{c} {cls}")
        for i in range(per_class):
            rel = f"{cls}/{cls.split('.')[1]}_{i:04d}_{image_id}.jpg"
            _jpg(base / "images" / rel, image_id)
            lines["images.txt"].append(f"{image_id} {rel}")
            lines["image_class_labels.txt"].append(f"{image_id} {c}")
            lines["train_test_split.txt"].append(f"{image_id} {int(i < per_class - 1)}")
            lines["bounding_boxes.txt"].append(f"{image_id} 4.0 2.0 20.0 16.0")
            if c == 1:  # captions only for the first class, as a partial text_c10 copy
                txt = root / "text_c10" / rel.replace(".jpg", ".txt")
                txt.parent.mkdir(parents=True, exist_ok=True)
                txt.write_text("this bird has a white belly\nthe bird is large\n")
            image_id += 1
    for name, rows in lines.items():
        (base / name).write_text("\n".join(rows) + "\n")
    return root


def write_dreambooth(root, n=4):
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / "prompts_and_classes.txt").write_text(
        "Classes\n\nsubject_name,class\nbackpack,backpack\ndog,dog\nbear_plushie,stuffed animal\n\nPrompts\n"
    )
    for i in range(n):
        _jpg(root / "dataset" / "dog" / f"{i:02d}.jpg", i)
    return root


def test_coco_2017_and_2014_layouts_with_first_or_all_captions(tmp_path):
    for year in (2017, 2014):
        root = write_coco(tmp_path / str(year), year=year)
        first = CocoDataModule(root=str(root), year=year, resolution=16, splits={"t": {"where": {"subset": "train"}}})
        ds = first.dataset("t")
        assert len(ds) == 6 and ds[0]["image"].shape == (3, 16, 16)
        assert all(ds.caption(i).endswith("caption 0") for i in range(len(ds)))  # stripped, one per image
        every = CocoDataModule(
            root=str(root), year=year, resolution=16, all_captions=True, splits={"v": {"where": {"subset": "val"}}}
        )
        assert len(every.dataset("v")) == 12  # 6 images x 2 captions; the uncaptioned image is left out


def test_afhq_classes_captions_splits_and_deterministic_subsampling(tmp_path):
    root = write_afhq(tmp_path)
    splits = {"owner": {"where": {"subset": "train"}, "size": 4}, "attacker": {"where": {"subset": "train"}, "offset": 4},
              "wild": {"where": {"subset": "val", "class": "wild"}}}  # fmt: skip
    data = AfhqDataModule(root=str(root), resolution=16, splits=splits, random_flip=True, center_crop=False)
    owner, attacker = data.dataset("owner"), data.dataset("attacker")
    owner_paths = {r.path for r in owner.records}
    assert len(owner) == 4 and len(attacker) == 5 and not owner_paths & {r.path for r in attacker.records}
    wild = data.dataset("wild")
    assert len(wild) == 3 and {wild[i]["domain"] for i in range(3)} == {"wild"}
    assert wild.caption(0) == "a photo of a wild face"
    again = AfhqDataModule(root=str(root), resolution=16, splits=splits)
    assert {r.path for r in again.dataset("owner").records} == owner_paths  # same seed, same subset
    other = AfhqDataModule(root=str(root), resolution=16, splits=splits, split_seed=1)
    assert {r.path for r in other.dataset("owner").records} != owner_paths
    capped = AfhqDataModule(root=str(root), resolution=16, max_images=5, splits={"all": {}})
    assert len(capped.dataset("all")) == 5


@pytest.mark.parametrize("fmt", ["lmdb", "folder"])
def test_lsun_reads_the_lmdb_and_exported_folders(fmt, tmp_path):
    if fmt == "lmdb":
        root = write_lsun_lmdb(tmp_path)
    else:
        root = tmp_path
        for i in range(5):
            _jpg(root / "church_outdoor" / "a" / f"{i}.webp", i)
    data = LsunDataModule(root=str(root), category="church_outdoor", resolution=16, num_workers=2, splits={"all": {}})
    ds = data.dataset("all")
    assert len(ds) == (8 if fmt == "lmdb" else 5)
    assert ds[0]["image"].shape == (3, 16, 16) and ds.caption(0) == "a photo of a church outdoor"
    batch = next(iter(data.dataloader("all", batch_size=4)))  # two worker processes read the lmdb
    assert batch["image"].shape == (4, 3, 16, 16)


def test_cub_captions_from_text_c10_else_template_and_box_crop(tmp_path):
    root = write_cub(tmp_path)
    data = Cub200DataModule(root=str(root), resolution=16, all_captions=True, crop_to_box=True,
                            splits={"train": {"where": {"subset": "train"}}, "test": {"where": {"subset": "test"}}})  # fmt: skip
    train = data.dataset("train")
    captions = {train.caption(i) for i in range(len(train))}
    assert "this bird has a white belly" in captions and "a photo of a laysan albatross, a type of bird" in captions
    assert len(train) == 2 * 2 + 2  # class 1: 2 images x 2 text_c10 lines; class 2: template only
    assert len(data.dataset("test")) == 2 + 1 and train.records[0].box == (4.0, 2.0, 20.0, 16.0)
    assert {train[i]["domain"] for i in range(len(train))} == {"black footed albatross", "laysan albatross"}


def test_dreambooth_subject_and_class_from_the_prompts_file(tmp_path):
    root = write_dreambooth(tmp_path)
    data = DreamBoothDataModule(root=str(root), subject="dog", resolution=16, splits={"instance": {}})
    assert data.instance_prompt == "a photo of sks dog" and data.class_prompt == "a photo of dog"
    assert len(data.dataset("instance")) == 4
    with pytest.raises(DataError, match="subject 'cat' is not listed"):
        DreamBoothDataModule(root=str(root), subject="cat", splits={"instance": {}}).dataset("instance")


def test_corrupt_and_truncated_images_are_skipped_counted_and_named(tmp_path, caplog):
    root = write_afhq(tmp_path)
    _truncate(root / "train" / "cat" / "flickr_cat_000000.jpg")
    (root / "train" / "dog" / "flickr_dog_000001.jpg").write_bytes(b"not an image")
    data = AfhqDataModule(root=str(root), resolution=16, splits={"all": {"where": {"subset": "train"}}})
    with caplog.at_level("WARNING"):
        ds = data.dataset("all")
    assert len(ds) == 7 and all(ds[i]["image"].shape == (3, 16, 16) for i in range(len(ds)))
    report = data.data_report()
    assert report["skipped_images"] == 2 and any("flickr_cat_000000" in p for p in report["skipped_examples"])
    assert "skipping unreadable image" in caplog.text


@pytest.mark.parametrize("module,needle", [(CocoDataModule, "annotations/captions_train2017.json"),
                                           (AfhqDataModule, "train/cat"), (LsunDataModule, "bedroom_train_lmdb"),
                                           (Cub200DataModule, "images.txt"), (DreamBoothDataModule, "prompts_and_classes.txt")])  # fmt: skip
def test_missing_root_or_files_name_the_expected_layout(module, needle, tmp_path):
    with pytest.raises(DataError, match="dataset.root: not set") as err:
        module(splits={"a": {}}).dataset("a")
    assert needle in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        module(root=str(tmp_path / "empty"), splits={"a": {}}).dataset("a")
    assert "dataset.root" in str(err.value) and needle in str(err.value)


WRITERS = {"coco": write_coco, "afhq": write_afhq, "lsun": lambda r: write_lsun_lmdb(r, "bedroom"),
           "cub200": write_cub, "dreambooth": write_dreambooth}  # fmt: skip
TINY_SPLITS = ["dataset.splits.owner.size=4", "dataset.splits.attacker.offset=0", "dataset.splits.attacker.size=4",
               "dataset.splits.eval.offset=0", "dataset.splits.eval.size=4", "dataset.splits.eval_attacker.offset=0",
               "dataset.splits.eval_attacker.size=4"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WRITERS))
def test_cli_runs_a_real_experiment_on_each_dataset(name, cli_env, tmp_path):
    root = WRITERS[name](tmp_path / name)
    _truncate(next(p for p in sorted(root.rglob("*.jpg")))) if name != "lsun" else None
    # the DreamBooth subject is learnt by attack=dreambooth, with the prompts the dataset names
    attack = ["attack=dreambooth", "attack.num_class_images=2"] if name == "dreambooth" else ["attack=full"]
    splits = [] if name == "dreambooth" else TINY_SPLITS
    args = ["model=pixel_micro", "defense=none", f"dataset={name}", f"dataset.root={root}", "dataset.num_workers=0",
            *splits, *attack,
            "attack.steps=2", "attack.batch_size=2", "eval.fid=null", "logger=none", "progress=false"]  # fmt: skip
    proc = cli(["run", *args, f"hydra.run.dir={tmp_path}/run"])
    assert proc.code == 0, proc.stderr[-3000:]
    result = RunResult.read(tmp_path / "run" / "results.json")
    (attack,) = result.attacks.values()
    assert result.run.dataset == name and attack.cost["trainable_params"] > 0
    assert result.data["skipped_images"] == (0 if name == "lsun" else 1)
    if name == "dreambooth":
        assert attack.cost["instance_images"] == 3  # 4 written, 1 truncated
        assert result.config["attack"]["instance_prompt"] == "a photo of sks dog"


@pytest.mark.parametrize(
    "extra,needles",
    [([], ["dataset.root: not set", "train/cat", "clovaai/stargan-v2"]),  # no dataset: the expected layout
     (["dataset.root=AFHQ"], ["eval.fid.weights_path", "weights-inception"])],  # real photos need InceptionV3
)  # fmt: skip
def test_cli_data_problems_are_one_message_before_any_work(extra, needles, cli_env, tmp_path, monkeypatch):
    root = write_afhq(tmp_path / "afhq")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no InceptionV3 weights in this hub cache
    args = [
        "model=pixel_micro",
        "dataset=afhq",
        "defense=backdoor",
        "logger=none",
        *(a.replace("AFHQ", str(root)) for a in extra),
    ]
    proc = cli(["run", *args, f"hydra.run.dir={tmp_path}/run"])
    assert proc.code == 2 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "protected").exists()  # failed before protecting


AFHQ_COUNTED_SPLITS = {"owner": {"where": {"subset": "train"}, "offset": 0, "size": 6000},
                       "attacker": {"where": {"subset": "train"}, "offset": 6000, "size": 6000},
                       "eval": {"where": {"subset": "val"}, "offset": 0, "size": 1500}}  # fmt: skip


def test_a_small_dataset_names_the_offset_at_fault_before_any_work(tmp_path):
    from adaptguard.core.errors import ConfigError

    data = AfhqDataModule(root=str(write_afhq(tmp_path)), resolution=16, splits=AFHQ_COUNTED_SPLITS)
    with pytest.raises(ConfigError, match=r"^dataset\.splits\.attacker\.offset: 6000 is past the 9 items"):
        data.check()
    nothing = {**AFHQ_COUNTED_SPLITS, "attacker": {"where": {"subset": "test"}}}
    with pytest.raises(ConfigError, match=r"dataset\.splits\.attacker\.where: the filter .* keeps no items"):
        AfhqDataModule(root=str(tmp_path), resolution=16, splits=nothing).check()


def test_split_shares_fit_any_dataset_size_and_results_count_each_split(tmp_path):
    halves = {"owner": {"where": {"subset": "train"}, "size": 0.5},
              "attacker": {"where": {"subset": "train"}, "offset": 0.5, "size": 0.5}}  # fmt: skip
    for n in (3, 10):
        data = AfhqDataModule(root=str(write_afhq(tmp_path / str(n), n=n)), resolution=16, splits=halves)
        data.check()
        owner, attacker = data.dataset("owner"), data.dataset("attacker")
        paths = [{r.path for r in ds.records} for ds in (owner, attacker)]
        assert not paths[0] & paths[1] and len(owner) + len(attacker) == 3 * n
        assert data.data_report()["split_sizes"] == {"attacker": len(attacker), "owner": len(owner)}
    with pytest.raises(Exception, match=r"dataset\.splits\.owner\.size: a float is a share .* <= 1, got 1\.5"):
        AfhqDataModule(root=str(tmp_path / "3"), resolution=16, splits={"owner": {"size": 1.5}})


def test_a_split_of_only_corrupt_images_blames_the_files_not_the_filter(tmp_path):
    root = write_afhq(tmp_path, n=1)
    for path in (root / "train").rglob("*.jpg"):
        path.write_bytes(b"not an image")
    data = AfhqDataModule(root=str(root), resolution=16, splits={"owner": {"where": {"subset": "train"}}})
    with pytest.raises(DataError, match=r"dataset\.root: all 3 images of split 'owner' are unreadable"):
        data.dataset("owner")


def test_images_far_below_the_resolution_are_named(tmp_path, caplog):
    root = write_afhq(tmp_path, n=1)
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(root / "train" / "cat" / "flickr_cat_000000.jpg")
    data = AfhqDataModule(root=str(root), resolution=16, splits={"owner": {"where": {"subset": "train"}}})
    with caplog.at_level("WARNING"):
        assert len(data.dataset("owner")) == 3
    assert "1 images of split owner are far below the model's resolution 16" in caplog.text and "(1x1)" in caplog.text
    assert data.data_report()["small_images"] == {"owner": 1}
