"""The declared lower bounds as exact pins: `python tools/floors.py > floors.txt`, for `make check-floors`.

Every ``name>=X`` of pyproject.toml's dependencies (the ``dev`` extra included) becomes ``name==X``; exact pins
stay; a requirement without a lower bound is an error, since nothing would test its oldest release.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    sys.exit("tools/floors.py: needs Python 3.11+ (tomllib); run it with PYTHON=python3.11")

ROOT = Path(__file__).resolve().parents[1]
# a name, extras, then its bounds (only stdlib here: this runs before anything is installed)
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def floors(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = [*project["dependencies"], *project.get("optional-dependencies", {}).get("dev", [])]
    pins = []
    for line in declared:
        name, rest = REQUIREMENT.match(line).groups()
        bounds = re.findall(r"(?:>=|==)\s*([^,;\s]+)", rest.split(";")[0])
        if not bounds:
            sys.exit(f"pyproject.toml: {name} has no lower bound (>= or ==); declare the oldest release it needs")
        pins.append(f"{name}=={bounds[0]}")
    return pins


if __name__ == "__main__":
    print("\n".join(floors()))
