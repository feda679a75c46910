"""The typed results of one experiment, as written to ``results.json`` (schema in docs/results-schema.md).

Every evaluated model gets a :class:`ModelReport`: the base model (never watermarked, so its
verification with the owner's key is the false-positive control), the protected model, and one
attacked model per attack run (:class:`AttackReport`; a plain experiment has one, ``eval.adaptation``
one per domain). Reports read files of schema 1 too (:meth:`RunResult.from_dict` upgrades them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adaptguard.core.verification import Verification
from adaptguard.metrics.paired import PairedDelta
from adaptguard.metrics.quality import QualityReport
from adaptguard.metrics.stats import tpr_at_fpr

SCHEMA_VERSION = 2


@dataclass
class TprAtFpr:
    """Share of trials above a threshold calibrated on the never-watermarked model's scores only."""

    tpr: float
    ci: tuple[float, float] | None = None
    threshold: float | None = None
    achieved_fpr: float | None = None
    n_null: int | None = None
    underpowered: bool | None = None  # fewer null scores than 1/fpr: the threshold is max(null)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TprAtFpr:
        return cls(**{**d, "ci": tuple(d["ci"]) if d.get("ci") is not None else None})


@dataclass
class VerificationReport:
    """A :class:`Verification` without its per-trial scores, plus TPR at the run's target FPRs."""

    detected: bool
    rate: float
    ci: tuple[float, float] | None = None
    trials: int | None = None
    successes: int | None = None
    p_value: float | None = None
    trial_threshold: float | None = None
    statistic: str | None = None
    mean_score: float | None = None
    figures: dict[str, float] = field(default_factory=dict)  # the defense's own headline numbers
    details: dict[str, Any] = field(default_factory=dict)
    tpr_at_fpr: dict[str, TprAtFpr] = field(default_factory=dict)  # keyed by the FPR, as a string

    @classmethod
    def of(cls, v: Verification, null: Verification | None, fprs: Sequence[float]) -> VerificationReport:
        """``null``: the never-watermarked model verified with the same key (thresholds come from it)."""
        tpr: dict[str, TprAtFpr] = {}
        if null is not None:
            pool = null.scores + null.null_scores
            for fpr in fprs:
                r = tpr_at_fpr(v.scores, pool, fpr)
                tpr[str(fpr)] = TprAtFpr(r.tpr, r.ci, r.threshold, r.achieved_fpr, r.n_null, r.underpowered)
        s = v.summary()
        return cls(
            detected=s["detected"], rate=s["rate"], ci=tuple(s["ci"]), trials=s["trials"], successes=s["successes"],
            p_value=s["p_value"], trial_threshold=s["trial_threshold"], statistic=s["statistic"],
            mean_score=s["mean_score"], figures=dict(s["figures"]), details=dict(s["details"]), tpr_at_fpr=tpr,
        )  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VerificationReport:
        d = dict(d)
        d["tpr_at_fpr"] = {k: TprAtFpr.from_dict(v) for k, v in (d.get("tpr_at_fpr") or {}).items()}
        d["ci"] = tuple(d["ci"]) if d.get("ci") is not None else None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ModelReport:
    """What was measured on one model."""

    verification: VerificationReport | None = None
    image_attacks: dict[str, VerificationReport] = field(default_factory=dict)  # transform label -> verification
    quality: dict[str, QualityReport] = field(default_factory=dict)  # domain -> FID/KID
    # domain -> metric (fid, kid, fidelity/<what>) -> this model minus the one it was made from (protected:
    # the base; attacked: the protected model), image by image, with a bootstrap interval
    paired: dict[str, dict[str, PairedDelta]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ModelReport:
        d = d or {}
        ver = d.get("verification")
        return cls(
            verification=VerificationReport.from_dict(ver) if ver else None,
            image_attacks={k: VerificationReport.from_dict(v) for k, v in (d.get("image_attacks") or {}).items()},
            quality={k: QualityReport(**v) for k, v in (d.get("quality") or {}).items()},
            paired={
                dom: {k: PairedDelta.from_dict(v) for k, v in m.items()} for dom, m in (d.get("paired") or {}).items()
            },
        )


@dataclass
class CurvePoint:
    """The attacked model at one fine-tuning step (``eval.at_steps``)."""

    step: int
    verification: VerificationReport | None = None
    quality: dict[str, QualityReport] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CurvePoint:
        m = ModelReport.from_dict(d)
        return cls(step=int(d["step"]), verification=m.verification, quality=m.quality)


@dataclass
class AttackReport:
    """One run of the attack from the protected model: trained on ``train_split``, scored on ``domain``."""

    domain: str
    train_split: str | None
    eval_split: str | None
    model: ModelReport
    cost: dict[str, Any] = field(default_factory=dict)  # trainable parameters, step time, ...
    curve: list[CurvePoint] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttackReport:
        return cls(
            domain=d["domain"],
            train_split=d.get("train_split"),
            eval_split=d.get("eval_split"),
            model=ModelReport.from_dict(d.get("model")),
            cost=dict(d.get("cost") or {}),
            curve=[CurvePoint.from_dict(p) for p in d.get("curve") or []],
        )


@dataclass
class RunInfo:
    model: str
    dataset: str
    defense: str
    attack: str
    seed: int
    finished: str = ""
    out_dir: str = ""
    device: str = ""
    torch_threads: int = 0
    sweep: str = ""  # the sweep directory this job belongs to ("" for a single run)
    # the protected model's artifact id (a hash of what determines it, no secret): jobs with the same id
    # evaluated the same protected model, so their numbers for it are one measurement
    protection: str = ""


@dataclass
class ReportSettings:
    """How a results page shows a defense or attack, as its class declares (``report_options``,
    ``report_reference``): recorded with the run so ``adaptguard report`` needs only the files."""

    options: list[str] = field(default_factory=list)  # option keys its settings row shows (``codec.steps``)
    reference: bool = False  # the unconstrained control other defenses' attack-domain FID is measured against

    @classmethod
    def of(cls, obj: object) -> ReportSettings:
        """What ``obj``'s class (a Defense or Attack, or the class itself) declares."""
        return cls(list(getattr(obj, "report_options", ())), bool(getattr(obj, "report_reference", False)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReportSettings:
        return cls(list(d.get("options") or []), bool(d.get("reference", False)))


@dataclass
class RunResult:
    run: RunInfo
    status: str = "ok"  # ok | failed | interrupted
    error: dict[str, Any] | None = None  # failed / interrupted: message, stage, type, exit_code
    config: dict[str, Any] = field(default_factory=dict)  # defense and attack configs, secrets redacted
    summary: dict[str, Any] = field(default_factory=dict)  # the defense's headline facts (Defense.summary)
    protect: dict[str, Any] = field(default_factory=dict)  # what protecting reported (losses, steps, ...)
    base: ModelReport = field(default_factory=ModelReport)
    protected: ModelReport = field(default_factory=ModelReport)
    attacks: dict[str, AttackReport] = field(default_factory=dict)  # keyed by domain
    notes: list[str] = field(default_factory=list)  # settings that did not apply, and why
    data: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)  # wall time and peak memory per stage
    files: dict[str, str] = field(default_factory=dict)  # sample grids and plots, relative to the run dir
    cached: list[str] = field(default_factory=list)  # evaluations read from the cache (eval.cache), e.g. verify_base
    # the code that ran: fingerprint of the source, git commit (and whether the checkout had edits), libraries
    provenance: dict[str, Any] = field(default_factory=dict)
    # {defense, attack}: what their classes declare for results pages; {} in files written before it
    report: dict[str, ReportSettings] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def models(self) -> dict[str, ModelReport]:
        """Every evaluated model by column name: base, protected, attacked (or ``attacked: <domain>``)."""
        out = {"base": self.base, "protected": self.protected}
        for domain, a in self.attacks.items():
            out["attacked" if len(self.attacks) == 1 else f"attacked: {domain}"] = a.model
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / "results.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunResult:
        if d.get("schema_version", 1) < 2:
            d = upgrade_v1(d)
        return cls(
            run=RunInfo(**{k: v for k, v in d["run"].items() if k in RunInfo.__dataclass_fields__}),
            status=d.get("status", "ok"),
            error=d.get("error"),
            config=dict(d.get("config") or {}),
            summary=dict(d.get("summary") or {}),
            protect=dict(d.get("protect") or {}),
            base=ModelReport.from_dict(d.get("base")),
            protected=ModelReport.from_dict(d.get("protected")),
            attacks={k: AttackReport.from_dict(v) for k, v in (d.get("attacks") or {}).items()},
            notes=list(d.get("notes") or []),
            data=dict(d.get("data") or {}),
            stages=dict(d.get("stages") or {}),
            files=dict(d.get("files") or {}),
            cached=list(d.get("cached") or []),
            provenance=dict(d.get("provenance") or {}),
            report={k: ReportSettings.from_dict(v) for k, v in (d.get("report") or {}).items()},
        )

    @classmethod
    def read(cls, path: Path) -> RunResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def failure(cls, run: RunInfo, err: BaseException, stage: str, message: str | None = None,
                stages: dict[str, Any] | None = None, code: int | None = None) -> RunResult:  # fmt: skip
        """What a run that stopped early writes: why, where, with which exit code; never metrics."""
        import datetime as dt

        from adaptguard.core.errors import RunInterrupted, exit_code

        status = "interrupted" if isinstance(err, RunInterrupted | KeyboardInterrupt) else "failed"
        code = code if code is not None else 130 if type(err) is KeyboardInterrupt else exit_code(err)
        error = {"message": message or str(err) or type(err).__name__, "stage": stage, "type": type(err).__name__,
                 "exit_code": code}  # fmt: skip
        run.finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return cls(run=run, status=status, error=error, stages=dict(stages or {}))


# ---------------------------------------------------------------------------------------- schema 1
def _v1_quality(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{fid_X, kid_X_mean, kid_X_std, num_samples}`` -> a QualityReport dict."""
    if not metrics:
        return None
    name = next((k for k in metrics if k.startswith("fid_")), None)
    if name is None:
        return None
    e = name[len("fid_") :]
    return {"extractor": e, "fid": metrics[name], "kid_mean": metrics.get(f"kid_{e}_mean", float("nan")),
            "kid_std": metrics.get(f"kid_{e}_std", float("nan")), "num_samples": metrics.get("num_samples", 0)}  # fmt: skip


def _v1_verification(summary: Any, tpr: Mapping[str, Any], stage: str) -> dict[str, Any] | None:
    if not isinstance(summary, Mapping):
        return None
    details = dict(summary.get("details") or {})
    figure_names = ("bit_accuracy", "untriggered_bit_accuracy", "untriggered_rate")
    figures = {k: details.pop(k) for k in figure_names if details.get(k) is not None}
    out = {k: v for k, v in summary.items() if k != "details"} | {"figures": figures, "details": details}
    out["tpr_at_fpr"] = {
        fpr: {"tpr": e[stage], "ci": e.get(f"{stage}_ci"), "threshold": e.get("threshold"),
              "achieved_fpr": e.get("achieved_fpr"), "n_null": e.get("n_null"), "underpowered": e.get("underpowered")}
        for fpr, e in (tpr or {}).items() if e.get(stage) is not None
    }  # fmt: skip
    return out


def _v1_model(d: Mapping[str, Any], stage: str | None, quality: Mapping[str, Any] | None) -> dict[str, Any]:
    ver = d.get("verification") or {}
    image = ver.get("image_attacks") if isinstance(ver.get("image_attacks"), Mapping) else {}
    return {
        "verification": _v1_verification(ver.get(stage), ver.get("tpr_at_fpr") or {}, stage) if stage else None,
        "image_attacks": {label: _v1_verification(s.get(stage), {}, stage) for label, s in image.items() if stage in s},
        "quality": {dom: q for dom, m in (quality or {}).items() if (q := _v1_quality(m))},
    }


def _v1_curve(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in points:
        v = p.get("verification")
        tpr = {f: {"tpr": t} for f, t in ((v or {}).get("tpr_at_fpr") or {}).items()}
        ver = (
            {**{k: v[k] for k in ("rate", "detected", "p_value", "mean_score") if k in v}, "tpr_at_fpr": tpr}
            if v
            else None
        )
        quality = {dom: q for dom, m in (p.get("quality") or {}).items() if (q := _v1_quality(m))}
        out.append({"step": p["step"], "verification": ver, "quality": quality})
    return out


def upgrade_v1(d: Mapping[str, Any]) -> dict[str, Any]:
    """A schema-1 results.json as schema 2 (what older sweeps left on disk)."""
    quality, curves = d.get("quality") or {}, d.get("curves") or {}
    attacks: dict[str, Any] = {}
    for dom, entry in (d.get("adaptation") or {}).items():
        model = _v1_model(d, f"after_attack_{dom}", quality.get(f"attacked_{dom}"))
        attacks[dom] = {"domain": dom, "train_split": entry.get("train_split"), "eval_split": entry.get("eval_split"),
                        "model": model, "cost": entry.get("attack") or {}, "curve": _v1_curve(curves.get(dom, []))}  # fmt: skip
    if not attacks and d["run"].get("attack", "none") != "none":
        dom = next((k for k in quality.get("attacked") or {} if k != "clean"), "attacker")
        model = _v1_model(d, "after_attack", quality.get("attacked"))
        attacks[dom] = {"domain": dom, "train_split": None, "eval_split": None, "model": model,
                        "cost": d.get("attack") or {}, "curve": _v1_curve(curves.get("attack", []))}  # fmt: skip
    mask = (d.get("protect") or {}).get("mask")
    rho = ((d.get("config") or {}).get("defense") or {}).get("rho")
    summary = {"rho": rho, "frozen_tensors_ratio": mask["ratio_by_tensors"],
               "frozen_params_ratio": mask["ratio_by_params"]} if mask else {}  # fmt: skip
    image_note = (d.get("verification") or {}).get("image_attacks")
    return {
        "schema_version": 1, "run": d["run"], "status": "ok", "config": d.get("config") or {}, "summary": summary,
        "protect": d.get("protect") or {}, "base": _v1_model(d, "never_watermarked", quality.get("base")),
        "protected": _v1_model(d, "before_attack", quality.get("protected")), "attacks": attacks,
        "notes": [f"eval.image_attacks: {image_note}"] if isinstance(image_note, str) else [],
        "data": d.get("data") or {}, "stages": d.get("stages") or {}, "files": d.get("files") or {},
    }  # fmt: skip
