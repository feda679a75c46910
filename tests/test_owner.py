"""The owner's workflow on the latent micro model: protect -> publish -> fine-tuned elsewhere -> verify from disk.

Every verification from disk is compared with the in-run verification of the same model with the
same seed: the numbers must be equal, whatever form the suspect was saved in.
"""

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from adaptguard.core.artifacts import ArtifactCache, shipped_dir
from adaptguard.core.owner_key import OwnerKey
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.single_file import save_single_file
from adaptguard.reporting.results import RunResult
from tests.helpers import cli, model_source, run_config, same_numbers
from tests.helpers import verify_json as verify

pytestmark = pytest.mark.slow

MICRO = ["model=micro", "progress=false"]
# 300 steps at a raised lr and trigger share, a 4x4 grid (8-px cells: 2x2 latent pixels): detected at p < 1e-9
BACKDOOR = ["defense=backdoor", "defense.steps=300", "defense.batch_size=16", "defense.lr=2e-3",
            "defense.trigger_fraction=0.6", "defense.num_samples=32", "defense.key_seed=7", "defense.grid=4", "defense.fpr=1e-2"]  # fmt: skip
RUN = [*MICRO, *BACKDOOR, "logger=none", "eval.fid=null"]
ATTACK = ["attack.steps=5", "attack.batch_size=8", "attack.save=merged"]


@dataclass
class Owner:
    tmp: Path
    release: Path
    protect_out: str
    full: RunResult
    lora: RunResult

    @property
    def key(self) -> Path:
        return self.release / "owner.key"

    def saved(self, run: RunResult) -> Path:
        return Path(run.attacks["attacker"].cost["saved_to"])


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """Protect once (the CLI), then full and LoRA fine-tunes of the same protection saved to disk (experiments)."""
    tmp = tmp_path_factory.mktemp("owner")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(tmp / "cache"))
        protect = cli(["protect", *MICRO, *BACKDOOR, "single_file=true", f"out={tmp / 'release'}"])
        assert protect.code == 0, protect.stderr
        full = run_config([*RUN, "attack=full", *ATTACK], tmp / "full")
        lora = run_config([*RUN, "attack=lora", *ATTACK], tmp / "lora")
        yield Owner(tmp, tmp / "release", protect.stdout, full, lora)


def test_protect_writes_a_diffusers_folder_and_an_owner_only_key(owner):
    model = owner.release / "model"
    assert stat.S_IMODE(os.stat(owner.key).st_mode) == 0o600
    assert not any(p.suffix in (".key", ".pt") for p in model.rglob("*"))  # the published model carries no secret
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)  # diffusers opens it as-is
    assert pipe.vae is not None and pipe.unet.config.in_channels == 4
    key = OwnerKey.load(owner.key)
    trigger = key.secret["trigger"]
    assert key.defense == "backdoor" and key.decision["model_fpr"] == 1e-3 and len(key.protected_sha256) == 64
    assert trigger not in repr(key) and trigger not in str(key)
    report = (owner.release / "protect.json").read_text()
    hydra_files = "".join(p.read_text() for p in (owner.release / ".hydra").glob("*.yaml"))
    for text in (owner.protect_out, report, hydra_files):
        assert trigger not in text
    assert json.loads(report)["protected"]["detected"] is True


def test_verify_detects_the_protected_folder_with_the_numbers_protect_measured(owner):
    verdict = verify(f"key={owner.key}", f"suspect={owner.release / 'model'}")
    assert verdict["detected"] and verdict["identical_to_protected"]
    protected = json.loads((owner.release / "protect.json").read_text())["protected"]
    same_numbers(verdict, protected)
    one_file = verify(f"key={owner.key}", f"suspect={owner.release / 'model.safetensors'}")  # protect single_file=true
    same_numbers(one_file, protected)
    assert one_file["identical_to_protected"]
    text = cli(["verify", f"key={owner.key}", f"suspect={owner.release / 'model'}"])
    assert (
        text.code == 0
        and text.stdout.startswith("DETECTED: ")
        and "carries this key's backdoor watermark" in text.stdout
    )
    assert "target false-positive rate 0.001" in text.stdout


@pytest.mark.parametrize("attack", ["full", "lora"])
def test_attacked_models_verified_from_disk_match_the_in_run_verification(owner, attack):
    run = getattr(owner, attack)
    out = owner.tmp / f"{attack}.json"
    verdict = verify(f"key={owner.key}", f"suspect={owner.saved(run)}", f"verify.out={out}")
    same_numbers(verdict, run.attacks["attacker"].model.verification)
    assert not verdict["identical_to_protected"]
    assert json.loads(out.read_text()) == verdict


def test_a_bare_unet_folder_and_single_file_checkpoints_verify_like_the_folder(owner):
    folder = owner.saved(owner.full)
    expected = owner.full.attacks["attacker"].model.verification
    same_numbers(verify(f"key={owner.key}", f"suspect={folder / 'unet'}"), expected)  # base: the protected folder
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    unet_file = owner.tmp / "finetuned_unet.safetensors"  # a UNet state dict in diffusers' key names
    save_file(pipe.unet.state_dict(), unet_file)
    same_numbers(
        verify(f"key={owner.key}", f"suspect={unet_file}", f"suspect.base={owner.release / 'model'}"), expected
    )
    # the original Stable Diffusion layout, as model hubs distribute it: read by diffusers' from_single_file
    original = save_single_file(DiffusionModel.load(folder), owner.tmp / "finetuned_sd.safetensors")
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in load_file(original))
    same_numbers(verify(f"key={owner.key}", f"suspect={original}"), expected)


def test_attack_external_puts_a_saved_model_through_the_experiment(owner):
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(owner.tmp / "cache"))
        result = run_config([*RUN, "attack=external", f"attack.path={owner.saved(owner.full)}"], owner.tmp / "ext")
    external = result.attacks["attacker"].model.verification
    same_numbers(vars(external), owner.full.attacks["attacker"].model.verification)
    assert result.protected.verification.rate == owner.full.protected.verification.rate  # the same protection


def _diffusers_script_lora(protected: Path, out: Path, steps: int = 3) -> Path:
    """What diffusers' train_text_to_image_lora.py does: peft adapters on the UNet, a few denoising steps,
    then ``StableDiffusionPipeline.save_lora_weights``."""
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(protected, safety_checker=None)
    unet = pipe.unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))  # fmt: skip
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    ids = pipe.tokenizer(["a red circle"] * 4, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids  # fmt: skip
    for _ in range(steps):
        images = torch.rand(4, 3, 32, 32) * 2 - 1
        latents = pipe.vae.encode(images).latent_dist.sample() * pipe.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (4,))
        noisy = pipe.scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=pipe.text_encoder(ids)[0]).sample
        torch.nn.functional.mse_loss(pred, noise).backward()
        optimizer.step()
        optimizer.zero_grad()
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(save_directory=out, unet_lora_layers=layers, safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


def test_a_lora_file_saved_by_diffusers_is_verified_on_its_base(owner):
    protected = owner.release / "model"
    lora = _diffusers_script_lora(protected, owner.tmp / "script_lora")
    verdict = verify(f"key={owner.key}", f"suspect.lora={lora}", f"suspect.base={protected}")
    assert verdict["detected"] and not verdict["identical_to_protected"] and verdict["trials"] == 32
    # diffusers' own loading and fusing of the same file, saved as a folder, verifies identically
    pipe = StableDiffusionPipeline.from_pretrained(protected, safety_checker=None)
    pipe.load_lora_weights(lora.parent)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    merged = owner.tmp / "script_lora_merged"
    pipe.save_pretrained(merged)
    (merged / "adaptguard.json").write_text((protected / "adaptguard.json").read_text())  # the sampler settings
    same_numbers(verify(f"key={owner.key}", f"suspect={merged}"), verdict)
    # without suspect.base the LoRA applies to the folder protect wrote (recorded in the key)
    same_numbers(verify(f"key={owner.key}", f"suspect.lora={lora}"), verdict)


def test_never_watermarked_models_are_not_detected_and_calibrate_measures_the_fpr(owner):
    """models=auto: calibrate makes the never-watermarked models itself (the base, its full fine-tune, an
    independently initialised base with a short pretraining of its own), then scores the owner's key and
    8 random keys on each."""
    out = owner.tmp / "calibration.json"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(owner.tmp / "cache"))
        result = cli(["calibrate", f"key={owner.key}", "models=auto", "model=micro", "attacks=[full]",
                      "overrides=[attack.steps=5,attack.batch_size=8]", "independent_pretrain=[steps=15,vae_steps=15]",
                      "null_keys=8", f"out={out}"])  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    assert [v["suspect"] for v in report["verdicts"]] == ["base", "base+full", "independent"]
    assert report["models"] == 3 and report["false_positives"] == 0 and report["empirical_fpr"] == 0.0
    assert report["analytic_fpr"] == 1e-3 and 0.5 < report["empirical_fpr_ci"][1] < 0.8  # 3 models: a wide interval
    assert report["trials"] == 96 and report["empirical_trial_fpr"] <= 0.05
    assert all(not v["detected"] for v in report["verdicts"])
    assert "0/3 false positives" in result.stdout
    null = report["null_keys"]
    assert null["decisions"] == 24 and [m["decisions"] for m in null["models"]] == [8, 8, 8]
    assert null["false_positives"] <= 1 and null["fpr_ci"][1] < 0.25 and null["target"] == 1e-3
    assert len(set(null["models"][0]["bit_accuracies"])) > 1  # 8 different keys, not one key 8 times
    assert "random keys (8 per model)" in result.stdout
    cache = owner.tmp / "cache"
    assert len(list(cache.glob("never_watermarked/*/model/unet"))) == 1  # the fine-tune is cached like any model
    assert len(list(cache.glob("base/*/model/unet"))) >= 1  # the independent base too


def test_forge_reports_the_forged_claim_beside_random_keys(owner):
    """The forger majority-votes the target grid from 32 images of its own of the never-watermarked base; the
    claim is judged on the verifier's draws, beside 6 random keys (docs/owner.md: on micro the base resists, a
    fine-tuned base does not)."""
    out = owner.tmp / "forge.json"
    base = ArtifactCache().shipped("base", model_source("micro").describe()) / "model"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(owner.tmp / "cache"))
        result = cli(["forge", f"key={owner.key}", f"models=[{base}]", "budget=32", "null_keys=6", f"out={out}"])
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    (forged,) = report["forged"]
    assert report["defense"] == "backdoor" and report["models"] == 1 and forged["budget"] == {"images": 32}
    assert forged["search"].startswith("majority vote per bit") and forged["statistic"] == "matching bits of 16"
    assert report["false_claims"] == int(forged["detected"]) and report["target_fpr"] == 1e-3
    assert report["random_keys"]["decisions"] == 6 and len(report["random_keys"]["models"][0]["bit_accuracies"]) == 6
    assert f"false claims: {report['false_claims']}/1" in result.stdout and "random keys: " in result.stdout


def test_bad_input_is_one_line_with_exit_status_2(owner, monkeypatch):
    monkeypatch.setenv("ADAPTGUARD_CACHE", str(owner.tmp / "cache"))

    def error(*args: str) -> str:
        result = cli(["verify", *args])
        assert result.code == 2 and result.stderr.count("\n") == 1, result.stderr
        return result.stderr

    assert "suspect: " in error(f"key={owner.key}", f"suspect={owner.tmp / 'missing'}")
    assert "does not exist" in error(f"key={owner.tmp / 'nokey'}", f"suspect={owner.release / 'model'}")
    (owner.tmp / "junk.key").write_text("not a key")
    assert "not an adaptguard owner key" in error(f"key={owner.tmp / 'junk.key'}", f"suspect={owner.release}")
    pixel = next(p.parent for p in shipped_dir().glob("base-*/model/unet") if not (p.parent / "vae").exists())
    assert "architecture" in error(f"key={owner.key}", f"suspect={pixel}")
    assert "suspect.lroa: not an option" in error(f"key={owner.key}", "suspect.lroa=x")
    lora = _diffusers_script_lora(owner.release / "model", owner.tmp / "untrained_lora", steps=0)
    assert "suspect" in error(f"key={owner.key}", f"suspect.lora={lora}", f"suspect.base={pixel}")  # another UNet
    cached = set((owner.tmp / "cache" / "protected").iterdir())
    freeze = cli(["protect", *MICRO, "defense=random_freeze", "use_cache=false", f"out={owner.tmp / 'freeze'}"])
    assert freeze.code == 0 and "nothing to verify" in freeze.stdout
    assert set((owner.tmp / "cache" / "protected").iterdir()) == cached  # the key file is the only copy
    assert "has no verification" in error(f"key={owner.tmp / 'freeze' / 'owner.key'}", f"suspect={owner.release}")


PROTECT_FAST = {
    "aiao": ["defense=aiao", "defense.steps=8", "defense.batch_size=4", "defense.probe_steps=3",
             "defense.num_subpaths=8"],
    "sleepermark": ["defense=sleepermark", "defense.steps=8", "defense.batch_size=4", "defense.codec.steps=20",
                    "defense.codec.batch_size=8", "defense.codec.bits=16", "defense.num_samples=4",
                    "defense.null_messages=7"],
}  # fmt: skip


@pytest.mark.parametrize("defense", list(PROTECT_FAST))
def test_every_watermark_defense_verifies_from_its_key_file(tmp_path, monkeypatch, defense):
    """AIAO (white-box, response bits grouped by block) and SleeperMark (black-box, a codec in the key): the key
    file alone reproduces the protect-time verification of the protected and the base folder."""
    monkeypatch.setenv("ADAPTGUARD_CACHE", str(tmp_path / "cache"))
    protect = cli(["protect", *MICRO, *PROTECT_FAST[defense], f"out={tmp_path / 'release'}"])
    assert protect.code == 0, protect.stderr
    report = json.loads((tmp_path / "release" / "protect.json").read_text())
    key = f"key={tmp_path / 'release' / 'owner.key'}"
    same_numbers(verify(key, f"suspect={tmp_path / 'release' / 'model'}"), report["protected"])
    base = ArtifactCache().shipped("base", model_source("micro").describe()) / "model"
    verdict = verify(key, f"suspect={base}")
    same_numbers(verdict, report["base"])
    decision = OwnerKey.load(tmp_path / "release" / "owner.key").decision
    paired = "paired " if defense == "aiao" else ""  # AIAO credits only what its trigger adds (issue 29)
    assert ("; paired:" in verdict["rule"]) == bool(paired)  # a verdict states the rule it applied
    assert decision["test"] == f"{paired}key randomization" and decision["model_fpr"] == 1e-3  # each one's own rule
    assert decision["random_keys"] == report["protected"]["details"]["random_keys"] == 10_000
    forged = cli(["forge", key, f"models=[{base}]", "budget=8", "null_keys=4", "--json"])
    assert forged.code == 0, forged.stderr
    claim = json.loads(forged.stdout)
    spent = {"aiao": {"keys_tried": 8}, "sleepermark": {"images": 8}}[defense]  # seed-only key vs free message bits
    assert claim["forged"][0]["budget"] == spent and claim["random_keys"]["decisions"] == 4


def test_attack_external_names_its_missing_path_before_any_work(tmp_path):
    result = cli(["run", "model=micro", "defense=none", "attack=external", "logger=none", f"hydra.run.dir={tmp_path}"])
    assert result.code == 2 and "attack.path: attack=external needs attack.path=" in result.stderr
    missing = cli(["run", "model=micro", "defense=none", "attack=external", f"attack.path={tmp_path / 'nope'}",
                   "logger=none", f"hydra.run.dir={tmp_path}"])  # fmt: skip
    assert missing.code == 2 and f"attack.path: {tmp_path / 'nope'} does not exist" in missing.stderr
