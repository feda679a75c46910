"""The one validation path: types, ranges and choices of every config dataclass, named by full key."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from adaptguard.attacks import FullFineTune, LoraFineTune
from adaptguard.core.config import Validated, from_mapping, secret_fields, setting
from adaptguard.core.errors import ConfigError
from adaptguard.defenses import AIAODefense, BackdoorDefense, SleeperMarkDefense
from adaptguard.defenses.message_codec import CodecConfig
from adaptguard.metrics.quality import QualityEvaluator
from adaptguard.models.bundle import SamplerConfig
from adaptguard.sources import TinyModelSource


@dataclass
class Example(Validated):
    config_key = "example"

    steps: int = setting(3, ge=1)
    lr: float = setting(1e-3, gt=0)
    share: float = setting(0.5, ge=0, lt=1)
    mode: Literal["a", "b"] = "a"
    key_seed: int | None = setting(None, secret=True)
    names: list[str] = setting(default_factory=lambda: ["x"], nonempty=True)
    pair: tuple[float, float] = (0.0, 1.0)
    extra: dict = field(default_factory=dict)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"steps": "abc"}, "example.steps: expected an integer, got 'abc'"),
        ({"steps": 2.5}, "example.steps: expected an integer, got 2.5"),
        ({"steps": True}, "example.steps: expected an integer, got True"),
        ({"steps": None}, "example.steps: expected an integer, got None"),
        ({"steps": 0}, "example.steps: must be >= 1, got 0"),
        ({"lr": "fast"}, "example.lr: expected a number, got 'fast'"),
        ({"lr": 0}, "example.lr: must be > 0, got 0.0"),
        ({"share": 1}, "example.share: must be in [0, 1), got 1.0"),
        ({"mode": "c"}, "example.mode: 'c' is not one of ['a', 'b']"),
        ({"key_seed": "x"}, "example.key_seed: expected an integer, got 'x' or null"),
        ({"names": []}, "example.names: must not be empty"),
        ({"names": "x"}, "example.names: expected a list, got 'x'"),
        ({"names": ["x", 3]}, "example.names[1]: expected a string, got 3"),
        ({"pair": [1.0]}, "example.pair: expected a list of 2 values, got [1.0]"),
        ({"extra": [1]}, "example.extra: expected a mapping (key: value), got [1]"),
    ],
)
def test_bad_values_are_one_line_naming_the_full_key(kwargs, message):
    with pytest.raises(ConfigError) as err:
        Example(**kwargs)
    assert str(err.value) == message


def test_values_are_normalised_and_secrets_kept_out_of_repr():
    e = Example(lr=1, share=0, pair=[2, 3], key_seed=99)
    assert e.lr == 1.0 and isinstance(e.lr, float) and e.pair == (2.0, 3.0)
    assert "99" not in repr(e) and secret_fields(Example) == {"key_seed"}


def test_nested_configs_name_their_own_keys_and_unknown_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"^defense.codec.steps: must be >= 1, got 0$"):
        SleeperMarkDefense(codec={"steps": 0})
    with pytest.raises(ConfigError, match=r"^model.sampler.stepz: unknown key; valid keys: name, steps, "):
        from_mapping(SamplerConfig, {"stepz": 3})
    with pytest.raises(ConfigError, match=r"^model.pretrain.lr: must be > 0"):
        TinyModelSource(pretrain={"lr": 0})
    with pytest.raises(ConfigError, match=r"^eval.fid.feature: 'clip' is not one of"):
        QualityEvaluator(feature="clip")
    assert isinstance(SleeperMarkDefense(codec={"bits": 8}).codec, CodecConfig)


@pytest.mark.parametrize(
    "make,key",
    [
        (lambda: AIAODefense(probe_lr=0), "defense.probe_lr"),  # checked when built, not when protecting
        (lambda: AIAODefense(busy_fraction=1.0), "defense.busy_fraction"),
        (lambda: BackdoorDefense(grid=1), "defense.grid"),
        (lambda: BackdoorDefense(trigger=""), "defense.trigger"),
        (lambda: FullFineTune(gradient_accumulation_steps=0), "attack.gradient_accumulation_steps"),
        (lambda: LoraFineTune(dropout=1.0), "attack.dropout"),
        (lambda: FullFineTune(max_grad_norm=0), "attack.max_grad_norm"),
    ],
)
def test_defense_and_attack_fields_are_checked_when_built(make, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        make()
