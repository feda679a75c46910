"""The Stable Diffusion code path on the latent micro model: every defense and every attack at least
once (a diagonal of the product, at reduced steps), AIAO under gradient checkpointing, and
diffusers as the client of every folder the framework writes."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from adaptguard.analysis.blocks import unet_blocks
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from adaptguard.defenses.aiao import AIAODefense, _EmbeddingObjective
from adaptguard.sources import PretrainedSource
from tests.helpers import (
    STABLE_SIGNATURE,
    STACK,
    cli,
    model_source,
    run_config,
    same_numbers,
    verify_json,
    write_tiny_sd_folder,
)

pytestmark = pytest.mark.slow

# reduced steps and samples: each run is a real protect -> verify -> attack -> verify -> score
FAST = ["model=micro", "logger=none", "model.sampler.steps=3", "eval.fid.num_samples=8",
        "eval.fid.kid_subset_size=4", "eval.fid.kid_subsets=2", "eval.grid_samples=4", "eval.quality_of_base=false"]  # fmt: skip
WATERMARK = ["defense.steps=8", "defense.batch_size=4"]
MICRO_BASE = ArtifactCache().shipped("base", model_source("micro").describe()) / "model"  # another autoencoder
TRAIN = ["attack.steps=3", "attack.batch_size=4"]
DIAGONAL = {
    "aiao-lora": ["defense=aiao", "attack=lora", *WATERMARK, "defense.probe_steps=3",
                  "defense.num_subpaths=8", "model.gradient_checkpointing=true", *TRAIN, "attack.save=adapter"],
    "sleepermark-full": ["defense=sleepermark", "attack=full", *WATERMARK, "defense.codec.steps=20",
                         "defense.codec.batch_size=8", "defense.codec.bits=16", "defense.num_samples=4",
                         "defense.null_messages=7", *TRAIN, "attack.save=merged"],
    "backdoor-dreambooth": ["defense=backdoor", "attack=dreambooth", *WATERMARK, "defense.num_samples=4",
                            "defense.null_keys=7", *TRAIN, "attack.num_class_images=2"],
    "freezeasguard-quantize": ["experiment=freeze", "defense=freezeasguard", "attack=quantize", "defense.steps=3",
                               "defense.batch_size=4", "defense.user_steps=2", "defense.user_batch_size=4"],
    "random_freeze-prune": ["defense=random_freeze", "attack=prune"],
    "none-weight_noise": ["defense=none", "attack=weight_noise"],
    "aiao_busy-none": ["defense=aiao_busy", "attack=none", *WATERMARK, "defense.probe_steps=3",
                       "defense.num_subpaths=8"],
    # the same protections as above (cached): a merge with an independent fine-tune, a fine-tuned decoder
    "backdoor-merge": ["defense=backdoor", "attack=merge", *WATERMARK, "defense.num_samples=4",
                       "defense.null_keys=7", *TRAIN],
    "sleepermark-vae_swap": ["defense=sleepermark", "attack=vae_swap", *WATERMARK, "defense.codec.steps=20",
                             "defense.codec.batch_size=8", "defense.codec.bits=16", "defense.num_samples=4",
                             "defense.null_messages=7", *TRAIN],
    # one decoder watermark: a UNet fine-tune, then the base's VAE put back
    "stable_signature-full": [*STABLE_SIGNATURE, "attack=full", *TRAIN],
    "stable_signature-vae_swap": [*STABLE_SIGNATURE, "attack=vae_swap", "attack.vae=base",
                                  f"eval.image_attacks=[{{name: reencode, vae: {MICRO_BASE}}}]"],
    # AquaLoRA on SleeperMark's codec above (cached); on micro_dit it runs in a stack (tests/test_dit_runs.py)
    "aqualora-dreambooth": ["defense=aqualora", "attack=dreambooth", *WATERMARK, "defense.codec.steps=20",
                            "defense.codec.batch_size=8", "defense.codec.bits=16", "defense.num_samples=4",
                            "defense.null_messages=7", *TRAIN, "attack.num_class_images=2"],
    # adaptive: fine-tune where the method's mark lives (the protections above, cached)
    "aiao-targeted": ["defense=aiao", "attack=targeted", *WATERMARK, "defense.probe_steps=3", "defense.num_subpaths=8",
                      "model.gradient_checkpointing=true", *TRAIN, "attack.probe_steps=2"],
    "sleepermark-targeted": ["defense=sleepermark", "attack=targeted", *WATERMARK, "defense.codec.steps=20",
                             "defense.codec.batch_size=8", "defense.codec.bits=16", "defense.num_samples=4",
                             "defense.null_messages=7", *TRAIN],
    "sleepermark-distill": ["defense=sleepermark", "attack=distill", *WATERMARK, "defense.codec.steps=20",
                            "defense.codec.batch_size=8", "defense.codec.bits=16", "defense.num_samples=4",
                            "defense.null_messages=7", *TRAIN, "attack.num_images=8"],
    "backdoor-leaked_trigger": ["defense=backdoor", "attack=leaked_trigger", *WATERMARK, "defense.num_samples=4",
                                "defense.null_keys=7", *TRAIN],
    "imma-lora": ["experiment=freeze", "defense=imma", "defense.steps=5", "defense.batch_size=4", "attack=lora",
                  *TRAIN],
    # two defenses stacked: the Stable Signature above (its extractor cached), then a random mask the LoRA honours
    "stack-lora": [*STACK, "attack=lora", *TRAIN],
}  # fmt: skip


@pytest.fixture(scope="module")
def diagonal(tmp_path_factory):
    """Every defense and every attack once on the latent micro model, results by run name."""
    tmp = tmp_path_factory.mktemp("diagonal")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(tmp / "cache"))
        runs = {name: run_config([*FAST, *args], tmp / name) for name, args in DIAGONAL.items()}
    return tmp, runs


def test_every_defense_and_attack_runs_on_the_latent_model(diagonal):
    _, runs = diagonal
    assert {r.run.defense for r in runs.values()} >= {"aiao", "sleepermark", "backdoor", "freezeasguard",
                                                     "random_freeze", "none", "stable_signature", "stack",
                                                     "aqualora", "imma"}  # fmt: skip
    assert {r.run.attack for r in runs.values()} >= {"lora", "full", "dreambooth", "quantize", "prune",
                                                    "weight_noise", "none", "merge", "vae_swap", "targeted",
                                                    "leaked_trigger", "distill"}  # fmt: skip
    for name, result in runs.items():
        assert result.status == "ok", name
        assert result.run.model == "micro"
        verified = result.protected.verification
        if result.run.defense in (
            "aiao",
            "aiao_busy",
            "sleepermark",
            "backdoor",
            "stable_signature",
            "stack",
            "aqualora",
        ):
            attacked = [a.model.verification for a in result.attacks.values()]
            assert verified.trials > 0 and all(v is not None and v.trials == verified.trials for v in attacked), name
        else:  # freezing and no defense: judged by quality after the attack
            fids = [q.fid for a in result.attacks.values() for q in a.model.quality.values()]
            assert fids and all(f > 0 for f in fids), name


def test_stable_signature_lives_in_the_decoder(diagonal):
    """Detected, the base not; a UNet fine-tune leaves it (the decoder is not trained); the base's VAE put
    back removes it and gives the base's own verification (the denoiser was never changed); re-encoding its
    images through the base's autoencoder is verified beside it."""
    _, runs = diagonal
    for name in ("stable_signature-full", "stable_signature-vae_swap"):
        result = runs[name]
        assert result.protected.verification.detected and not result.base.verification.detected, name
        assert result.protect["extractor"]["marked_bit_accuracy"] > 0.8
    (tuned,) = runs["stable_signature-full"].attacks.values()
    assert tuned.model.verification.detected and tuned.cost["trainable_params"] > 0
    (swapped,) = runs["stable_signature-vae_swap"].attacks.values()
    base = runs["stable_signature-vae_swap"].base.verification
    assert not swapped.model.verification.detected
    assert (swapped.model.verification.successes, swapped.model.verification.mean_score) == (
        base.successes, base.mean_score)  # fmt: skip
    # the protected model's images re-encoded through the base's autoencoder: verified on the same images
    (label,) = runs["stable_signature-vae_swap"].protected.image_attacks
    reencoded = runs["stable_signature-vae_swap"].protected.image_attacks[label]
    assert label.startswith("reencode(vae=") and reencoded.trials == base.trials


def test_a_stack_verifies_its_watermark_member_and_the_attack_honours_its_mask(diagonal):
    _, runs = diagonal
    stacked = runs["stack-lora"]
    (attack,) = stacked.attacks.values()
    assert stacked.protected.verification.detected and not stacked.base.verification.detected
    for verified in (stacked.protected.verification, attack.model.verification):
        assert set(verified.figures) >= {
            "stable_signature.rate",
            "stable_signature.detected",
            "stable_signature.p_value",
        }
        assert verified.rate == verified.figures["stable_signature.rate"]  # one watermark member: its numbers
    assert 0 < stacked.summary["frozen_tensors_ratio"] < 1  # random_freeze's mask
    assert attack.cost["frozen_params"] > 0
    assert stacked.protect["order"] == ["stable_signature", "random_freeze"]


def test_adaptive_attacks_locate_the_mark_or_learn_from_the_outputs(diagonal):
    _, runs = diagonal
    (aiao,) = runs["aiao-targeted"].attacks.values()
    assert aiao.cost["method"] == "aiao" and aiao.cost["located_by"] == "analysis"  # the attacker's own probe
    assert 0 < aiao.cost["lazy_blocks"] < aiao.cost["blocks"]
    (sleeper,) = runs["sleepermark-targeted"].attacks.values()
    assert sleeper.cost["method"] == "sleepermark" and sleeper.cost["located_by"] == "public"
    assert sleeper.cost["targeted_tensors"] > 0 and 0 < sleeper.cost["trainable_params"] < sleeper.cost["total_params"]
    (distill,) = runs["sleepermark-distill"].attacks.values()  # a student from the base, on the model's images
    assert distill.cost["student"] == "base" and distill.cost["teacher_images"] == 8
    assert distill.model.verification.trials == runs["sleepermark-distill"].protected.verification.trials


def test_the_owner_protects_with_the_stack_and_verify_detects_it(diagonal, monkeypatch):
    """``protect`` with the run's stack (every seed fixed: served from the diagonal's cache), then ``verify``
    with the stacked key file: the verdict and every member's figures as the protection measured them."""
    tmp, runs = diagonal
    monkeypatch.setenv("ADAPTGUARD_CACHE", str(tmp / "cache"))
    result = cli(
        ["protect", "model=micro", "model.sampler.steps=3", *STACK, "progress=false", f"out={tmp / 'release'}"]
    )
    assert result.code == 0, result.stderr
    report = json.loads((tmp / "release" / "protect.json").read_text())
    assert report["protected"]["detected"]
    assert report["protected"]["rate"] == runs["stack-lora"].protected.verification.rate  # the run's protection
    assert not report["base"]["detected"] and 0 < report["summary"]["frozen_tensors_ratio"] < 1
    members = report["config"]["members"]  # in the user's order, secrets redacted
    assert [m["name"] for m in members] == ["stable_signature", "random_freeze"]
    assert members[0]["key_seed"] == "<redacted>" and members[1]["mask_seed"] == "<redacted>"
    assert (tmp / "release" / "owner.key").stat().st_mode & 0o077 == 0
    verdict = verify_json(f"key={tmp / 'release' / 'owner.key'}", f"suspect={tmp / 'release' / 'model'}")
    assert verdict["detected"] and verdict["identical_to_protected"]
    same_numbers(verdict, report["protected"])


def test_latent_runs_encode_and_decode_through_the_vae(diagonal):
    """The SleeperMark codec lives in the micro VAE's 8x8x4 latent space; grids are 32-px decoded images."""
    tmp, runs = diagonal
    assert runs["sleepermark-full"].protect["codec"]["latent_shape"] == [4, 8, 8]
    grid = tmp / "aiao-lora" / runs["aiao-lora"].files["samples_protected"]
    assert grid.stat().st_size > 1000


def test_aiao_gradients_are_the_same_with_gradient_checkpointing(tmp_path):
    """AIAO's hooks under checkpointing: the backward re-runs each block's forward and must find the
    same triggers. On this SD-format UNet the hooks used to be gone by then (CheckpointError)."""
    sd = write_tiny_sd_folder(tmp_path / "sd")
    model = PretrainedSource(path=str(sd), resolution=64).load(RunContext(progress=False, device="cpu"))
    blocks = unet_blocks(model.unet, model.latent_shape)
    d = AIAODefense(key_seed=3)
    key = d.make_key(list(range(1, len(blocks), 2)), [1.0] * len(blocks))
    batch = {"image": torch.rand(4, 3, 64, 64) * 2 - 1, "caption": ["a red circle"] * 4}
    grads = []
    for checkpointing in (False, True):
        student = model.clone()
        student.unet.train()
        if checkpointing:
            student.unet.enable_gradient_checkpointing()
        objective = _EmbeddingObjective(d, key, blocks, model.unet, seed=0)
        torch.manual_seed(0)
        objective(student, batch)["loss"].backward()
        objective.close()
        grads.append(torch.cat([p.grad.flatten() for p in student.unet.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_aiao_on_a_stable_diffusion_folder_with_gradient_checkpointing(tmp_path, monkeypatch):
    sd = write_tiny_sd_folder(tmp_path / "sd")
    monkeypatch.setenv("ADAPTGUARD_CACHE", str(tmp_path / "cache"))
    result = run_config(["model=sd15", f"model.path={sd}", "model.resolution=64", "model.gradient_checkpointing=true",
                         "model.sampler.steps=2", "model.sampler.batch_size=8", "defense=aiao", "attack=lora",
                         "defense.steps=3", "defense.batch_size=4", "defense.probe_steps=2",
                         "defense.num_subpaths=8", "defense.response_bits=16",
                         "defense.busy_fraction=0.3", "attack.steps=2", "attack.batch_size=4", "logger=none",
                         "eval.fid=null", "eval.grid_samples=4"], tmp_path / "run")  # fmt: skip
    assert result.status == "ok"
    assert result.protected.verification.trials == 8
    (attack,) = result.attacks.values()
    assert attack.model.verification.trials == 8


CLIENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    base, protected, attacked, adapter = sys.argv[1:5]
    out = {}
    for name, folder, lora in (("base", base, None), ("protected", protected, None),
                               ("attacked", attacked, None), ("adapter", protected, adapter)):
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        if lora:
            pipe.load_lora_weights(lora)
        images = pipe(["a red circle on a black background"] * 2, num_inference_steps=3, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        out[name] = {"shape": list(images.shape), "std": float(np.std(images))}
    out["adaptguard_imported"] = any(m.startswith("adaptguard") for m in sys.modules)
    print(json.dumps(out))
""")


def test_diffusers_opens_every_folder_the_framework_writes(diagonal):
    """A fresh process that never imports adaptguard: the shipped base model, a protected model, an attacked
    model (attack.save=merged) and a LoRA adapter (attack.save=adapter) all generate with diffusers alone."""
    tmp, runs = diagonal
    base = model_source("micro").describe()

    shipped = ArtifactCache(tmp / "cache").shipped("base", base)
    assert shipped is not None, "the latent micro model's weights should ship with the package"
    protected = next((tmp / "cache" / "protected").glob("*/model"))
    attacked = runs["sleepermark-full"].attacks["attacker"].cost["saved_to"]
    adapter = runs["aiao-lora"].attacks["attacker"].cost["saved_to"]
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(shipped / "model"), str(protected), attacked, adapter],
                          capture_output=True, text=True, cwd=tmp)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("adaptguard_imported") is False
    for name, facts in out.items():
        assert facts["shape"] == [2, 32, 32, 3] and facts["std"] > 0.01, name
