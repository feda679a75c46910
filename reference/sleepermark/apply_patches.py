"""Patch a clean clone of taco-group/SleeperMark so it runs on adaptguard's tiny model, on CPU.

    python reference/sleepermark/apply_patches.py /work/refcode/sleepermark

Each edit is a small anchored substitution; an anchor found a different number of times than expected stops
the script before anything is written, so a changed upstream fails loudly. The clone must be at UPSTREAM with a
clean work tree. What each edit does is listed in README.md beside this file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

UPSTREAM = "a78789cbac92ff5a63a2ad13885cf3893a3d9c4f"

# per file: (pattern, replacement, expected count, is_regex); replacement may be a callable for regexes
Edit = tuple[str, "str | Callable[[re.Match[str]], str]", int, bool]

# the decoder's first linear: 512 channels after four stride-2 convs, (latent / 16)^2 positions (SD: 64 -> 8192)
DECODER = [
    ("def __init__(self, secret_size = 48):", "def __init__(self, secret_size = 48, latent_size = 64):", 1, False),
    ("Linear(8192, 2048,", "Linear(512 * (latent_size // 16) ** 2, 2048,", 1, False),
]

STAGE1_TRAIN_FLAGS = """parser.add_argument('--perceptual', choices=['lpips', 'ssim'], default='lpips', help='patch: ssim = 1 - SSIM')
parser.add_argument('--image_size', type=int, default=512)  # patch
parser.add_argument('--latent_size', type=int, default=64)  # patch
parser.add_argument('--device', type=str, default=None, help='patch: cpu forces the CPU')
args = parser.parse_args()"""

SSIM_LOSS = """class _OneMinusSSIM(torch.nn.Module):  # patch: LPIPS needs downloaded AlexNet weights
    def forward(self, x, y):  # x, y in [-1, 1], like LPIPS
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim
        return 1 - ssim(x * 0.5 + 0.5, y * 0.5 + 0.5, data_range=1.0)


def main():"""

LAST_STEP = """    if accelerator.is_main_process:  # patch: keep the last step
        os.makedirs(f"{saved_models_path}/last", exist_ok=True)
        torch.save(accelerator.unwrap_model(sec_encoder).state_dict(), f"{saved_models_path}/last/encoder.pth")
        torch.save(accelerator.unwrap_model(decoder).state_dict(), f"{saved_models_path}/last/decoder.pth")
    accelerator.end_training()"""

STAGE1_EVAL_FLAGS = """parser.add_argument('--sd_model', type=str, default='CompVis/stable-diffusion-v1-4')  # patch
parser.add_argument('--image_size', type=int, default=512)  # patch
parser.add_argument('--latent_size', type=int, default=64)  # patch
parser.add_argument('--device', type=str, default='cuda')  # patch
parser.add_argument('--out_dir', type=str, default='output_dir')  # patch
parser.add_argument('--seed', type=int, default=0)  # patch
parser.add_argument('--threshold', type=int, default=41, help='patch: bits right for an image to count')
args = parser.parse_args()
np.random.seed(args.seed)  # patch
torch.manual_seed(args.seed)  # patch
os.makedirs(f'{args.out_dir}/res', exist_ok=True)  # patch
os.makedirs(f'{args.out_dir}/hidden', exist_ok=True)  # patch"""

STAGE1_EVAL_SUMMARY = """

# patch: a JSON summary (mean bit accuracy and the share of images with >= threshold bits right)
import json
def _summary(accs):
    return {"bit_accuracy": float(np.mean(accs)), f"share_at_{args.threshold}_bits":
            float(np.mean([round(a * 48) >= args.threshold for a in accs]))}
with open(f'{args.out_dir}/summary.json', 'w') as f:
    json.dump({"images": len(wm_acc), "psnr_db": float(np.mean(psnr_lst)), "clean": _summary(wm_acc),
               **{name: _summary(accs) for name, accs in [
                   ("resize", resize_wm_acc), ("blur", blur_wm_acc), ("noise", noise_wm_acc),
                   ("jpeg_compress", jpeg_compress_wm_acc), ("sharpness", sharpness_wm_acc),
                   ("brightness", brightness_wm_acc), ("contrast", contrast_wm_acc),
                   ("saturation", saturation_wm_acc)]},
               "args": vars(args)}, f, indent=1)
print(f'summary: {args.out_dir}/summary.json')
"""

STAGE2_TRAIN_FLAGS = """parser.add_argument("--coeff_steepness", type=float, default=100)
        parser.add_argument("--latent_size", type=int, default=64)  # patch
        parser.add_argument("--device", type=str, default=None, help="patch: cpu forces the CPU")"""


def v_prediction_branch(m: re.Match[str]) -> str:
    """Keep upstream's epsilon target under an else; the v branch shifts the one-step x0 estimate by the residual:
    x0 = sqrt(a) z - sqrt(1 - a) v, so v_wm = v - r / sqrt(1 - a) (no division by sqrt(a), 0 at zero terminal SNR)."""
    ind, block = m.group(1), m.group(2)
    body = "".join(f"{ind}    {line.lstrip()}\n" for line in block.splitlines())
    return (
        f'{ind}if noise_scheduler.config.prediction_type == "v_prediction":  # patch\n'
        f"{ind}    target_modified_trigger = model_original_pred_Trigger - WM_residual.repeat("
        f"noisy_model_input.shape[0], 1, 1, 1) / sqrt_one_minus_alpha_prod\n"
        f"{ind}else:\n{body}"
    )


STAGE2_EVAL_FLAGS = """parser.add_argument('--model_dir', type=str, default='CompVis/stable-diffusion-v1-4')  # patch
parser.add_argument('--device', type=str, default='cuda')  # patch
parser.add_argument('--seed', type=int, default=0)  # patch
parser.add_argument('--image_size', type=int, default=512)  # patch
parser.add_argument('--latent_size', type=int, default=64)  # patch
parser.add_argument('--prompts_file', type=str, default='./sampled_captions2014.jsonl')  # patch
parser.add_argument('--num_prompts', type=int, default=None)  # patch
parser.add_argument('--num_inference_steps', type=int, default=50)  # patch
parser.add_argument('--guidance_scale', type=float, default=7.5)  # patch
parser.add_argument('--out_dir', type=str, default=None, help='patch: images and summary.json (default: unet_dir)')
parser.add_argument('--threshold', type=int, default=41, help='patch: bits right for an image to count')
args = parser.parse_args()
out_dir = args.out_dir or args.unet_dir  # patch"""

STAGE2_EVAL_SUMMARY = """

# patch: a JSON summary, with the untriggered images' bits (computed but unused upstream)
def _summary(accs):
    return {"bit_accuracy": float(np.mean(accs)), f"share_at_{args.threshold}_bits":
            float(np.mean([round(a * 48) >= args.threshold for a in accs]))}
with open(f'{out_dir}/summary.json', 'w') as f:
    json.dump({"prompts": len(total_acc_WM), "triggered": _summary(total_acc_WM),
               "untriggered": _summary(noTrigger_acc_WM),
               **{name: _summary(accs) for name, accs in [
                   ("resize", resize_wm_acc), ("blur", blur_wm_acc), ("noise", noise_wm_acc),
                   ("jpeg_compress", jpeg_compress_wm_acc), ("sharpness", sharpness_wm_acc),
                   ("brightness", brightness_wm_acc), ("contrast", contrast_wm_acc),
                   ("saturation", saturation_wm_acc)]},
               "args": vars(args)}, f, indent=1)
print(f'summary: {out_dir}/summary.json')
"""

EDITS: dict[str, list[Edit]] = {
    "Stage1/model.py": [
        *DECODER,
        # evaluation resizes the attacked image back to the input's size, not 512
        ("size=(512, 512),", "size=tuple(image_input.shape[-2:]),", 1, False),
    ],
    "Stage1/train.py": [
        ('log_with="wandb",', 'log_with="wandb", cpu=(args.device == "cpu"),', 1, False),
        (
            'lpips.LPIPS(net="alex", verbose=False)',
            '(lpips.LPIPS(net="alex", verbose=False) if args.perceptual == "lpips" else _OneMinusSSIM())',
            1,
            False,
        ),
        ("def main():", SSIM_LOSS, 1, False),
        (
            r"ImageData\((args\.\w+_path), secret_size = args\.secret_size",
            r"ImageData(\1, img_size=(args.image_size, args.image_size), secret_size = args.secret_size",
            2,
            True,
        ),
        (
            "model.SecretEncoder(secret_size = args.secret_size)",
            "model.SecretEncoder(secret_size = args.secret_size, base_res=args.latent_size // 2, "
            "resolution=args.latent_size)",
            1,
            False,
        ),
        (
            "model.Extractor_forLatent(secret_size = args.secret_size)",
            "model.Extractor_forLatent(secret_size = args.secret_size, latent_size=args.latent_size)",
            1,
            False,
        ),
        ("    accelerator.end_training()", LAST_STEP, 1, False),
        ("args = parser.parse_args()", STAGE1_TRAIN_FLAGS, 1, False),  # flags last: their text holds other anchors
    ],
    "Stage1/eval.py": [
        ("'CompVis/stable-diffusion-v1-4'", "args.sd_model", 1, False),
        (r"\.cuda\(\)", ".to(args.device)", 4, True),
        (".to('cuda')", ".to(args.device)", 1, False),
        (
            "model.Extractor_forLatent(secret_size=48)",
            "model.Extractor_forLatent(secret_size=48, latent_size=args.latent_size)",
            1,
            False,
        ),
        (
            "model.SecretEncoder(secret_size = 48)",
            "model.SecretEncoder(secret_size = 48, base_res=args.latent_size // 2, resolution=args.latent_size)",
            1,
            False,
        ),
        (r"\(512, 512\)", "(args.image_size, args.image_size)", 2, True),
        (r"f'output_dir/(res|hidden)/", r"f'{args.out_dir}/\1/", 2, True),
        (r"^img_cover_paths = (.*)$", r"img_cover_paths = sorted(\1)  # patch: a fixed order", 1, True),
        ("args = parser.parse_args()", STAGE1_EVAL_FLAGS, 1, False),
    ],
    "Stage2/watermarkModel.py": DECODER,
    "Stage2/dm_finetune.py": [
        ('log_with="wandb",', 'log_with="wandb", cpu=(args.device == "cpu"),', 1, False),
        (
            "watermarkModel.Extractor_forLatent(secret_size=48)",
            "watermarkModel.Extractor_forLatent(secret_size=48, latent_size=args.latent_size)",
            1,
            False,
        ),
        (
            r"^( +)(x0_original_pred_Trigger = .*\n(?:.*\n){2}.*target_modified_trigger .*\n)",
            v_prediction_branch,
            1,
            True,
        ),
        (
            'assert noise_scheduler.config.prediction_type == "epsilon"',
            'assert noise_scheduler.config.prediction_type in ("epsilon", "v_prediction")',
            1,
            False,
        ),
        ('parser.add_argument("--coeff_steepness", type=float, default=100)', STAGE2_TRAIN_FLAGS, 1, False),
    ],
    "Stage2/eval.py": [
        ("setup_seed(0)", "SEED = args.seed  # patch: was undefined\nsetup_seed(SEED)", 1, False),
        ("open('./sampled_captions2014.jsonl', 'r')", "open(args.prompts_file, 'r')", 1, False),
        ("vae = AutoencoderKL", "prompts = prompts[:args.num_prompts]  # patch\nvae = AutoencoderKL", 1, False),
        ('"CompVis/stable-diffusion-v1-4"', "args.model_dir", 2, True),
        (r"""(["'])cuda\1""", "args.device", 8, True),
        (
            r"pipe\((prompt\w*), generator",
            r"pipe(\1, num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, generator",
            2,
            True,
        ),
        (r"\(512, 512\)", "(args.image_size, args.image_size)", 3, True),
        (r"\{unet_dir\}/", "{out_dir}/", 2, True),
        (
            "Extractor_forLatent(secret_size=GT_secret.shape[0])",
            "Extractor_forLatent(secret_size=GT_secret.shape[0], latent_size=args.latent_size)",
            1,
            False,
        ),
        ("total_acc_WM = []", "total_acc_WM = []\nnoTrigger_acc_WM = []  # patch", 1, False),
        (
            "total_acc_WM += [Trigger_acc]",
            "total_acc_WM += [Trigger_acc]\n        noTrigger_acc_WM += [calculate_bit_acc(decoded_result_NWM, "
            "GT_secret_repeated)]  # patch",
            1,
            False,
        ),
        ("args = parser.parse_args()", STAGE2_EVAL_FLAGS, 1, False),
    ],
}

APPEND = {"Stage1/eval.py": STAGE1_EVAL_SUMMARY, "Stage2/eval.py": STAGE2_EVAL_SUMMARY}


def apply(text: str, edits: list[Edit], where: str) -> str:
    for pattern, new, count, is_regex in edits:
        found = len(re.findall(pattern, text, flags=re.M)) if is_regex else text.count(pattern)
        if found != count:
            sys.exit(f"{where}: anchor {pattern!r} found {found} times, expected {count}: upstream changed?")
        if is_regex:
            text = re.sub(pattern, new, text, flags=re.M)
        else:
            assert isinstance(new, str)
            text = text.replace(pattern, new)
    return text


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    clone = Path(sys.argv[1])
    head = subprocess.run(["git", "-C", clone, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    if head.stdout.strip() != UPSTREAM:
        sys.exit(f"{clone}: at {head.stdout.strip()}, expected upstream {UPSTREAM}")
    dirty = subprocess.run(["git", "-C", clone, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    if dirty:
        sys.exit(f"{clone}: work tree not clean (already patched?):\n{dirty}\n(git -C {clone} checkout . resets it)")
    patched = {}
    for rel, edits in EDITS.items():
        patched[rel] = apply((clone / rel).read_text(), edits, rel) + APPEND.get(rel, "")
    for rel, text in patched.items():  # nothing is written unless every anchor matched
        compile(text, rel, "exec")
        (clone / rel).write_text(text)
    print(f"patched {len(patched)} files of {clone} ({sum(len(e) for e in EDITS.values())} edits)")


if __name__ == "__main__":
    main()
