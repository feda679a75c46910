"""A sweep's table: python -m experiments.report multirun/<date>/<time> [--out table.md]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adaptguard.sweep_report import sweep_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path, help="a sweep directory (or any folder with results.json files)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    opts = parser.parse_args()
    try:
        table = sweep_table(opts.folder)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(table)
    if opts.out:
        opts.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
