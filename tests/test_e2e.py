"""Real experiments through the CLI: the tiny model end to end, a sweep, and secret hygiene."""

import json
import re
import subprocess
import sys

import pytest

from .conftest import REPO, run_cli

pytestmark = pytest.mark.slow

TRIGGER = "qX7#zK2@"
KEY_SEED = "918273645"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """experiment=smoke (backdoor x LoRA on the tiny model) with wandb offline and explicit secrets."""
    import os

    tmp = tmp_path_factory.mktemp("smoke")
    env = dict(os.environ, ADAPTGUARD_CACHE=str(tmp / "cache"), WANDB_DIR=str(tmp))
    proc = run_cli(
        ["experiment=smoke", "logger=wandb", f"defense.trigger='{TRIGGER}'", f"defense.key_seed={KEY_SEED}"], env, tmp
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp / "run", proc


def test_smoke_experiment_reports_verification_quality_and_costs(smoke_run):
    run_dir, proc = smoke_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run"] | {} and results["run"]["defense"] == "backdoor" and results["run"]["attack"] == "lora"
    ver = results["verification"]
    assert ver["before_attack"]["detected"] and ver["before_attack"]["rate"] >= 0.9
    assert not ver["never_watermarked"]["detected"] and ver["never_watermarked"]["rate"] <= 0.1
    assert 0 <= ver["after_attack"]["rate"] <= 1
    for fpr in ("0.01", "0.001"):
        assert ver["tpr_at_fpr"][fpr]["achieved_fpr"] <= float(fpr)
    q = results["quality"]
    for stage, domains in (("base", ["clean"]), ("protected", ["clean"]), ("attacked", ["clean", "attacker"])):
        for d in domains:
            assert q[stage][d]["fid_shapesnet"] >= 0 and "kid_shapesnet_mean" in q[stage][d]
    assert set(results["stages"]) >= {"base", "protect", "verify_before", "attack", "verify_after"}
    assert all(s["wall_s"] > 0 and s["peak_rss_mb"] > 0 for s in results["stages"].values())
    assert results["attack"]["trainable_params"] < results["attack"]["total_params"]
    for f in results["files"].values():
        assert (run_dir / f).stat().st_size > 0
    assert "verification rate" in proc.stdout and "fid_shapesnet (clean)" in proc.stdout
    curve = results["curves"]["attack"]
    assert [p["step"] for p in curve] == [0, 15, 30]
    assert curve[0]["verification"]["rate"] == ver["before_attack"]["rate"]
    assert curve[-1]["verification"]["rate"] == ver["after_attack"]["rate"]
    assert curve[-1]["quality"]["attacker"] == q["attacked"]["attacker"]
    assert "curve (attack)" in proc.stdout


def test_secrets_never_reach_logs_configs_or_stdout(smoke_run):
    run_dir, proc = smoke_run
    assert TRIGGER not in proc.stdout + proc.stderr and KEY_SEED not in proc.stdout + proc.stderr
    leaks = []
    for path in run_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            if TRIGGER.encode() in blob or KEY_SEED.encode() in blob:
                leaks.append(str(path.relative_to(run_dir)))
    assert not leaks, leaks
    assert list(run_dir.rglob("wandb/offline-run-*")), "the wandb offline run should exist"
    assert "<redacted>" in (run_dir / ".hydra" / "config.yaml").read_text()


def test_sweep_with_parallel_launcher_runs_every_job(cli_env, tmp_path):
    args = [
        "-m", "model=micro", "defense=none,backdoor", "attack=full,lora", "hydra/launcher=local",
        "++attack.steps=3", "eval.fid.num_samples=8", "eval.fid.kid_subset_size=4", "logger=csv",
        "eval.at_steps=[0,3]",
    ]  # fmt: skip
    proc = run_cli(args, cli_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(jobs) == 4
    combos = {(r["run"]["defense"], r["run"]["attack"]) for r in (json.loads(p.read_text()) for p in jobs)}
    assert combos == {("none", "full"), ("none", "lora"), ("backdoor", "full"), ("backdoor", "lora")}
    # the two backdoor jobs share one protected model: protected once, then loaded from the cache
    assert len(list((tmp_path / "cache" / "protected").glob("*/key.pt"))) == 1
    assert len(re.findall(r"adaptguard \| model=micro", proc.stdout)) in (0, 4)  # joblib may swallow stdout
    # the sweep's table: one row per job
    report = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(tmp_path / "sweep"), "--curves", str(tmp_path / "c.png")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line.startswith("| none") or line.startswith("| backdoor")]
    assert len(rows) == 4 and all("- |" in r or "[" in r for r in rows)
    # the curves: one column pair per job, a row per step; none/* has no rate, backdoor/* has one
    assert "| step | backdoor/full: rate | backdoor/full: FID |" in report.stdout
    steps = [line.split(" | ")[:2] for line in report.stdout.splitlines() if line.startswith(("| 0 |", "| 3 |"))]
    assert [s[0] for s in steps] == ["| 0", "| 3"] and all(float(s[1]) >= 0 for s in steps)
    assert (tmp_path / "c.png").stat().st_size > 5000
    empty = subprocess.run([sys.executable, "-m", "experiments.report", str(tmp_path / "nothing")], cwd=REPO,
                           capture_output=True, text=True)  # fmt: skip
    assert empty.returncode == 2 and "no results.json" in empty.stderr
