"""Patch a clean clone of the FreezeAsGuard reference (pittisl/FreezeAsGuard) so it runs on adaptguard's tiny model.

    python apply_patches.py /work/refcode/freezeasguard [--reset]

The clone must be at UPSTREAM_COMMIT with a clean work tree (``--reset`` first restores the tracked files with
``git checkout``). Every edit is a small string replacement whose anchor must occur exactly once in the file, so an
upstream change fails loudly here instead of running half-patched. Nothing of the reference is copied into this
repository: the anchors are the shortest strings that identify each spot. ``git diff`` in the clone shows the result.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

UPSTREAM_COMMIT = "12856a826902bc912cf0c27259325133c81fb41f"
TRAINERS = ("mixed_full_trainer.py", "mask_learner.py", "target_trainer.py", "innocent_trainer.py")
FID_SCRIPT = "evaluate_fid_topiq_target.py"
MARKER = ".adaptguard_patched"


class PatchError(RuntimeError):
    pass


def replace_once(text: str, old: str, new: str, where: str) -> str:
    n = text.count(old)
    if n != 1:
        raise PatchError(f"{where}: anchor {old!r} found {n} times (expected exactly 1); has upstream changed?")
    return text.replace(old, new)


def patch_file(path: Path, edits: list[tuple[str, str]]) -> None:
    text = path.read_text()
    for old, new in edits:
        text = replace_once(text, old, new, path.name)
    path.write_text(text)


def trainer_edits() -> list[tuple[str, str]]:
    return [
        # the training noise scheduler: the model folder's own (DDPM: v-prediction, zero-SNR rescaling, trailing);
        # upstream reads that folder's config into PNDM, which drops both (for SD 1.5 the two agree)
        ("PNDMScheduler.from_pretrained(", "DDPMScheduler.from_pretrained("),
        # CLIPTokenizer reads our tokenizer.json without an error but gives the wrong ids: let transformers pick
        ("import CLIPTextModel, CLIPTokenizer", "import CLIPTextModel, CLIPTokenizer, AutoTokenizer"),
        ("tokenizer = CLIPTokenizer.from_pretrained(", "tokenizer = AutoTokenizer.from_pretrained("),
    ]


# Options of the FID script, set from the new flags; upstream's values are the defaults.
FID_OPTIONS = """
# --- adaptguard patch: options of the flags below (defaults: upstream's behaviour)
OPTS = {"crop_size": 512, "sampler": None, "steps": None, "guidance": None, "split": "test", "out_json": ""}
SAMPLERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm": "DPMSolverMultistepScheduler",
            "euler": "EulerDiscreteScheduler"}


def _sample_kwargs():
    kw = {}
    if OPTS["steps"] is not None:
        kw["num_inference_steps"] = OPTS["steps"]
    if OPTS["guidance"] is not None:
        kw["guidance_scale"] = OPTS["guidance"]
    return kw


def _set_sampler(pipe):
    if OPTS["sampler"]:
        import diffusers
        pipe.scheduler = getattr(diffusers, SAMPLERS[OPTS["sampler"]]).from_config(pipe.scheduler.config)
    return pipe
# --- end of adaptguard patch

"""

FID_FLAGS = """
    # --- adaptguard patch: flags
    parser.add_argument("--crop_size", type=int, default=512, help="center crop of real and generated images")
    parser.add_argument("--sampler", type=str, default=None, choices=sorted(SAMPLERS), help="default: the model's")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the pipeline's)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the pipeline's)")
    parser.add_argument("--split", type=str, default="test", help="split of data_dir holding the real images")
    parser.add_argument("--out_json", type=str, default="", help="also write FID and prompt fidelity here")
"""

FID_RESULT = """
    # --- adaptguard patch: prompt fidelity (our shapes classifier) and a JSON record
    result = {"fid_ft": ft_gt_fid, "fid_mft": mft_gt_fid, "num_samples": len(prompts),
              "fidelity_ft": ag_features.fidelity(ft_fake_images, prompts),
              "fidelity_mft": ag_features.fidelity(mft_fake_images, prompts),
              "fidelity_real": ag_features.fidelity(list(real_images), prompts),
              "extractor": ag_features.EXTRACTOR, "options": dict(OPTS)}
    print(f"fidelity = {result}")
    if OPTS["out_json"]:
        import json
        with open(OPTS["out_json"], "w") as f:
            json.dump(result, f, indent=2)
"""


def fid_edits() -> list[tuple[str, str]]:
    return [
        # TOPIQ needs downloaded weights: not imported, reported as NaN; our feature network replaces InceptionV3
        ("import pyiqa\n", "import features as ag_features  # adaptguard patch: our shapes feature network\n"),
        ("\n\ndef preprocess_image(", FID_OPTIONS + "\ndef preprocess_image("),
        ("(512, 512))", '(OPTS["crop_size"], OPTS["crop_size"]))'),
        ('dataset["test"]', 'dataset[OPTS["split"]]'),
        # CPU and fp32 (upstream: CUDA, bf16); sampler and steps from the flags
        ("torch_dtype=torch.bfloat16)", "torch_dtype=torch.float32)"),
        ('pipe = pipe.to("cuda")', 'pipe = _set_sampler(pipe.to("cpu"))'),
        ("pipe(prompts, generator=generator)", "pipe(prompts, generator=generator, **_sample_kwargs())"),
        ("pyiqa.create_metric(", "(lambda *a, **k: None)("),
        ("topiq_metric(real_image_tensor, ft_fake_image_tensor)", 'torch.tensor(float("nan"))'),
        ("topiq_metric(real_image_tensor, mft_fake_image_tensor)", 'torch.tensor(float("nan"))'),
        ('print(f"mft_gt_fid = {mft_gt_fid}")\n', 'print(f"mft_gt_fid = {mft_gt_fid}")\n' + FID_RESULT),
        (
            "fid = FrechetInceptionDistance(normalize=True)",
            "return ag_features.fid(ref_images_tensors, fake_images_tensors)",
        ),
        ('    parser.add_argument("--seed"', FID_FLAGS + '    parser.add_argument("--seed"'),
        (
            "args = parser.parse_args()\n",
            "args = parser.parse_args()\n    OPTS.update({k: getattr(args, k) for k in OPTS})\n",
        ),
    ]


def git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(clone), *args], check=True, capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clone", type=Path, help="a git clone of pittisl/FreezeAsGuard")
    parser.add_argument("--reset", action="store_true", help="restore the tracked files first (git checkout -- .)")
    args = parser.parse_args()
    clone = args.clone.resolve()
    head = git(clone, "rev-parse", "HEAD")
    if head != UPSTREAM_COMMIT:
        raise PatchError(f"{clone} is at {head}; these patches are for upstream {UPSTREAM_COMMIT}")
    if args.reset:
        git(clone, "checkout", "--", ".")
        (clone / MARKER).unlink(missing_ok=True)
    if git(clone, "status", "--porcelain", "--untracked-files=no"):
        raise PatchError(f"{clone}: tracked files are modified; pass --reset to start from the upstream commit")
    src = clone / "src"
    for name in TRAINERS:
        patch_file(src / name, trainer_edits())
    patch_file(src / FID_SCRIPT, fid_edits())
    (clone / MARKER).write_text(UPSTREAM_COMMIT + "\n")
    print(f"patched {clone} (upstream {UPSTREAM_COMMIT[:7]}): {', '.join(TRAINERS + (FID_SCRIPT,))}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PatchError as err:
        print(f"apply_patches: {err}", file=sys.stderr)
        sys.exit(1)
