"""Comparisons across seeds: the compare_watermarks preset on the micro model, the seed-averaged results
page, its refusal to average different experiments, and the wandb names, group and summary table."""

import csv
import json
import math
import re
import shutil

import pytest

from adaptguard.metrics.stats import SeedInterval
from adaptguard.reporting.headline import NAMES, headline
from adaptguard.reporting.results import RunResult
from adaptguard.reporting.seeds import MixedConfigsError, aggregate, group_by_config
from tests.helpers import REPO, assert_secrets_only_in_owner_only_keys, cli

KEY_SEED = "918273645"
# the preset's watermarks without its ablation (aiao_busy runs in test_latent and test_reproducibility)
DEFENSES = ("backdoor", "aiao", "sleepermark")
STEPS = [  # compare_watermarks at reduced steps: those defenses, a training and a weight attack
    "++per_option.defense.backdoor={steps: 10, num_samples: 8, null_keys: 15}",
    "++per_option.defense.aiao={steps: 5, probe_steps: 2, num_subpaths: 16, null_keys: 4}",
    "++per_option.defense.sleepermark={steps: 5, num_samples: 8, null_messages: 15, codec: {steps: 20}}",
    "++per_option.attack.full.steps=3",
    "eval.fid.num_samples=8", "eval.fid.kid_subset_size=4", "eval.fid.kid_subsets=2", "eval.grid_samples=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def micro_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(tmp / "cache"))
        m.setenv("WANDB_DIR", str(tmp))
        m.delenv("WANDB_MODE", raising=False)
        result = cli(["run", "-m", "experiment=compare_watermarks", "model=micro", "seed=0,1", "attack=full,prune",
                      f"defense={','.join(DEFENSES)}",
                      "logger=wandb", "progress=false", f"defense.key_seed={KEY_SEED}", *STEPS,
                      f"hydra.sweep.dir={tmp}/sweep"])  # fmt: skip
    assert result.code == 0, result.stderr[-4000:]
    assert KEY_SEED not in result.stdout + result.stderr  # the launcher's job lines are redacted too
    return tmp / "sweep"


@pytest.mark.slow
def test_compare_watermarks_runs_on_micro_and_the_page_averages_its_seeds(micro_sweep, tmp_path):
    runs = [RunResult.read(p) for p in sorted(micro_sweep.glob("*/results.json"))]
    combos = {(r.run.defense, r.run.attack, r.run.seed) for r in runs}
    assert combos == {(d, a, s) for d in DEFENSES for a in ("full", "prune")
                      for s in (0, 1)}  # fmt: skip
    leaks = [p for p in micro_sweep.rglob("*") if p.is_file() and KEY_SEED.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert_secrets_only_in_owner_only_keys(micro_sweep.parent / "cache", KEY_SEED)
    # a defense's jobs of one seed share one protection: 3 defenses x 2 seeds keys
    assert len(list((micro_sweep.parent / "cache" / "protected").glob("*/key.pt"))) == 6
    groups = group_by_config(runs)
    assert len(groups) == 6 and all(g.seeds == [0, 1] for g in groups)
    for g in groups:  # the mean and t interval of two seeds, from each seed's own number
        rates = [headline(r)["verify/rate_after"] for r in g.runs]
        s = g.stats["verify/rate_after"]
        half = 12.706 * abs(rates[0] - rates[1]) / 2  # t(0.975, 1) * sd / sqrt(n), sd = |a - b| / sqrt(2)
        assert (
            s.n == 2
            and s.mean == pytest.approx(sum(rates) / 2)
            and s.high - s.mean == pytest.approx(half, rel=1e-3, abs=1e-9)
        )
    page = cli(["report", str(micro_sweep), "--out", str(tmp_path / "results")])
    assert page.code == 0, page.stderr
    text = (tmp_path / "results.md").read_text()
    assert "python -m experiments.run -m experiment=compare_watermarks model=micro seed=0,1 attack=full,prune" in text
    assert KEY_SEED not in text and "defense.key_seed=<redacted>" in text
    rows = [line for line in text.splitlines() if line.startswith(tuple(f"| {d} ×" for d in DEFENSES))]
    assert len(rows) == 6 and all(" | 0 1 | " in r and "0: " in r and "1: " in r for r in rows)
    models = [line for line in text.splitlines() if line.startswith(tuple(f"| {d} |" for d in DEFENSES))]
    assert len(models) == 3 and all(" | 0 1 | 1 | " in r for r in models)  # a protected model once, not per attack
    with (tmp_path / "results" / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 6 and {r["seeds"] for r in summary} == {"0 1"}
    means = {(g.defense, g.attack): g.stats["verify/rate_after"].mean for g in groups}
    assert {(r["defense"], r["attack"]): float(r["verify/rate_after mean"]) for r in summary} == pytest.approx(means)
    pngs = {p.name: p.stat().st_size for p in (tmp_path / "results").glob("*.png")}
    assert set(pngs) == {"robustness_vs_cost.png", "image_attacks.png"} and min(pngs.values()) > 5000


@pytest.mark.slow
def test_a_later_sweep_without_image_attacks_does_not_hide_the_heatmap(micro_sweep, tmp_path):
    """The page's curves sweep runs no image attacks; the heatmap once took each defense's last group, so
    listing that sweep after compare_watermarks left it empty."""
    curves, watermarks = tmp_path / "curves", set()
    for path in sorted(micro_sweep.glob("*/results.json")):  # a later experiment of each output watermark
        record = json.loads(path.read_text())
        if (
            record["protected"]["image_attacks"]
            and record["run"]["attack"] == "full"
            and record["run"]["defense"] not in watermarks
        ):
            watermarks.add(record["run"]["defense"])
            record["protected"]["image_attacks"] = {}
            record["config"]["experiment"]["attack"]["steps"] = 100
            shutil.copytree(path.parent, curves / path.parent.name, ignore=shutil.ignore_patterns("wandb"))
            (curves / path.parent.name / "results.json").write_text(json.dumps(record))
    assert watermarks == {"backdoor", "sleepermark"}
    page = cli(["report", str(micro_sweep), str(curves), "--out", str(tmp_path / "results")])
    assert page.code == 0, page.stderr
    text = (tmp_path / "results.md").read_text()
    assert all(text.count(f"| {w} × full (steps=100) | 0 |") == 1 for w in watermarks)
    assert "](results/image_attacks.png)" in text and "**Warning:**" not in text  # no image attacks is no conflict
    assert (tmp_path / "results" / "image_attacks.png").stat().st_size > 5000


def _copy_as_another_sweep(micro_sweep, folder, edit):
    """Seed 0's full fine-tunes of ``micro_sweep`` as a second sweep whose shared settings differ: the same
    protected models, evaluated again by another experiment (``edit`` changes each record)."""
    jobs = {}
    for path in sorted(micro_sweep.glob("*/results.json")):
        record = json.loads(path.read_text())
        if record["run"]["seed"] == 0 and record["run"]["attack"] == "full":
            experiment = record["config"]["experiment"]
            experiment["eval"]["image_attacks"], experiment["eval"]["at_steps"] = [], [0, 3]
            experiment["attack"]["steps"] = 100
            record["protected"]["image_attacks"] = {}
            edit(record)
            shutil.copytree(path.parent, folder / path.parent.name, ignore=shutil.ignore_patterns("wandb"))
            (folder / path.parent.name / "results.json").write_text(json.dumps(record))
            jobs[record["run"]["defense"]] = folder / path.parent.name
    return jobs


@pytest.mark.slow
def test_merged_sweeps_read_as_comparisons_with_short_labels_per_seed_decisions_and_one_number_per_model(
    micro_sweep, tmp_path, monkeypatch
):
    from matplotlib.text import Text

    from adaptguard.reporting import figures
    from adaptguard.reporting.page import write_page

    runs = [RunResult.read(p) for p in sorted(micro_sweep.glob("*/results.json"))]
    assert runs[0].report["defense"].options and "rho" not in runs[0].report["defense"].options  # the class's
    other = _copy_as_another_sweep(micro_sweep, tmp_path / "other", lambda record: None)
    texts, legends, save = {}, {}, figures._save

    def spy(fig, plt, path):  # every text a PNG shows, and its legends' entries
        texts[path.name] = [t.get_text() for t in fig.findobj(Text) if t.get_text()]
        legends[path.name] = [len(leg.legend_handles) for leg in fig.legends]
        return save(fig, plt, path)

    monkeypatch.setattr(figures, "_save", spy)
    page = write_page([micro_sweep, tmp_path / "other"], tmp_path / "results")
    text = page.markdown.read_text()
    assert "## Comparison 1. sweep" in text and "## Comparison 2. other" in text
    first_cells = [line.split(" | ")[0][2:] for line in text.splitlines()
                   if line.startswith("| ") and not line.startswith(("| `", "| setting"))]  # fmt: skip
    assert first_cells and max(map(len, first_cells)) <= 60, max(first_cells, key=len)
    assert "| backdoor × full | 0 |" in text  # the second comparison: only defense × attack vary in it
    with (tmp_path / "results" / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 9 and max(len(r["group"]) for r in summary) <= 60
    assert len({(r["comparison"], r["group"]) for r in summary}) == 9  # unique within a comparison
    assert {"robustness_vs_cost.png", "image_attacks.png"} <= set(texts)
    too_long = [t for ts in texts.values() for t in ts if len(t) > 60]
    assert not too_long, too_long
    assert legends["robustness_vs_cost.png"] == [3, 2]  # a colour per defense, a marker per attack: not per point
    assert all((tmp_path / "results" / name).stat().st_size > 5000 for name in texts)
    # per-seed decisions, before (protected models) and after the attack
    decided = [line for line in text.splitlines() if line.startswith(tuple(f"| {d} " for d in DEFENSES))]
    assert all(re.search(r"0: (yes|no) \d\.\d\d \[", line) for line in decided), decided
    assert "detected before" in text and "detected after" in text
    # one protected model, one row: both sweeps' jobs of each defense's seed 0 share it
    models = [line for line in text.splitlines() if line.startswith(tuple(f"| {d} |" for d in DEFENSES))]
    assert len(models) == 3 and all(" | 0 1 | 1, 2 | " in r for r in models), models
    assert "**Warning:**" not in text
    # a second job that read another number for the same protected model is named, not averaged away
    for job in other.values():
        shutil.rmtree(job)
    other = _copy_as_another_sweep(micro_sweep, tmp_path / "other", lambda r: r["protected"]["verification"].update(
        rate=r["protected"]["verification"]["rate"] / 2 + 0.01))  # fmt: skip
    text = write_page([micro_sweep, tmp_path / "other"], tmp_path / "results").markdown.read_text()
    warnings = [line for line in text.splitlines() if line.startswith("**Warning:**")]
    assert len(warnings) == 3 and all(sum(str(job) in w for w in warnings) == 1 for job in other.values()), warnings
    assert all("`verify/rate_before`" in w and "seed 0" in w for w in warnings)
    models = [line for line in text.splitlines() if line.startswith(tuple(f"| {d} |" for d in DEFENSES))]
    assert len(models) == 3 and all(" ⚠ |" in line for line in models)  # the cell says it, too


@pytest.mark.slow
def test_report_refuses_to_average_jobs_that_differ_beyond_the_seed(micro_sweep, tmp_path):
    pair = [RunResult.read(micro_sweep / job / "results.json") for job in ("0", "1")]
    assert {r.run.seed for r in pair} == {0, 1} and aggregate(pair).stats["verify/rate_before"].n == 2
    changed = tmp_path / "changed"
    shutil.copytree(micro_sweep / "1", changed, ignore=shutil.ignore_patterns("wandb"))
    record = json.loads((changed / "results.json").read_text())
    record["config"]["experiment"]["attack"]["lr"] = 0.5
    (changed / "results.json").write_text(json.dumps(record))
    other = RunResult.read(changed / "results.json")
    with pytest.raises(MixedConfigsError, match=r"differ in attack\.lr \(0\.0001 vs 0\.5\), not only in the seed"):
        aggregate([pair[0], other])
    assert [g.seeds for g in group_by_config([pair[0], other])] == [[0], [1]]  # two experiments, one seed each
    with pytest.raises(MixedConfigsError, match="seed 0 appears twice"):
        aggregate([pair[0], pair[0]])


@pytest.mark.slow
def test_sweep_runs_log_named_metrics_in_one_wandb_group_and_the_report_logs_a_table(micro_sweep):
    for job in ("0", "5"):
        [record] = (micro_sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        data = record.read_bytes()
        result = RunResult.read(micro_sweep / job / "results.json")
        assert all(name.encode() in data for name in headline(result)), "every headline number is logged"
        assert str(micro_sweep).encode() in data and result.run.sweep == str(micro_sweep)  # the sweep's group
        assert KEY_SEED.encode() not in data
    report = cli(["report", str(micro_sweep), "--wandb"])
    assert report.code == 0, report.stderr
    [table] = (micro_sweep / "wandb").glob("offline-run-*/files/media/table/summary_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][:4] == ["group", "defense", "attack", "seeds"] and len(content["data"]) == 6
    assert "verify/rate_after mean" in content["columns"]
    [run_file] = (micro_sweep / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"summary-" in run_file.read_bytes() and str(micro_sweep).encode() in run_file.read_bytes()


def test_seed_interval_is_the_t_interval_and_needs_two_values():
    s = SeedInterval.of([0.875, 0.703, 0.80])
    assert s.n == 3 and s.mean == pytest.approx(0.7927, abs=1e-4)
    assert (s.high - s.low) / 2 == pytest.approx(4.303 * s.sd / math.sqrt(3), rel=1e-3)
    one = SeedInterval.of([0.5])
    assert one.n == 1 and one.low is None and one.high is None


def test_every_headline_name_is_documented_in_docs_wandb():
    doc = (REPO / "docs" / "wandb.md").read_text()
    assert all(f"`{name}`" in doc for name in NAMES), [n for n in NAMES if f"`{n}`" not in doc]
