"""The reference pages in docs/ document every config key of their classes, and only keys that exist."""

import dataclasses
import inspect
import re

import pytest

from adaptguard.attacks import (
    DreamBooth,
    ExternalModel,
    FullFineTune,
    Int8Quantize,
    LoraFineTune,
    MagnitudePrune,
    WeightNoise,
)
from adaptguard.data import (
    AfhqDataModule,
    CaptionedImageDataModule,
    CocoDataModule,
    Cub200DataModule,
    DreamBoothDataModule,
    LsunDataModule,
    ShapesDataModule,
)
from adaptguard.data.distortions import IMAGE_TRANSFORMS
from adaptguard.defenses import (
    AIAODefense,
    BackdoorDefense,
    FreezeAsGuardDefense,
    RandomFreezeDefense,
    SleeperMarkDefense,
)
from adaptguard.defenses.message_codec import CodecConfig
from adaptguard.metrics.quality import QualityEvaluator
from adaptguard.models.bundle import SamplerConfig
from adaptguard.models.tiny import TinySchedulerSpec, TinyTextSpec, TinyUNetSpec, TinyVAESpec
from adaptguard.pipeline import EvalConfig
from adaptguard.sources import PretrainedSource, TinyModelSource
from adaptguard.training.pretraining import PretrainConfig
from tests.helpers import REPO

DATASETS = [ShapesDataModule, CocoDataModule, AfhqDataModule, LsunDataModule, Cub200DataModule, DreamBoothDataModule]
PAGES = {
    "docs/defenses/backdoor.md": [(BackdoorDefense, "defense")],
    "docs/defenses/aiao.md": [(AIAODefense, "defense")],
    "docs/defenses/sleepermark.md": [(SleeperMarkDefense, "defense"), (CodecConfig, "defense.codec")],
    "docs/defenses/freezeasguard.md": [(FreezeAsGuardDefense, "defense"), (RandomFreezeDefense, "defense")],
    "docs/attacks.md": [
        (c, "attack")
        for c in (FullFineTune, LoraFineTune, DreamBooth, MagnitudePrune, Int8Quantize, WeightNoise, ExternalModel)
    ]
    + [(c, f"eval.image_attacks.{c.name}") for c in IMAGE_TRANSFORMS.values()],  # fmt: skip
    "docs/models.md": [
        (TinyModelSource, "model"),
        (PretrainedSource, "model"),
        (SamplerConfig, "model.sampler"),
        (PretrainConfig, "model.pretrain"),
        (TinyUNetSpec, "model.unet"),
        (TinyVAESpec, "model.vae"),
        (TinyTextSpec, "model.text_encoder"),
        (TinySchedulerSpec, "model.scheduler"),
    ],  # fmt: skip
    "docs/evaluation.md": [(EvalConfig, "eval"), (QualityEvaluator, "eval.fid")],
    "docs/datasets.md": [(c, "dataset") for c in DATASETS],
}
KEY = re.compile(r"`([a-z_]+(?:\.[a-z_0-9]+)+)`")


def config_keys(cls: type, prefix: str) -> set[str]:
    """The config keys a class reads: its init fields (dataclasses) or its __init__ parameters (data modules)."""
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls) if f.init}
    else:
        names = {
            p.name
            for klass in cls.__mro__
            if issubclass(klass, CaptionedImageDataModule)
            for p in inspect.signature(klass.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
    return {f"{prefix}.{n}" for n in names}


def documented_keys(text: str) -> set[str]:
    """Keys in the first cell of the page's table rows: ``| `attack.steps`, `attack.lr` | ... |``."""
    keys = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            keys |= set(KEY.findall(line.split("|")[1]))
    return keys


@pytest.mark.parametrize("page", list(PAGES))
def test_reference_page_documents_every_key_and_no_other(page):
    expected = set().union(*(config_keys(cls, prefix) for cls, prefix in PAGES[page]))
    documented = documented_keys((REPO / page).read_text())
    assert not expected - documented, f"{page} has no row for {sorted(expected - documented)}"
    assert not documented - expected, f"{page} names keys that do not exist: {sorted(documented - expected)}"


def test_readme_links_point_at_existing_pages():
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs/)[^)#]+)", text)
    assert links and all((REPO / link).exists() for link in links), [lnk for lnk in links if not (REPO / lnk).exists()]
