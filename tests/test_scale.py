"""Beyond one process: a submitit sweep, one GPU per parallel local job (devices faked through
CUDA_VISIBLE_DEVICES). DDP: tests/test_ddp.py."""

import copy
import json
import threading

from adaptguard.cli.config import compose
from adaptguard.cli.gpus import own_gpu, wants_own_gpu
from tests.helpers import cli

# the latent micro model at few samples and sampler steps
MICRO = ["model=micro", "model.sampler.steps=3", "eval.fid.num_samples=16", "eval.fid.kid_subset_size=8",
         "eval.fid.kid_subsets=2", "eval.grid_samples=4", "eval.quality_of_base=false"]  # fmt: skip


def test_a_submitit_sweep_runs_both_jobs_and_its_logs_hold_no_secret(cli_env, tmp_path):
    """hydra/launcher=submitit_local: two jobs over the key seed; the launcher's log, the jobs' logs and their
    run folders never show a seed, and submitit's folder (its pickles carry the overrides) is owner-only."""
    seeds = ("7391173", "7391179")
    result = cli(["run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *MICRO,
                  "defense=backdoor", "defense.steps=2", "defense.num_samples=4", "attack=none", f"defense.key_seed={','.join(seeds)}",
                  "eval.fid=null", "logger=none", "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"])  # fmt: skip
    assert result.code == 0, result.stderr[-2000:]
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        assert json.loads((sweep / job / "results.json").read_text())["status"] == "ok"
    logs = [p for p in (sweep / ".submitit").rglob("*") if p.suffix in (".out", ".err")]
    assert len(logs) >= 2
    texts = [result.stdout + result.stderr] + [p.read_text(errors="replace") for p in logs]
    texts += [p.read_text(errors="replace") for p in sweep.rglob("*") if p.suffix in (".log", ".yaml", ".json")]
    assert "defense.key_seed=<redacted>" in texts[0]
    assert not [t for t in texts if any(s in t for s in seeds)]
    assert (sweep / ".submitit").stat().st_mode & 0o077 == 0


def test_each_parallel_local_job_claims_its_own_gpu(tmp_path, monkeypatch):
    """Jobs of a joblib sweep with two GPUs listed in CUDA_VISIBLE_DEVICES: concurrent jobs get different devices
    (each from its job number, or the next free one), and a third waits for a GPU instead of sharing one."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    cfg = compose(["model=micro"])
    assert wants_own_gpu(cfg, "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher")
    assert not wants_own_gpu(cfg, "hydra._internal.core_plugins.basic_launcher.BasicLauncher")
    jobs = [copy.deepcopy(cfg) for _ in range(4)]
    with own_gpu(jobs[0], 2, tmp_path), own_gpu(jobs[1], 4, tmp_path):  # both prefer GPU 0: the second takes 1
        assert [(j.device, list(j.trainer.devices)) for j in jobs[:2]] == [("cuda:0", [0]), ("cuda:1", [1])]
        held = own_gpu(jobs[3], 1, tmp_path)
        waiting = threading.Thread(target=held.__enter__, daemon=True)
        waiting.start()
        waiting.join(timeout=3)
        assert waiting.is_alive() and jobs[3].device == "auto"  # every GPU held: it waits, not shares
    waiting.join(timeout=30)
    assert not waiting.is_alive() and jobs[3].device == "cuda:1"  # and takes its own once it is free
    with own_gpu(jobs[2], 3, tmp_path):  # job 3 prefers GPU 1, which the waiting job now holds
        assert jobs[2].device == "cuda:0"
    held.__exit__(None, None, None)
