"""What a run's defense and attack classes declare for results pages (``report_options``, ``report_reference``).

Read from results.json's ``report``, so a page needs only the files and never names a defense. Files written
before that field resolve the class from the recorded ``_target_`` (adaptguard's own classes only), else take
the base classes' defaults.
"""

from __future__ import annotations

import importlib
from typing import Literal

from adaptguard.reporting.results import ReportSettings, RunResult

Section = Literal["defense", "attack"]


def declared(run: RunResult, section: Section) -> ReportSettings:
    """The report settings of ``run``'s defense or attack."""
    if section in run.report:
        return run.report[section]
    return ReportSettings.of(_recorded_class(run, section) or _base(section))


def _recorded_class(run: RunResult, section: Section) -> type | None:
    target = ((run.config.get("experiment") or {}).get(section) or {}).get("_target_")
    if not isinstance(target, str) or not target.startswith("adaptguard.") or "." not in target:
        return None
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # a class renamed or removed since the run: the defaults
        return None
    return found if isinstance(found, type) else None


def _base(section: Section) -> type:
    if section == "defense":
        from adaptguard.defenses.base import Defense

        return Defense
    from adaptguard.attacks.base import Attack

    return Attack
