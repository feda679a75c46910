"""Runs that fail say so: diverged training, failing sweep jobs, interrupts; exit codes follow docs/running.md."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from adaptguard.core.errors import DivergedError
from adaptguard.pipeline.evaluator import refuse_non_finite
from tests.helpers import REPO, cli, make_ctx, micro_source

MICRO = ["model=micro", "defense=none", "attack=full", "eval.fid=null", "logger=none", "progress=false"]


def results(folder):
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_a_sweep_runs_past_a_failed_job_and_says_so(cli_env, tmp_path, launcher):
    """One job with a bad value: the other still runs; the sweep exits 4; the report lists the failed row."""
    sweep = tmp_path / "sweep"
    args = ["run", "-m", *MICRO, "attack.steps=2", "attack.lr=-1,1e-3", f"hydra.sweep.dir={sweep}"]
    result = cli(args + (["hydra/launcher=local"] if launcher == "local" else []))
    assert result.code == 4, result.stderr
    assert "sweep: 1 of 2 jobs failed" in result.stderr
    failed, ok = results(sweep / "0"), results(sweep / "1")
    assert failed["status"] == "failed" and failed["error"]["stage"] == "config"
    assert failed["error"]["message"] == "attack.lr: must be > 0, got -1.0" and failed["error"]["exit_code"] == 2
    assert ok["status"] == "ok" and ok["attacks"]["attacker"]["cost"]["trainable_params"] > 0
    report = cli(["report", str(sweep)])
    assert report.code == 4 and "1 of 2 jobs did not finish" in report.stdout
    row = next(line for line in report.stdout.splitlines() if "must be > 0" in line)
    assert "| failed | config |" in row and str(sweep / "0") in row
    assert cli(["report", str(sweep), "--allow-failed", "--out", str(tmp_path / "page")]).code == 0
    page = (tmp_path / "page.md").read_text()  # the results page lists it too
    assert "## Jobs that did not finish (1)" in page and row in page
    assert "| none × full | 0 |" in page  # seed 0 finished
    if launcher == "basic":  # the same sweep again in its own folder: the finished job is kept, the failed one reruns
        before = (sweep / "1" / "results.json").read_bytes()
        again = cli(args)
        assert again.code == 4 and "sweep: 1 of 2 jobs failed" in again.stderr
        assert f"{sweep / '1'}: finished before with this config" in again.stdout
        assert (sweep / "1" / "results.json").read_bytes() == before


def test_diverged_training_stops_the_run_with_status_failed(cli_env, tmp_path):
    result = cli(["run", *MICRO, "attack.steps=10", "attack.lr=1e3", f"hydra.run.dir={tmp_path}"])
    assert result.code == 3 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: attack: ") and "not finite" in result.stderr
    assert "lower attack.lr" in result.stderr
    record = results(tmp_path)
    assert record["status"] == "failed" and record["error"]["stage"] == "attack" and record["error"]["exit_code"] == 3
    assert record["attacks"] == {} and "attack" in record["stages"]  # no metrics of a diverged model


def test_sampling_refuses_non_finite_weights(tmp_path):
    model = micro_source().load(make_ctx(tmp_path))
    refuse_non_finite("attacked", model)  # finite: no error
    with torch.no_grad():
        next(model.unet.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(DivergedError, match=r"attacked model \(unet\), before sampling: weight .* lower attack.lr"):
        refuse_non_finite("attacked", model)


def test_an_interrupted_run_exits_128_plus_the_signal_and_says_interrupted(cli_env, tmp_path):
    """Ctrl-C here; SIGTERM (a cluster's kill) in the resume test below."""
    signum, code = signal.SIGINT, 130
    args = [*MICRO, "attack.steps=100000", "progress=true", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=REPO, env={**os.environ},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen: list[str] = []  # the attack's progress bar shows when training has started
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while "attack:" not in "".join(seen) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "".join(seen)
    time.sleep(1.0)  # some optimizer steps in
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    reader.join(timeout=5)
    assert "results.json records status: interrupted" in "".join(seen)
    record = results(tmp_path)
    assert record["status"] == "interrupted" and record["error"]["stage"] == "attack"
    assert record["error"]["exit_code"] == code


RESUME = ["model=micro", "defense=backdoor", "defense.steps=20", "defense.num_samples=8", "attack=full",
          "attack.steps=40", "attack.batch_size=8", "attack.save=merged", "checkpoint_every=10", "eval.fid=null",
          "eval.at_steps=[0,20,40]", "logger=none"]  # fmt: skip


def test_a_killed_attack_resumes_and_ends_with_the_uninterrupted_metrics(cli_env, tmp_path):
    assert cli(["run", *RESUME, "progress=false", f"hydra.run.dir={tmp_path / 'whole'}"]).code == 0
    resume_root = tmp_path / "cache" / "resume" / "attack"
    assert not [p for p in resume_root.iterdir() if p.is_dir()]  # a finished attack leaves no checkpoints behind
    command = [sys.executable, "-m", "experiments.run", *RESUME, "progress=true", f"hydra.run.dir={tmp_path / 'cut'}"]
    proc = subprocess.Popen(command, cwd=REPO, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(resume_root.glob("*/attack/last.ckpt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143  # 128 + SIGTERM
    stopped = results(tmp_path / "cut")
    assert stopped["status"] == "interrupted" and stopped["error"]["stage"] == "attack"
    assert stopped["error"]["exit_code"] == 143
    rerun = cli(["run", *RESUME, "progress=false", f"hydra.run.dir={tmp_path / 'cut'}"])
    assert rerun.code == 0 and "attack: resuming from" in rerun.stdout + rerun.stderr
    whole, cut = results(tmp_path / "whole"), results(tmp_path / "cut")
    assert cut["status"] == "ok"
    for part in ("model", "curve"):  # verification after the attack, and at steps 0, 20 (before the cut) and 40
        assert cut["attacks"]["attacker"][part] == whole["attacks"]["attacker"][part]
    weights = [Path(r["attacks"]["attacker"]["cost"]["saved_to"]) / "unet" / "diffusion_pytorch_model.safetensors"
               for r in (whole, cut)]  # fmt: skip
    assert weights[0].read_bytes() == weights[1].read_bytes()  # the attacked UNet, bit for bit


def test_the_same_command_draws_the_same_key_on_a_fresh_cache(cli_env, tmp_path, monkeypatch):
    """key_seed null: the key comes from `seed` (two empty caches agree; another seed differs); protect's is fresh."""
    args = ["model=micro", "defense=backdoor", "defense.steps=5", "defense.num_samples=4", "attack=none",
            "eval.fid=null", "logger=none", "progress=false"]  # fmt: skip
    verifications = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        monkeypatch.setenv("ADAPTGUARD_CACHE", str(tmp_path / f"cache_{name}"))
        assert cli(["run", *args, f"seed={seed}", f"hydra.run.dir={tmp_path / name}"]).code == 0
        verifications[name] = results(tmp_path / name)["protected"]["verification"]
    assert verifications["a"] == verifications["b"] and verifications["a"]["mean_score"] is not None
    assert verifications["c"] != verifications["a"]  # another seed, another key: other scores

    from adaptguard.defenses.backdoor import BackdoorDefense

    ctx = make_ctx(tmp_path)
    drawn = [BackdoorDefense().make_key(c.key_seed(None)).trigger for c in (ctx, ctx, replace(ctx, seed=1))]
    assert drawn[0] == drawn[1] != drawn[2]
    fresh = replace(ctx, fresh_keys=True)
    assert BackdoorDefense().make_key(fresh.key_seed(None)).trigger != BackdoorDefense().make_key(
        fresh.key_seed(None)).trigger  # fmt: skip
    assert fresh.key_seed(42) == ctx.key_seed(42) == 42
