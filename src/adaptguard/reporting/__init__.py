"""Results of experiments: the typed results.json, the printed table, plots, logger output, sweep tables."""

from adaptguard.reporting.results import (
    SCHEMA_VERSION,
    AttackReport,
    CurvePoint,
    ModelReport,
    RunInfo,
    RunResult,
    TprAtFpr,
    VerificationReport,
)

__all__ = [
    "SCHEMA_VERSION",
    "AttackReport",
    "CurvePoint",
    "ModelReport",
    "RunInfo",
    "RunResult",
    "TprAtFpr",
    "VerificationReport",
]
