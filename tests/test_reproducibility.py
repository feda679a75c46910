"""Same seed, same decision: every defense run twice on two empty caches gives the same numbers and verdicts.

A cache filled by one run must be exactly what another machine (or an emptied cache) would rebuild, or a
sweep's verdicts depend on what happened to be cached. Everything that is drawn (keys, masks, probe data
order, random keys of the decision, sampling noise) comes from the run's seed.
"""

import json

import pytest

from tests.helpers import cli

COMMON = ["model=micro", "attack=full", "attack.steps=2", "attack.batch_size=4", "model.sampler.steps=3",
          "eval.fid.num_samples=8", "eval.fid.kid_subset_size=4", "eval.fid.kid_subsets=2", "eval.grid_samples=4",
          "logger=none", "progress=false"]  # fmt: skip
FREEZE = ["experiment=freeze", "attack=full", "attack.steps=2", "attack.batch_size=4"] + [
    f"dataset.splits.{s}.size=32" for s in ("illegal", "legal", "attacker_illegal", "attacker_legal")
]
AIAO = ["defense.steps=4", "defense.batch_size=4", "defense.probe_steps=2", "defense.num_subpaths=8",
        "defense.null_keys=4"]  # fmt: skip
DEFENSES = {
    "backdoor": ["defense=backdoor", "defense.steps=4", "defense.batch_size=4", "defense.num_samples=4",
                 "defense.null_keys=7"],
    "aiao": ["defense=aiao", *AIAO],
    "aiao_busy": ["defense=aiao_busy", *AIAO],
    "sleepermark": ["defense=sleepermark", "defense.steps=4", "defense.batch_size=4", "defense.codec.steps=8",
                    "defense.codec.batch_size=8", "defense.codec.bits=16", "defense.num_samples=4",
                    "defense.null_messages=7"],
    "freezeasguard": [*FREEZE, "defense=freezeasguard", "defense.user_steps=2", "defense.steps=3",
                      "defense.batch_size=4", "defense.user_batch_size=4"],
    "random_freeze": [*FREEZE, "defense=random_freeze"],
}  # fmt: skip
# what a run records about when, where and how fast it ran: everything else must be equal
RUN_FACTS = {"finished", "out_dir", "torch_threads", "protection"}  # protection: salted per cache


def comparable(results: dict) -> dict:
    """Everything but wall times and what says where and when the run happened."""
    out = {k: v for k, v in results.items() if k not in ("stages", "files", "cached")}
    out["run"] = {k: v for k, v in results["run"].items() if k not in RUN_FACTS}
    out["attacks"] = {d: {**a, "cost": {k: v for k, v in a["cost"].items() if k != "step_time_s"}}
                      for d, a in results["attacks"].items()}  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize("defense", list(DEFENSES))
def test_two_empty_caches_give_the_same_numbers_and_decisions(defense, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    runs = []
    for name in ("a", "b"):
        monkeypatch.setenv("ADAPTGUARD_CACHE", str(tmp_path / f"cache_{name}"))
        result = cli(["run", *COMMON, *DEFENSES[defense], f"hydra.run.dir={tmp_path / name}"])
        assert result.code == 0, result.stderr[-3000:]
        runs.append(json.loads((tmp_path / name / "results.json").read_text()))
    a, b = runs
    assert a["cached"] == b["cached"] == []  # both computed everything
    assert comparable(a) == comparable(b)
    verdicts = [m["verification"] for m in (a["base"], a["protected"], *(x["model"] for x in a["attacks"].values()))]
    if defense in ("freezeasguard", "random_freeze"):
        assert all(v is None for v in verdicts) and a["summary"]["frozen_tensors_ratio"] > 0
    else:  # the decisions are among what was compared, and they were made
        assert all(isinstance(v["detected"], bool) and 0 < v["p_value"] <= 1 for v in verdicts)
