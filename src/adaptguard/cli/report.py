"""``adaptguard report``: a sweep's table.

adaptguard report multirun/<date>/<time> [--out table.md] [--curves curves.png] [--allow-failed]

Jobs that failed or were interrupted are listed with their error; the exit status is then 4.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adaptguard.cli.errors import EXIT_SWEEP_FAILED, EXIT_USER_ERROR
from adaptguard.reporting.plots import plot_curves
from adaptguard.reporting.sweep import collect, sweep_curves, sweep_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="adaptguard report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a sweep directory (or any folder with results.json files)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--curves", type=Path, help="plot every job's eval.at_steps curves into this PNG")
    parser.add_argument("--allow-failed", action="store_true",
                        help="exit 0 even when jobs failed (they are still listed)")  # fmt: skip
    opts = parser.parse_args(argv)
    try:
        table = sweep_table(opts.folder)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(table)
    if opts.out:
        opts.out.write_text(table + "\n")
    if opts.curves:
        curves = sweep_curves(collect(opts.folder))
        if not curves:
            print("error: no job in this sweep has curves (run it with eval.at_steps=[...])", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        print(f"curves: {plot_curves(curves, opts.curves)}")
    failed = collect(opts.folder, failed=True)
    if failed and not opts.allow_failed:
        print(f"error: {len(failed)} jobs failed or were interrupted (listed above); --allow-failed to accept",
              file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_SWEEP_FAILED)


if __name__ == "__main__":
    main()
