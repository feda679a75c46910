"""Real experiments through the command line, in this process: the tiny model end to end, a sweep,
secret hygiene, and the console script from outside the checkout."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adaptguard.reporting.headline import headline
from adaptguard.reporting.results import RunResult
from tests.helpers import assert_secrets_only_in_owner_only_keys, cli

pytestmark = pytest.mark.slow

TRIGGER = "qX7#zK2@"
KEY_SEED = "918273645"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """experiment=smoke (backdoor x LoRA on the pixel model) with wandb offline and explicit secrets."""
    tmp = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(tmp / "cache"))
        m.setenv("WANDB_DIR", str(tmp))
        result = cli(["run", "experiment=smoke", "logger=wandb", f"defense.trigger='{TRIGGER}'",
                      f"defense.key_seed={KEY_SEED}", f"hydra.run.dir={tmp}/run"])  # fmt: skip
    assert result.code == 0, result.stderr[-4000:]
    return tmp / "run", result


def test_smoke_experiment_reports_verification_quality_and_costs(smoke_run):
    run_dir, proc = smoke_run
    result = RunResult.read(run_dir / "results.json")
    assert (result.run.model, result.run.defense, result.run.attack, result.status) == (
        "pixel",
        "backdoor",
        "lora",
        "ok",
    )
    protected, null = result.protected.verification, result.base.verification
    (attack,) = result.attacks.values()
    after = attack.model.verification
    assert protected.detected and protected.rate >= 0.9
    assert not null.detected and null.rate <= 0.1
    assert after.trials == protected.trials == 16 and after.detected
    for v in (protected, after):
        for fpr in ("0.01", "0.001"):
            assert v.tpr_at_fpr[fpr].achieved_fpr <= float(fpr)
            assert v.tpr_at_fpr[fpr].threshold == protected.tpr_at_fpr[fpr].threshold  # one null for the run
    assert protected.tpr_at_fpr["0.01"].tpr >= 0.9
    for model, domains in ((result.base, {"clean", "attacker"}), (result.protected, {"clean", "attacker"}),
                           (attack.model, {"clean", "attacker"})):  # fmt: skip
        assert set(model.quality) == domains
        assert all(q.extractor == "shapesnet" and q.fid > 0 and q.num_samples == 16 for q in model.quality.values())
    # the attack did adapt: its own domain's FID moved, its weights are a small LoRA
    assert attack.model.quality["attacker"].fid != result.protected.quality["attacker"].fid
    # paired differences: each model minus the one it was made from, on the same images' noise
    for model, before in ((result.protected, result.base), (attack.model, result.protected)):
        assert set(model.paired) == {"clean", "attacker"} and not result.base.paired
        for dom, deltas in model.paired.items():
            assert {"fid", "kid", "fidelity/all", "fidelity/kind+colour"} <= set(deltas)
            fid = deltas["fid"]
            assert abs(fid.value - (model.quality[dom].fid - before.quality[dom].fid)) < 1e-3 * (1 + abs(fid.value))
            assert fid.ci[0] <= fid.value <= fid.ci[1] and fid.images == 16 and fid.resamples == 500
            all_ = model.quality[dom].fidelity["all"] - before.quality[dom].fidelity["all"]
            assert abs(deltas["fidelity/all"].value - all_) < 1e-6
    assert "Δ fid (clean) vs model before" in proc.stdout
    numbers = headline(result)  # the attack's own effect on its domain, as wandb and the results page get it
    assert numbers["quality/fid_delta_attacked/attacker"] == attack.model.paired["attacker"]["fid"].value
    assert numbers["quality/fidelity_delta"] == pytest.approx(result.protected.paired["clean"]["fidelity/all"].value)
    assert attack.cost["trainable_params"] < 0.1 * attack.cost["total_params"]
    assert set(result.stages) >= {"base", "protect", "verify_base", "verify_protected", "attack", "verify_attacked"}
    assert all(s["wall_s"] > 0 and s["peak_rss_mb"] > 0 for s in result.stages.values())
    assert {"samples_base", "samples_protected", "samples_attacked", "curves"} <= set(result.files)
    assert all((run_dir / f).stat().st_size > 1000 for f in result.files.values())
    assert "verification rate" in proc.stdout and "fid_shapesnet (clean)" in proc.stdout
    assert [p.step for p in attack.curve] == [0, 15, 30]
    assert attack.curve[0].verification.rate == protected.rate
    assert attack.curve[-1].verification == after
    assert attack.curve[-1].quality["attacker"] == attack.model.quality["attacker"]
    assert "curve (attacker)" in proc.stdout


def test_secrets_never_reach_logs_configs_or_stdout(smoke_run):
    run_dir, proc = smoke_run
    assert TRIGGER not in proc.stdout + proc.stderr and KEY_SEED not in proc.stdout + proc.stderr
    leaks = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
             if p.is_file() and (TRIGGER.encode() in p.read_bytes() or KEY_SEED.encode() in p.read_bytes())]  # fmt: skip
    assert not leaks, leaks
    assert list(run_dir.rglob("wandb/offline-run-*")), "the wandb offline run should exist"
    assert "<redacted>" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert assert_secrets_only_in_owner_only_keys(run_dir.parent / "cache", TRIGGER, KEY_SEED)  # the trigger's key


def test_report_of_a_run_with_curves_tables_and_plots_them(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    report = cli(["report", str(run_dir), "--curves", str(tmp_path / "c.png"), "--out", str(tmp_path / "page")])
    assert report.code == 0, report.stderr
    assert re.search(r"\| backdoor \| lora \| attacker \|.* \d\.\d{3} \[", report.stdout)  # rates with intervals
    assert "| step | backdoor/lora: rate | backdoor/lora: FID |" in report.stdout  # a row per curve step
    steps = [line.split(" | ") for line in report.stdout.splitlines() if line.startswith(("| 0 |", "| 15 |", "| 30 |"))]
    assert [s[0] for s in steps] == ["| 0", "| 15", "| 30"] and all(0 <= float(s[1]) <= 1 for s in steps)
    assert (tmp_path / "c.png").stat().st_size > 5000 and (tmp_path / "page" / "curves.png").stat().st_size > 5000
    assert "![Verification vs attack steps](page/curves.png)" in (tmp_path / "page.md").read_text()
    empty = cli(["report", str(tmp_path / "nothing")])
    assert empty.code == 2 and "no results.json" in empty.stderr


def test_console_script_runs_from_outside_the_checkout(cli_env, tmp_path):
    script = Path(sys.executable).parent / "adaptguard"
    assert script.is_file(), "the adaptguard console script is installed with the package"
    args = [str(script), "run", "model=pixel_micro", "defense=backdoor", "attack=lora", "defense.steps=5",
            "defense.num_samples=4", "attack.steps=2", "eval.fid=null", "logger=none", "progress=false"]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = (tmp_path / "outputs").rglob("results.json")  # the run directory is under the working directory
    result = json.loads(results.read_text())
    assert result["run"]["defense"] == "backdoor" and result["attacks"]["attacker"]["model"]["verification"]
    assert "adaptguard | model=pixel_micro" in proc.stdout
