"""The reference pages in docs/ document every config key of their classes, and only keys that exist; their key
tables are what ``make docs`` generates from the classes' field docs, so a stale table or an undocumented field fails.
"""

import dataclasses
import inspect
import re
from dataclasses import dataclass

import pytest

from adaptguard.attacks import (
    Attack,
    Distill,
    DreamBooth,
    ExternalModel,
    FullFineTune,
    Int8Quantize,
    LeakedTrigger,
    LoraFineTune,
    MagnitudePrune,
    TargetedFineTune,
    VaeSwap,
    WeightMerge,
    WeightNoise,
)
from adaptguard.cli import reference
from adaptguard.cli.key_table import class_keys, names_class
from adaptguard.core.config import key_docs, setting
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
    AquaLoRADefense,
    BackdoorDefense,
    FreezeAsGuardDefense,
    IMMADefense,
    RandomFreezeDefense,
    SleeperMarkDefense,
    StableSignatureDefense,
    StackDefense,
)
from adaptguard.defenses.hidden_extractor import ExtractorConfig
from adaptguard.defenses.message_codec import CodecConfig
from adaptguard.metrics.quality import QualityEvaluator
from adaptguard.models.bundle import SamplerConfig
from adaptguard.models.tiny import TinySchedulerSpec, TinyTextSpec, TinyUNetSpec, TinyVAESpec
from adaptguard.models.tiny_dit import FlowSchedulerSpec, TinyT5Spec, TinyTransformerSpec
from adaptguard.pipeline import EvalConfig
from adaptguard.sources import PretrainedSource, TinyDiTSource, TinyModelSource
from adaptguard.training.pretraining import PretrainConfig
from tests.helpers import REPO

DATASETS = [ShapesDataModule, CocoDataModule, AfhqDataModule, LsunDataModule, Cub200DataModule, DreamBoothDataModule]
PAGES = {
    "docs/defenses/backdoor.md": [(BackdoorDefense, "defense")],
    "docs/defenses/aiao.md": [(AIAODefense, "defense")],
    "docs/defenses/sleepermark.md": [(SleeperMarkDefense, "defense"), (CodecConfig, "defense.codec")],
    "docs/defenses/freezeasguard.md": [(FreezeAsGuardDefense, "defense"), (RandomFreezeDefense, "defense")],
    "docs/defenses/stable_signature.md": [(StableSignatureDefense, "defense"), (ExtractorConfig, "defense.extractor")],
    "docs/defenses/aqualora.md": [(AquaLoRADefense, "defense")],
    "docs/defenses/imma.md": [(IMMADefense, "defense")],
    "docs/defenses/stack.md": [(StackDefense, "defense")],
    "docs/attacks.md": [
        (c, "attack")
        for c in (
            FullFineTune,
            LoraFineTune,
            DreamBooth,
            MagnitudePrune,
            Int8Quantize,
            WeightNoise,
            ExternalModel,
            WeightMerge,
            VaeSwap,
            TargetedFineTune,
            LeakedTrigger,
            Distill,
        )
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
        (TinyDiTSource, "model"),
        (TinyTransformerSpec, "model.transformer"),
        (TinyT5Spec, "model.t5"),
        (FlowSchedulerSpec, "model.scheduler"),
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


def undocumented(cls: type, prefix: str) -> list[str]:
    """Keys of ``cls`` without a description in code."""
    docs = key_docs(cls)
    return sorted(k for k in config_keys(cls, prefix) if not (docs.get(k.rpartition(".")[2]) or "").strip())


@pytest.mark.parametrize("page", list(PAGES))
def test_every_key_has_a_description(page):
    missing = [k for cls, prefix in PAGES[page] for k in undocumented(cls, prefix)]
    assert not missing, f"no doc for {missing}: declare each field with setting(..., doc=...)"


@dataclass
class _NewAttack(Attack):
    documented: int = setting(1, doc="a described key")
    forgotten: int = 2
    name: str = setting("new", doc="label in results and logs")

    def run(self, model, data, constraint, ctx):
        return model


def test_a_field_without_a_description_is_found():
    assert undocumented(_NewAttack, "attack") == ["attack.forgotten"]


@pytest.mark.parametrize("cls", DATASETS)
def test_data_modules_document_exactly_their_init_parameters(cls):
    """Data modules are configured through __init__: each class's KEY_DOCS names its own parameters, no others."""
    documented = {f"dataset.{name}" for name in key_docs(cls)}
    generated = {f"dataset.{key.name}" for key in class_keys(cls)}
    assert documented == config_keys(cls, "dataset") == generated


@pytest.mark.parametrize("page", list(PAGES))
def test_key_tables_are_generated_from_the_config_classes(page):
    text = (REPO / page).read_text()
    assert reference.MARKER.search(text), f"{page} has no <!-- keys: ... --> table"
    assert reference.render_page(text) == text, f"{page}: key tables are out of date; run `make docs`"


def test_keys_shared_by_classes_of_one_table_share_their_description():
    """A row shows the first class's doc: a key several classes of one table have must mean the same in each."""
    for page in PAGES:
        for match in reference.MARKER.finditer((REPO / page).read_text()):
            docs: dict[str, set[str]] = {}
            for prefix, cls in reference.parse_spec(match["spec"]):
                for key in class_keys(cls):
                    docs.setdefault(f"{prefix}.{key.name}", set()).add(key.doc)
            differ = {k: v for k, v in docs.items() if len(v) > 1}
            assert not differ, f"{page}: {differ}"


def test_check_names_a_stale_page_and_rewriting_fixes_it(tmp_path, capsys):
    page = tmp_path / "page.md"
    spec = "attack=adaptguard.attacks.FullFineTune attack=adaptguard.attacks.DreamBooth"
    page.write_text(f"Prose stays.\n\n<!-- keys: {spec} -->\n| `attack.steps` | 1 | old |\n<!-- /keys -->\n\nAfter.\n")
    assert reference.main(["--check", str(page)]) == 1
    assert str(page) in capsys.readouterr().out
    assert reference.main([str(page)]) == 0
    text = page.read_text()
    assert text.startswith("Prose stays.\n") and text.endswith("<!-- /keys -->\n\nAfter.\n")
    assert "| `attack.steps` | 100 (dreambooth 400) | optimizer steps |" in text  # the yaml's value beside the class's
    assert "| `attack.instance_dir` | null | *dreambooth*: " in text  # a key only some classes have names them
    assert reference.main(["--check", str(page)]) == 0


def test_an_option_whose_target_does_not_import_configures_no_class():
    """conf/ may hold options for code outside the package (``examples.*``): the tables skip them, not crash."""
    assert names_class("adaptguard.attacks.finetune.FullFineTune", FullFineTune)
    assert names_class("adaptguard.attacks.FullFineTune", FullFineTune)  # a re-export names it too
    assert not names_class("examples.nowhere.MyAttack", FullFineTune)
