"""The GPU check's script on a CPU at toy sizes (``--small``): every part runs and reports its numbers.

Its speed is a GPU measurement (docs/measurements.md); this only keeps the script from rotting
between the rare sessions that have a GPU.
"""

import json

import pytest
from benchmarks import gpu_check


@pytest.mark.parametrize("model", ["sd15", "sd3"])
def test_the_gpu_check_runs_every_part_at_small_sizes(model, tmp_path, monkeypatch):
    out = tmp_path / "check.json"
    monkeypatch.setattr("sys.argv", ["gpu_check", "--small", "--model", model, "--steps", "3", "--out", str(out)])
    gpu_check.main()
    report = json.loads(out.read_text())
    assert report["model"]["denoiser"] == ("SD3Transformer2DModel" if model == "sd3" else "UNet2DConditionModel")
    for part in ("lora_step", "full_finetune_step", "aiao_protect", "sleepermark_protect"):
        assert report[part]["ratio_to_plain_step"] > 0, part
    for part in ("aiao_verify", "sleepermark_verify"):
        assert report[part]["model_device"] == "cpu" and report[part]["wall_s"] > 0, part
    assert report["sampling"]["images_per_s"] > 0
