"""Shared contracts every layer may import: constraints, keys, verification results, evaluation
domains, the run context, the artifact cache, config validation and user-facing errors."""

from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.config import Validated, setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.domains import EvalDomain
from adaptguard.core.errors import AdaptguardError, ConfigError, DataError, require
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.core.verification import Verification

__all__ = [
    "AdaptguardError",
    "ArtifactCache",
    "ConfigError",
    "DataError",
    "EvalDomain",
    "FineTuneConstraint",
    "Protected",
    "RunContext",
    "SecretKey",
    "Validated",
    "Verification",
    "require",
    "setting",
]
