"""AIAO: key determinism, hook transparency, embedding, and the false-positive controls."""

import pytest
import torch

from adaptguard.analysis import compare_unets, unet_blocks
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.defenses import AIAODefense, AIAOKey
from adaptguard.defenses.aiao import all_pairs, block_secret
from adaptguard.defenses.subpath_hooks import SubpathHooks
from adaptguard.sources import PretrainedSource
from tests.helpers import cli, make_ctx, make_micro_data, write_tiny_sd_folder


def _inputs(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *model.latent_shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    return x, t, model.encode_prompts(["a red circle"] * n)


def test_key_derives_the_same_masks_patterns_and_signs(micro_model):
    blocks = unet_blocks(micro_model.unet, micro_model.latent_shape)
    b = blocks[3]
    one, two = block_secret(42, b, 0.05, 64, 3.0, 0.5), block_secret(42, b, 0.05, 64, 3.0, 0.5)
    other = block_secret(43, b, 0.05, 64, 3.0, 0.5)
    for field in ("mask", "pattern", "response_index", "response_sign"):
        assert torch.equal(getattr(one, field), getattr(two, field))
    assert not torch.equal(one.mask, other.mask) and not torch.equal(one.response_sign, other.response_sign)
    assert one.mask.shape == b.shape and int(one.mask.sum()) == round(0.05 * b.numel)
    assert one.response_index.unique().numel() == 64 and set(one.response_sign.unique().tolist()) == {-1.0, 1.0}
    # the key's secret seed never shows in its repr
    assert "42" not in repr(AIAOKey(42, [0, 1], [], [1.0, 1.0]))


def test_hooks_leave_untriggered_outputs_bit_identical(micro_model):
    model = micro_model
    blocks = unet_blocks(model.unet, model.latent_shape)
    secrets = {b.index: block_secret(7, b, 0.05, 16, 3.0, 1.0) for b in blocks}
    x, t, emb = _inputs(model)
    with torch.no_grad():
        plain = model.predict(x, t, emb)
        with SubpathHooks(model.unet, blocks, secrets, read=range(len(blocks))) as hooks:
            hooked = model.predict(x, t, emb)
            hooks.trigger_at = torch.full((4,), -1)  # a trigger index that selects no block
            unselected = model.predict(x, t, emb)
            hooks.trigger_at = torch.tensor([2, -1, 2, -1])
            triggered = model.predict(x, t, emb)
            feature = hooks.features[2]
    assert torch.equal(plain, hooked) and torch.equal(plain, unselected)
    # the trigger changes only the samples that carry it, and writes the pattern where the mask is set
    assert torch.equal(triggered[1], plain[1]) and not torch.equal(triggered[0], plain[0])
    m = secrets[2].mask.bool()
    assert torch.equal(feature[0][m], secrets[2].pattern[m])
    with torch.no_grad():  # hooks are gone after the context
        assert torch.equal(model.predict(x, t, emb), plain)


def test_embedding_with_lambda_wm_zero_and_no_trigger_keeps_outputs(micro_base, tmp_path):
    """Only L_keep (distillation from the frozen original, zero at the start) and no weight decay:
    the protected model's untriggered outputs stay bit-identical to the original's."""
    ctx = make_ctx(tmp_path)
    d = AIAODefense(steps=3, batch_size=8, probe_steps=2, num_subpaths=8, lambda_wm=0.0,
                    lambda_null=0.0, key_seed=3)  # fmt: skip
    protected = d.protect(micro_base, make_micro_data(), ctx)
    x, t, emb = _inputs(micro_base)
    with torch.no_grad():
        assert torch.equal(protected.model.predict(x, t, emb), micro_base.predict(x, t, emb))


@pytest.fixture(scope="module")
def watermarked(micro_base, tmp_path_factory):
    ctx = make_ctx(tmp_path_factory.mktemp("aiao"))
    d = AIAODefense(steps=120, batch_size=16, probe_steps=20, num_subpaths=32, key_seed=5)
    return d, d.protect(micro_base, make_micro_data(), ctx), ctx


def test_watermark_is_detected_and_controls_are_not(watermarked, micro_base):
    d, protected, ctx = watermarked
    key = protected.key
    info = protected.info
    assert set(info["busy"]).isdisjoint(key.candidates) and len(info["activity"]) == len(info["blocks"])
    ver = d.verify(protected.model, key, ctx)
    assert ver.detected and ver.rate >= 0.8, ver.summary()
    assert ver.figures["untriggered_rate"] <= 0.3, ver.figures  # no response without the trigger
    never = d.verify(micro_base, key, ctx)  # a never-watermarked model
    assert not never.detected and never.p_value > d.model_fpr, never.summary()
    assert abs(never.figures["bit_accuracy"] - 0.5) < 0.1
    wrong = d.make_key(key.candidates, key.scales, seed=key.seed + 1)
    wv = d.verify(protected.model, wrong, ctx)  # a wrong key on the watermarked model
    assert not wv.detected and abs(wv.figures["bit_accuracy"] - 0.5) < 0.1, wv.summary()
    # the decision is the key-randomization test: no random key reaches the owner's passing trials
    assert ver.p_value == pytest.approx(1 / (1 + ver.details["random_keys"]))
    assert ver.details["random_key_best_trial_max"] < max(ver.scores)


def test_busy_ablation_uses_one_fixed_subpath_in_busy_blocks(micro_base, tmp_path):
    ctx = make_ctx(tmp_path)
    d = AIAODefense(layers="busy", monte_carlo=False, busy_fraction=0.3, steps=2, batch_size=8, probe_steps=5,
                    num_subpaths=8, key_seed=9)  # fmt: skip
    protected = d.protect(micro_base, make_micro_data(), ctx)
    key = protected.key
    assert key.candidates == protected.info["busy"] and tuple(key.fixed_pair) in all_pairs(key.candidates)
    ver = d.verify(protected.model, key, ctx)
    assert ver.details["distinct_subpaths"] == 1 and ver.trials == 8


def test_layer_activity_ranks_blocks_and_plots(micro_base, tmp_path):
    tuned = micro_base.clone()
    with torch.no_grad():
        tuned.unet.get_submodule("up_blocks.1.resnets.0").conv1.weight.mul_(1.5)
    report = compare_unets(micro_base.unet, tuned.unet, micro_base.latent_shape, busy_fraction=0.05)
    top = max(range(len(report.activity)), key=report.activity.__getitem__)
    assert report.blocks[top].name == "up_blocks.1.resnets.0" and report.busy == [top]
    assert sum(a > 0 for a in report.activity) == 1 and len(report.lazy) == len(report.blocks) - 1
    assert "BUSY" in report.table() and report.plot(tmp_path / "a.png").stat().st_size > 1000


def test_bad_aiao_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="defense.layers"):
        AIAODefense(layers="middle")
    with pytest.raises(ConfigError, match="defense.mask_ratio"):
        AIAODefense(mask_ratio=0)
    with pytest.raises(ConfigError, match="defense.num_subpaths"):
        AIAODefense(num_subpaths=0)


def test_aiao_runs_on_a_stable_diffusion_format_unet(tmp_path):
    sd = tmp_path / "sd"
    write_tiny_sd_folder(sd)
    model = PretrainedSource(path=str(sd), resolution=64, name="sd15").load(RunContext(progress=False, device="cpu"))
    data = ShapesDataModule(resolution=64, splits={"owner": {"size": 16}})
    d = AIAODefense(steps=2, batch_size=4, probe_steps=2, num_subpaths=6, response_bits=16,
                    busy_fraction=0.3, key_seed=1)  # fmt: skip
    protected = d.protect(model, data, make_ctx(tmp_path))
    blocks = unet_blocks(model.unet, model.latent_shape)
    assert protected.info["blocks"] == [b.name for b in blocks] and blocks[0].shape[1:] == (8, 8)
    ver = d.verify(protected.model, protected.key, make_ctx(tmp_path))
    assert ver.trials == 6 and 0 <= ver.rate <= 1


def test_layers_tool_writes_table_plot_and_json(cli_env, tmp_path):
    import json

    proc = cli(["layers", "model=pixel_micro", "attack.steps=3", "attack.batch_size=8", "progress=false",
                f"hydra.run.dir={tmp_path}/run"])  # fmt: skip
    assert proc.code == 0, proc.stderr[-3000:]
    assert "BUSY" in proc.stdout and "busy blocks:" in proc.stdout
    report = json.loads((tmp_path / "run" / "layer_activity.json").read_text())
    assert len(report["blocks"]) == 12 and all(b["activity"] > 0 for b in report["blocks"])
    assert len(report["busy"]) == 3 and set(report["busy"]).isdisjoint(report["lazy"])  # 0.2 of 12 blocks, rounded up
    assert (tmp_path / "run" / "layer_activity.png").stat().st_size > 1000
    bad = cli(["layers", "model=pixel_micro", f"tuned={tmp_path}/nope", f"hydra.run.dir={tmp_path}/run2"])
    assert bad.code == 2 and "Traceback" not in bad.stderr and "tuned:" in bad.stderr, bad.stderr[-2000:]
