"""The results page's readability rules on small hand-made results (no sweep): comparisons split by shared
settings, labels of at most 60 characters that name only what varies, one number per protected model, and
the defense / attack classes' declarations (with their fallback for files written before them)."""

import json

import pytest

from adaptguard.metrics.quality import QualityReport
from adaptguard.reporting.comparisons import MAX_LABEL, short_keys, split, unique_labels
from adaptguard.reporting.declared import declared
from adaptguard.reporting.headline import steps_to_removal
from adaptguard.reporting.page import write_page
from adaptguard.reporting.protected import protected_rows, warnings
from adaptguard.reporting.results import (
    AttackReport,
    CurvePoint,
    ModelReport,
    ReportSettings,
    RunInfo,
    RunResult,
    TprAtFpr,
    VerificationReport,
)
from adaptguard.reporting.seeds import group_by_config

IMAGE_ATTACKS = [{"name": "jpeg", "quality": 50}, {"kernel_size": 3, "name": "blur", "sigma": 4.0},
                 {"name": "resize", "scale": 0.5}, {"name": "noise", "std": 0.1}]  # fmt: skip


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def run(defense, attack, seed, rate=0.5, protection="", reference=False, sweep="a", fid=None, **settings):
    """A finished job: ``settings`` are dotted config keys (``defense__rho``), ``rate`` its rate before and after,
    ``fid`` its FID after the attack on its domain."""
    flat = {"model.name": "micro", "eval.image_attacks": [], "eval.at_steps": [], "defense.name": defense,
            "attack.name": attack, "attack.steps": 60, **{k.replace("__", "."): v for k, v in settings.items()}}  # fmt: skip
    v = VerificationReport(detected=rate > 0.2, rate=rate, ci=(max(rate - 0.1, 0), min(rate + 0.1, 1)),
                           tpr_at_fpr={"0.01": TprAtFpr(rate), "0.001": TprAtFpr(rate / 2)},
                           figures={"triggered_rate": 0.75, "untriggered_rate": 0.25} if defense == "aiao" else {})  # fmt: skip
    return RunResult(
        run=RunInfo(
            "micro",
            "shapes",
            defense,
            attack,
            seed,
            out_dir=f"/{sweep}/{defense}-{attack}-{seed}",
            protection=protection,
        ),  # fmt: skip
        config={"experiment": _nest(flat)},
        protected=ModelReport(verification=v),
        attacks={
            "attacker": AttackReport(
                "attacker",
                "attacker",
                None,
                ModelReport(
                    verification=None if fid else v,
                    quality={"attacker": QualityReport("x", fid, 0, 0, 8)} if fid else {},
                ),
            )
        },
        report={"defense": ReportSettings(["steps", "rho"], reference), "attack": ReportSettings(["steps"])},
    )


def two_sweeps():
    """A watermark sweep with image attacks, a freezing sweep over rho with its reference, and a curves sweep
    that reran the watermarks with other eval settings and longer attacks (the page's four sweeps, in small)."""
    runs = []
    for seed in (0, 1):
        for d in ("backdoor", "aiao"):
            for a in ("full", "prune"):
                runs.append(run(d, a, seed, protection=f"{d}{seed}", eval__image_attacks=IMAGE_ATTACKS))
            runs.append(run(d, "full", seed, protection=f"{d}{seed}", sweep="curves", eval__at_steps=[0, 50, 100],
                            attack__steps=100))  # fmt: skip
        for rho in (0.2, 0.5):
            runs.append(run("freezeasguard", "full", seed, protection=f"f{rho}{seed}", defense__rho=rho, fid=60 + rho * 100,
                            dataset__splits__attacker__where=["orange"] * 30))  # fmt: skip
        runs.append(
            run("none", "full", seed, reference=True, fid=50.0 + seed, dataset__splits__attacker__where=["orange"] * 30)
        )
    return runs


def test_merged_sweeps_become_comparisons_whose_labels_name_only_what_varies_inside_them():
    comparisons = split(group_by_config(two_sweeps()))
    assert len(comparisons) == 3
    labels = [set(c.labels) for c in comparisons]
    assert labels[0] == {"backdoor × full", "backdoor × prune", "aiao × full", "aiao × prune"}
    assert labels[1] == {"backdoor × full", "aiao × full"}  # attack.steps=100 sets the comparison apart
    assert labels[2] == {"freezeasguard × full (rho=0.2)", "freezeasguard × full (rho=0.5)", "none × full"}
    assert all(len(lab) <= MAX_LABEL for c in comparisons for lab in c.labels)
    assert set(comparisons[1].settings) >= {"eval.at_steps", "eval.image_attacks"}
    assert "dataset.splits.attacker.where" in comparisons[2].settings


def test_labels_stay_short_and_unique_when_values_are_long():
    long = {"defense.codec.distortions": json.dumps(IMAGE_ATTACKS)}
    labels = unique_labels(["sleepermark × dreambooth"] * 3, [{**long, "defense.x": "1"}, long, long])
    assert all(len(lab) <= MAX_LABEL for lab in labels) and len(set(labels)) == 3, labels
    assert labels[0].startswith("sleepermark × dreambooth (distortions=") and "…" in labels[0]
    assert short_keys(["defense.steps", "attack.steps", "defense.codec.lr"]) == {
        "defense.steps": "defense.steps", "attack.steps": "attack.steps", "defense.codec.lr": "lr"}  # fmt: skip


def test_one_protected_model_gives_one_number_and_a_disagreement_is_named():
    runs = two_sweeps()
    rows = protected_rows(split(group_by_config(runs)))
    backdoor = [r for r in rows if r.defense == "backdoor"]
    # three comparisons' jobs, two protected models: one row, each model once
    assert len(backdoor) == 1 and backdoor[0].seeds == [0, 1] and backdoor[0].comparisons == [1, 2]
    assert backdoor[0].stats["verify/rate_before"].n == 2
    assert not warnings(rows)
    curves_job = next(r for r in runs if r.run.defense == "backdoor" and r.run.seed == 0 and r.run.attack == "full"
                      and r.config["experiment"]["attack"]["steps"] == 100)  # fmt: skip
    curves_job.protected.verification.rate = 0.109  # the same model read 0.094 in one table, 0.109 in another
    rows = protected_rows(split(group_by_config(runs)))
    [line] = warnings(rows)
    assert "seed 0" in line
    assert (
        "`verify/rate_before` 0.5 (/a/backdoor-full-0, /a/backdoor-prune-0) vs 0.109 (/curves/backdoor-full-0)" in line
    )
    assert "eval.at_steps" in line  # what else differs between the two jobs
    assert next(r for r in rows if r.defense == "backdoor").conflicting("verify/rate_before")


def test_the_page_shows_each_seed_decision_tpr_and_the_reference_without_naming_defenses(tmp_path):
    for i, r in enumerate(two_sweeps()):
        job = tmp_path / "sweep" / str(i)
        job.mkdir(parents=True)
        r.write(job)
    page = write_page([tmp_path / "sweep"], tmp_path / "results")
    text = page.markdown.read_text()
    assert text.count("| backdoor | 0 1 | 1, 2 |") == 1  # the protected model's row, once
    assert "0: yes 0.50 [0.40, 0.60]; 1: yes 0.50 [0.40, 0.60]" in text
    assert "TPR@FPR 0.01" in text and "TPR@FPR 0.001" in text
    # a paired decision's controls stand beside its rate: the unpaired (triggered) and the untriggered rate
    assert "| rate after | triggered rate after | untriggered rate after | detected after |" in text
    assert "| aiao × full | 0 1 | 0.500 ± 0.000 | 0.750 ± 0.000 | 0.250 ± 0.000 | 2/2 |" in text
    assert "| backdoor × full | 0 1 | 0.500 ± 0.000 | - | - | 2/2 |" in text
    assert "against the unconstrained reference (none)" in text and "| attacker FID change % |" in text
    assert "| freezeasguard × full (rho=0.2) | 0 1 | 58.4 ± 19.9 |" in text  # (80 / 50, 80 / 51) - 1
    assert "| `defense=freezeasguard` | steps=- " not in text and "rho=0.2 / 0.5" in text
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| `"):
            assert len(line.split(" | ")[0]) - 2 <= MAX_LABEL, line


def test_steps_to_removal_is_the_first_undetected_curve_step_per_seed(tmp_path):
    """RoMa's number: along each seed's attack curve, the first step no longer detected, or "> N"."""
    for seed, detected in ((0, [True, False, True]), (1, [True, True, True])):
        r = run("backdoor", "full", seed, eval__at_steps=[0, 50, 100])
        r.attacks["attacker"].curve = [CurvePoint(step, VerificationReport(detected=d, rate=0.5 if d else 0.0))
                                       for step, d in zip([0, 50, 100], detected, strict=True)]  # fmt: skip
        assert steps_to_removal(r) == {"attacker": "50" if seed == 0 else "> 100"}
        job = tmp_path / "sweep" / str(seed)
        job.mkdir(parents=True)
        r.write(job)
    text = write_page([tmp_path / "sweep"], tmp_path / "results").markdown.read_text()
    assert "steps to removal (per seed)" in text and "| 0: 50; 1: > 100 |" in text
    assert steps_to_removal(run("backdoor", "full", 0)) == {}  # no curve, no number


def test_report_settings_come_from_the_file_or_for_older_files_from_the_recorded_class():
    new = run("none", "full", 0, reference=True)
    assert declared(new, "defense").reference and declared(new, "attack").options == ["steps"]
    old = RunResult.from_dict({**json.loads(json.dumps(new.to_dict(), default=str)), "report": {}})
    old.config["experiment"]["defense"]["_target_"] = "adaptguard.defenses.none.NoDefense"
    old.config["experiment"]["attack"]["_target_"] = "adaptguard.attacks.perturb.MagnitudePrune"
    assert declared(old, "defense").reference and declared(old, "attack").options == ["ratio"]
    old.config["experiment"]["defense"]["_target_"] = "somewhere.else.Defense"  # never imported
    assert not declared(old, "defense").reference and declared(old, "defense").options == ["steps", "batch_size", "lr"]


@pytest.mark.parametrize("section", ["defense", "attack"])
def test_every_class_declares_options_it_has(section):
    """A declared option that is no field of its class would silently show nothing on the page (the library's
    classes; one defined elsewhere may inherit the base's default and lack those fields: they are skipped)."""
    import dataclasses
    import importlib
    import inspect
    import pkgutil

    import adaptguard.attacks
    import adaptguard.defenses
    from adaptguard.attacks.base import Attack
    from adaptguard.defenses.base import Defense

    package, base = (adaptguard.defenses, Defense) if section == "defense" else (adaptguard.attacks, Attack)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    classes = [c for c in _subclasses(base) if dataclasses.is_dataclass(c) and not inspect.isabstract(c)
               and c.__module__.startswith(package.__name__)]  # fmt: skip
    assert len(classes) >= 6
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        for option in cls.report_options:
            head, _, rest = option.partition(".")
            assert head in names, f"{cls.__name__}.report_options: {option} is not a field"


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
