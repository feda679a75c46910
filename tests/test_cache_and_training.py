"""Artifact cache semantics and resumable training."""

import json

import lightning as L
import pytest
import torch

from adaptguard.core.artifacts import ArtifactCache, spec_hash
from adaptguard.defenses.backdoor import BackdoorDefense, BackdoorKey
from adaptguard.training import DenoisingModule, fit


def test_spec_hash_is_order_independent_and_sensitive():
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})


def test_get_or_build_builds_once_and_keeps_only_resume_points_of_a_failed_build(tmp_path):
    cache = ArtifactCache(tmp_path, use_shipped=False)
    calls = []

    def failing(work):
        (work / "checkpoints").mkdir()
        (work / "checkpoints" / "last.ckpt").write_text("progress")
        (work / "half.txt").write_text("a stale half-written file")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.get_or_build("x", {"k": 1}, failing)

    def build(work):
        calls.append((work / "checkpoints" / "last.ckpt").read_text())  # resumes from what the failed run left
        assert not (work / "half.txt").exists()  # cleared, not merged
        (work / "out.txt").write_text("done")

    a = cache.get_or_build("x", {"k": 1}, build)
    b = cache.get_or_build("x", {"k": 1}, build)
    assert a == b and (a / "out.txt").read_text() == "done" and (a / "spec.json").exists()
    assert calls == ["progress"] and not (a / "checkpoints").exists()  # resume points go once it is complete


def test_private_artifacts_are_owner_only(tmp_path):
    folder = ArtifactCache(tmp_path, use_shipped=False).get_or_build("k", {"s": 1}, lambda w: None, private=True)
    assert folder.stat().st_mode & 0o077 == 0


def test_keys_and_everything_in_a_private_artifact_are_0600_and_its_spec_hides_secrets(tmp_path):
    defense = BackdoorDefense(key_seed=123456, trigger="zq#secret")
    spec = {"defense": defense.describe(), "seed": 0}

    def build(work):
        defense.make_key().save(work)
        (work / "model").mkdir()
        (work / "model" / "weights.bin").write_bytes(b"w")

    cache = ArtifactCache(tmp_path, use_shipped=False)
    folder = cache.get_or_build("protected", spec, build, private=True)
    assert folder == cache.path("protected", spec)  # the hash is still of the full spec
    for path in [folder, *folder.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, path
    shown = (folder / "spec.json").read_text()
    assert "123456" not in shown and "zq#secret" not in shown
    fingerprint = json.loads(shown)["defense"]["key_seed"]
    assert fingerprint.startswith("hmac-sha256:") and fingerprint == cache.fingerprint(123456)  # salted, stable
    assert cache.fingerprint(123457) != fingerprint and (tmp_path / ".salt").stat().st_mode & 0o077 == 0
    assert ArtifactCache(tmp_path / "other", use_shipped=False).fingerprint(123456) != fingerprint  # another salt
    assert BackdoorKey.load(folder).trigger == "zq#secret"


def test_fit_resumes_from_the_last_checkpoint(micro_model, micro_data, ctx, tmp_path):
    ckpt = tmp_path / "ckpt"
    module = DenoisingModule(micro_model, max_steps=6)
    first = fit(module, micro_data.dataloader("owner", 8), 3, ctx, checkpoint_dir=ckpt, checkpoint_every=3)
    assert first.global_step == 3 and (ckpt / "last.ckpt").exists()
    weights_at_3 = {n: p.clone() for n, p in micro_model.named_parameters()}
    # a new process would rebuild the module: resuming continues at step 3, not 0
    resumed = fit(
        DenoisingModule(micro_model, max_steps=6), micro_data.dataloader("owner", 8), 6, ctx, checkpoint_dir=ckpt
    )
    assert resumed.global_step == 6
    assert any(not torch.equal(p, weights_at_3[n]) for n, p in micro_model.named_parameters() if p.requires_grad)


def test_lightning_module_matches_a_plain_loop(micro_model, micro_data):
    """Same seed, same batches, same optimizer: our module trains exactly like a hand loop."""
    import copy

    plain = copy.deepcopy(micro_model)
    batches = [next(iter(micro_data.dataloader("owner", 4, shuffle=False)))] * 3
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(DenoisingModule(micro_model), torch.utils.data.DataLoader(batches, batch_size=None))
    L.seed_everything(0, verbose=False)
    opt = DenoisingModule(plain).configure_optimizers()["optimizer"]
    for batch in torch.utils.data.DataLoader(batches, batch_size=None):  # same RNG use as Lightning's
        loss = plain.training_loss(batch["image"], batch["caption"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (n, p), q in zip(micro_model.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n


def test_the_pretraining_curve_measures_the_averaged_weights_without_changing_them(tmp_path):
    """``model.pretrain.curve_every``: loss, FID and prompt fidelity every N steps in the model folder's curve.json;
    the weights equal a run without it, so it is not part of the cache key."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from adaptguard.core.context import RunContext
    from tests.helpers import model_source

    source = model_source("micro")
    short = {**source.pretrain, "steps": 20, "vae_steps": 10, "checkpoint_every": 10}
    plain = replace(source, pretrain=short)
    curved = replace(source, pretrain={**short, "curve_every": 10, "curve_samples": 8})
    assert plain.describe() == curved.describe()
    folders = []
    for i, s in enumerate((plain, curved)):
        s.load(RunContext(cache=ArtifactCache(tmp_path / str(i)), progress=False, device="cpu"))
        folders += list((tmp_path / str(i)).glob("base/*/model"))
    a, b = folders
    for part in ("unet", "text_encoder"):
        wa, wb = (load_file(next((f / part).glob("*.safetensors"))) for f in (a, b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), part
    curve = json.loads((b / "curve.json").read_text())
    assert [p["step"] for p in curve] == [10, 20] and not (a / "curve.json").exists()
    assert all({"loss", "fid", "fidelity/all", "fidelity/kind+colour"} <= set(p) for p in curve), curve
