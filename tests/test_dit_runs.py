"""Every defense and attack on the SD3-structured micro_dit, and the owner's workflow on it.

A diagonal of the product at reduced steps, in which every watermark is detected before its attack and
the never-watermarked base is not; then, as tests/test_owner.py does for the UNet, every form a
transformer fine-tune is published in (the StableDiffusion3Pipeline folder, its ``transformer/``
subfolder, a single file, a LoRA file made by a diffusers-only script) verifies with the numbers the
run measured in-process. AIAO is the owner's watermark there: white-box, so the verdict reads the
transformer's weights whatever form they arrive in. One module: the owner protects with the diagonal's
AIAO settings in the diagonal's cache.
"""

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from adaptguard.core.artifacts import ArtifactCache
from adaptguard.models.bundle import DiffusionModel
from adaptguard.reporting.results import RunResult
from tests.helpers import cli, model_source, run_config, same_numbers
from tests.helpers import verify_json as verify

pytestmark = pytest.mark.slow

# every defense and attack once on micro_dit at reduced steps: protect -> attack -> score (external: below)
DIT_FAST = ["model=micro_dit", "logger=none", "model.sampler.steps=3", "eval.fid.num_samples=8",
            "eval.fid.kid_subset_size=4", "eval.fid.kid_subsets=2", "eval.grid_samples=4"]  # fmt: skip
# watermarks at settings that detect them on micro_dit (one seed each: docs/defenses/<name>.md)
DIT_AIAO = ["defense=aiao", "defense.steps=200", "defense.batch_size=8", "defense.probe_steps=3",
            "defense.num_subpaths=16", "defense.key_seed=3"]  # fmt: skip
DIT_SLEEPERMARK = ["defense=sleepermark", "defense.codec.bits=16", "defense.codec.encoder_hidden=256",
                   "defense.codec.residual=full", "defense.codec.steps=300", "defense.codec.batch_size=8",
                   "defense.codec.perceptual=none", "defense.codec.image_weight=1.0", "defense.steps=200",
                   "defense.batch_size=16", "defense.lr=2e-3", "defense.small_t_fraction=0", "defense.sample_steps=10",
                   "defense.num_samples=16", "defense.null_messages=15", "defense.fpr=1e-2", "defense.model_fpr=1e-2",
                   "defense.key_seed=3"]  # fmt: skip
DIT_BACKDOOR = ["defense=backdoor", "defense.steps=200", "defense.batch_size=16", "defense.lr=1e-3",
                "defense.trigger_fraction=0.6", "defense.num_samples=16", "defense.null_keys=15", "defense.fpr=1e-2",
                "defense.sample_steps=10", "defense.key_seed=3"]  # fmt: skip
# AquaLoRA (first: the run's seed, so SleeperMark's codec below serves it from the cache) and Stable Signature, stacked
# at few steps: both run on the transformer's path and are verified on the final model (their detection: micro)
DIT_STACK = ("defense.members=[{defense:aqualora,codec:{bits:16,encoder_hidden:256,residual:full,steps:300,batch_size:8,"
             "perceptual:none,image_weight:1.0},steps:20,batch_size:8,num_samples:8,null_messages:7,fpr:1e-2,"
             "model_fpr:1e-2,sample_steps:5,key_seed:3},{defense:stable_signature,extractor:{bits:16,steps:30,"
             "batch_size:8},steps:10,batch_size:4,num_samples:8,null_messages:7,fpr:1e-2,model_fpr:1e-2,"
             "sample_steps:5,key_seed:3}]")  # fmt: skip
SHORT = ["attack.steps=3", "attack.batch_size=4"]
DIT_DIAGONAL = {
    "aiao-lora": [*DIT_AIAO, "attack=lora", *SHORT, "attack.save=adapter"],
    "aiao-full": [*DIT_AIAO, "attack=full", *SHORT, "attack.save=merged"],  # the owner's tests' fine-tune
    "backdoor-dreambooth": [*DIT_BACKDOOR, "attack=dreambooth", *SHORT, "attack.num_class_images=2"],
    "freezeasguard-quantize": ["experiment=freeze", "defense=freezeasguard", "attack=quantize", "defense.steps=3",
                               "defense.batch_size=4", "defense.user_steps=2", "defense.user_batch_size=4"],
    "random_freeze-prune": ["defense=random_freeze", "attack=prune"],
    "none-weight_noise": ["defense=none", "attack=weight_noise"],
    "backdoor-merge": [*DIT_BACKDOOR, "attack=merge", *SHORT],  # the protection above, cached
    "sleepermark-vae_swap": [*DIT_SLEEPERMARK, "attack=vae_swap", *SHORT],
    # the newer watermarks as one stack (SleeperMark's codec above, from the cache): both run and verified, then pruned
    "stack-prune": ["defense=stack", DIT_STACK, "attack=prune"],
}  # fmt: skip
WATERMARKS = ("aiao-lora", "aiao-full", "backdoor-dreambooth", "backdoor-merge", "sleepermark-vae_swap")


@dataclass
class DitOwner:
    tmp: Path
    release: Path
    runs: dict[str, RunResult]

    @property
    def full(self) -> RunResult:
        return self.runs["aiao-full"]

    @property
    def key(self) -> str:
        return f"key={self.release / 'owner.key'}"

    @property
    def attacked(self) -> Path:
        return Path(self.full.attacks["attacker"].cost["saved_to"])


@pytest.fixture(scope="module")
def dit_owner(tmp_path_factory):
    """The diagonal, then the owner's protect with the diagonal's AIAO settings, in the same cache."""
    tmp = tmp_path_factory.mktemp("dit")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(tmp / "cache"))
        runs = {name: run_config([*DIT_FAST, *args], tmp / name) for name, args in DIT_DIAGONAL.items()}
        protect = cli(["protect", "model=micro_dit", "progress=false", *DIT_AIAO, f"out={tmp / 'release'}"])
        assert protect.code == 0, protect.stderr
        yield DitOwner(tmp, tmp / "release", runs)


def test_every_defense_and_attack_runs_on_micro_dit_and_every_watermark_is_detected(dit_owner):
    runs = dit_owner.runs
    assert {r.run.defense for r in runs.values()} == {"aiao", "sleepermark", "backdoor", "freezeasguard",
                                                     "random_freeze", "none", "stack"}  # fmt: skip
    assert {r.run.attack for r in runs.values()} | {"external"} == {"lora", "full", "dreambooth", "prune", "quantize",
                                                                   "weight_noise", "merge", "vae_swap", "external"}  # fmt: skip
    for name, result in runs.items():
        assert result.status == "ok" and result.run.model == "micro_dit", name
        fids = [q.fid for a in result.attacks.values() for q in a.model.quality.values()]
        assert fids and all(f > 0 for f in fids), name
        before = [q.fid for q in result.protected.quality.values()]
        assert before and fids != before, name  # the attack changed the transformer's weights and its images
    for name in WATERMARKS:  # detected before the attack; the never-watermarked base is not
        result = runs[name]
        assert result.protected.verification.detected and not result.base.verification.detected, name
        (after,) = (a.model.verification for a in result.attacks.values())
        assert after.trials == result.protected.verification.trials == result.base.verification.trials, name
    stacked, base = runs["stack-prune"].protected.verification, runs["stack-prune"].base.verification
    assert base.figures["aqualora.detected"] == base.figures["stable_signature.detected"] == 0
    for member in ("aqualora", "stable_signature"):  # each verified on the final model, 8 images each
        assert 0.3 < stacked.figures[f"{member}.bit_accuracy"] <= 1 and stacked.trials == base.trials == 8, member
    for name in ("freezeasguard-quantize", "random_freeze-prune"):  # masks over the transformer's tensors
        assert 0 < runs[name].summary["frozen_tensors_ratio"] < 1, name
    (lora,) = runs["aiao-lora"].attacks.values()  # its SD3 LoRA file: loaded by diffusers alone, below
    assert (
        lora.cost["lora_modules"] > 0 and (Path(lora.cost["saved_to"]) / "pytorch_lora_weights.safetensors").is_file()
    )


def test_the_protected_dit_folder_is_detected_and_the_never_watermarked_base_is_not(dit_owner):
    protected = json.loads((dit_owner.release / "protect.json").read_text())
    verdict = verify(dit_owner.key, f"suspect={dit_owner.release / 'model'}")
    assert verdict["detected"] and verdict["identical_to_protected"]
    same_numbers(verdict, protected["protected"])
    base = ArtifactCache().shipped("base", model_source("micro_dit").describe()) / "model"
    never = verify(dit_owner.key, f"suspect={base}")
    assert not never["detected"]
    same_numbers(never, protected["base"])


def test_a_fine_tuned_dit_verifies_alike_as_a_folder_its_transformer_and_a_single_file(dit_owner):
    expected = dit_owner.full.attacks["attacker"].model.verification
    assert expected.detected  # AIAO survives three full steps
    folder = dit_owner.attacked
    assert (folder / "transformer").is_dir() and not (folder / "unet").exists()
    same_numbers(verify(dit_owner.key, f"suspect={folder}"), expected)
    # a bare transformer/ folder: its base is the folder protect wrote (recorded in the key)
    same_numbers(verify(dit_owner.key, f"suspect={folder / 'transformer'}"), expected)
    one_file = dit_owner.tmp / "finetuned_transformer.safetensors"  # diffusers' key names
    save_file(DiffusionModel.load(folder).unet.state_dict(), one_file)
    same_numbers(verify(dit_owner.key, f"suspect={one_file}", f"suspect.base={dit_owner.release / 'model'}"), expected)
    original = dit_owner.tmp / "sd3_original_layout.safetensors"  # keys as the original SD3 checkpoints name them
    save_file({f"model.diffusion_model.{k}": v for k, v in load_file(one_file).items()}, original)
    refused = cli(["verify", dit_owner.key, f"suspect={original}"])
    assert refused.code == 2 and refused.stderr.count("\n") == 1 and "original SD3 single-file layout" in refused.stderr
    # attack=external puts the same folder through an experiment: the same verdict
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(dit_owner.tmp / "cache"))
        ext = run_config([*DIT_FAST, *DIT_AIAO, "attack=external", f"attack.path={folder}"], dit_owner.tmp / "ext")
    same_numbers(vars(ext.attacks["attacker"].model.verification), expected)


def test_a_unet_suspect_against_a_dit_key_is_one_line_naming_the_mismatch(dit_owner):
    unet_base = ArtifactCache().shipped("base", model_source("micro").describe()) / "model"
    result = cli(["verify", dit_owner.key, f"suspect={unet_base}"])
    assert result.code == 2 and result.stderr.count("\n") == 1
    assert "denoiser" in result.stderr and "SD3Transformer2DModel" in result.stderr


# What diffusers' examples/dreambooth/train_dreambooth_lora_sd3.py does, in a process that never imports
# adaptguard: peft LoRA on the transformer's joint-attention projections, prompts through the pipeline's
# encode_prompt, logit-normal timesteps and SD3's loss weighting from diffusers.training_utils, the
# flow-matching target, then StableDiffusion3Pipeline.save_lora_weights. It also fuses the LoRA with
# diffusers' own API and saves that pipeline, to compare the two readings; and it samples with the LoRA file
# adaptguard's LoRA attack saved (attack.save=adapter), loaded by StableDiffusion3Pipeline.load_lora_weights.
SD3_SCRIPT = textwrap.dedent("""
    import sys, torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    base, out, merged = sys.argv[1:4]
    torch.manual_seed(0)
    pipe = StableDiffusion3Pipeline.from_pretrained(base)
    transformer = pipe.transformer.requires_grad_(False)
    targets = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
               "attn.to_out.0", "attn.to_q", "attn.to_v"]
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=targets))
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    train_scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        prompt, pooled = pipe.encode_prompt(["a photo of sks shape"] * 4, None, None, do_classifier_free_guidance=False,
                                            max_sequence_length=32)[0::2]
    size = transformer.config.sample_size * pipe.vae_scale_factor
    for _ in range(3):
        with torch.no_grad():
            images = torch.rand(4, 3, size, size) * 2 - 1
            latents = pipe.vae.encode(images).latent_dist.sample()
            latents = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        u = compute_density_for_timestep_sampling("logit_normal", 4, logit_mean=0.0, logit_std=1.0)
        index = (u * train_scheduler.config.num_train_timesteps).long()
        timesteps = train_scheduler.timesteps[index]
        sigmas = train_scheduler.sigmas[index].view(-1, 1, 1, 1)
        noise = torch.randn_like(latents)
        noisy = (1 - sigmas) * latents + sigmas * noise
        pred = transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=prompt,
                           pooled_projections=pooled).sample
        weight = compute_loss_weighting_for_sd3("logit_normal", sigmas=sigmas)
        loss = (weight * (pred - (noise - latents)) ** 2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    StableDiffusion3Pipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(transformer))
    fused = StableDiffusion3Pipeline.from_pretrained(base)
    fused.load_lora_weights(out)
    fused.fuse_lora()
    fused.unload_lora_weights()
    fused.save_pretrained(merged)
    # and the LoRA file adaptguard's own LoRA attack saved (attack.save=adapter) loads and samples
    ours = StableDiffusion3Pipeline.from_pretrained(base)
    ours.load_lora_weights(sys.argv[4])
    images = ours(["a red circle"] * 2, num_inference_steps=3, max_sequence_length=32, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert not any(m.startswith("adaptguard") for m in sys.modules)
    print("shape", list(images.shape), "std", float(images.std()))
    print("loss", float(loss))
""")


def test_a_lora_from_diffusers_sd3_script_is_verified_on_its_base(dit_owner):
    protected = dit_owner.release / "model"
    out, merged = dit_owner.tmp / "sd3_lora", dit_owner.tmp / "sd3_lora_merged"
    (ours,) = dit_owner.runs["aiao-lora"].attacks.values()
    proc = subprocess.run([sys.executable, "-c", SD3_SCRIPT, str(protected), str(out), str(merged), ours.cost["saved_to"]],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lora = out / "pytorch_lora_weights.safetensors"
    assert lora.is_file() and float(proc.stdout.split("loss")[1]) > 0
    assert "shape [2, 3, 32, 32]" in proc.stdout and float(proc.stdout.split("std")[1].split()[0]) > 0.01
    verdict = verify(dit_owner.key, f"suspect.lora={lora}", f"suspect.base={protected}")
    assert verdict["detected"] and not verdict["identical_to_protected"] and verdict["trials"] == 16
    # diffusers' own fuse of the same file, saved as a folder, verifies identically
    (merged / "adaptguard.json").write_text((protected / "adaptguard.json").read_text())  # the sampler settings
    same_numbers(verify(dit_owner.key, f"suspect={merged}"), verdict)
    # without suspect.base the LoRA applies to the folder protect wrote (recorded in the key)
    same_numbers(verify(dit_owner.key, f"suspect.lora={lora}"), verdict)
