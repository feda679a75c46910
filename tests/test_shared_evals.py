"""Evaluations every job of a sweep repeats (base and protected models, real-image features) come from the
artifact cache, with the numbers an uncached run computes."""

import json
import stat

import torch

from adaptguard.defenses.backdoor import BackdoorDefense
from adaptguard.defenses.sleepermark import SleeperMarkKey
from adaptguard.pipeline.shared_evals import key_digest, model_identity
from tests.helpers import cli, make_ctx, micro_source

ARGS = ["model=micro", "defense=backdoor", "defense.steps=5", "defense.num_samples=4", "attack=full",
        "attack.steps=2", "attack.batch_size=4", "model.sampler.steps=3", "eval.fid.num_samples=8",
        "eval.fid.kid_subset_size=4", "eval.fid.kid_subsets=2", "eval.grid_samples=4", "eval.image_attacks=[jpeg]",
        "logger=none", "progress=false"]  # fmt: skip


def test_cached_evaluations_give_the_numbers_of_an_uncached_run(cli_env, tmp_path):
    runs = {}
    for name, extra in (("first", []), ("uncached", ["eval.cache=false"]), ("cached", [])):
        result = cli(["run", *ARGS, *extra, f"hydra.run.dir={tmp_path / name}"])
        assert result.code == 0, result.stderr
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
    first, uncached, cached = runs["first"], runs["uncached"], runs["cached"]
    assert first["cached"] == [] and uncached["cached"] == ["protect"]
    domains = sorted(first["base"]["quality"])
    assert domains == ["attacker", "clean"]
    shared = {"verify_base", "verify_protected", "verify_protected/jpeg"}
    shared |= {f"quality_{m}/{d}" for m in ("base", "protected") for d in domains}
    assert set(cached["cached"]) == {"protect", *shared}
    for part in ("base", "protected"):
        assert cached[part] == uncached[part] == first[part], part
    attacked = [r["attacks"]["attacker"] for r in (first, uncached, cached)]  # its real features: from the cache
    assert attacked[0]["model"] == attacked[1]["model"] == attacked[2]["model"]
    assert attacked[0]["model"]["quality"]["attacker"]["fid"] > 0
    assert cached["protected"]["image_attacks"]["jpeg"]["rate"] is not None
    for grid in ("samples_base.png", "samples_protected_attacker.png"):
        assert (tmp_path / "cached" / grid).read_bytes() == (tmp_path / "uncached" / grid).read_bytes()

    cache = tmp_path / "cache"
    assert len(list(cache.glob("real_features/*/features.pt"))) == 2  # clean and attacker splits
    verifications = list(cache.glob("evaluation/*/verification.json"))
    assert len(verifications) == 3  # base (null) and protected, as sampled and after the jpeg image attack
    for path in verifications:  # made with the owner's key: owner-only, the key only as a salted fingerprint
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        spec = json.loads((path.parent / "spec.json").read_text())
        assert spec["key"].startswith("hmac-sha256:") and spec["defense"]["key_seed"] in (None, "<redacted>")


def test_an_evaluation_entry_is_keyed_by_the_weights_and_the_key(tmp_path):
    model = micro_source().load(make_ctx(tmp_path))
    before = model_identity(model)
    assert model_identity(model) == before
    with torch.no_grad():
        next(model.unet.parameters()).view(-1)[0] += 1e-3
    assert model_identity(model)["weights"]["unet"] != before["weights"]["unet"]
    assert model_identity(model)["weights"]["text_encoder"] == before["weights"]["text_encoder"]
    d = BackdoorDefense()
    assert key_digest(d.make_key(1)) == key_digest(d.make_key(1)) != key_digest(d.make_key(2))
    assert key_digest(None) is None
    # nested state (a codec's tensors inside the key) counts by value, whatever the dtype
    state = {"w": torch.zeros(300), "s": torch.tensor(2.0, dtype=torch.bfloat16)}
    a = SleeperMarkKey("t", torch.ones(4), ["a"], state)
    b = SleeperMarkKey(
        "t", torch.ones(4), ["a"], {**state, "w": torch.zeros(300).index_fill(0, torch.tensor([150]), 1)}
    )
    assert key_digest(a) != key_digest(b)
