"""``adaptguard report``: a sweep's table, and the results page with seeds averaged.

adaptguard report <sweep dir>... [--out docs/results] [--intro intro.md] [--curves curves.png] [--wandb]
    [--allow-failed]

Prints a row per job. ``--out docs/results`` also writes docs/results.md (jobs that differ only by seed
averaged, with 95 % intervals across seeds), docs/results/{summary,jobs}.csv and the page's PNGs.
``--wandb`` logs the per-group summary as a wandb table and artifact (offline unless WANDB_MODE=online).
Jobs that failed or were interrupted are listed with their error; the exit status is then 4.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from adaptguard.cli.errors import EXIT_SWEEP_FAILED, EXIT_USER_ERROR
from adaptguard.core.errors import ConfigError
from adaptguard.reporting.page import write_page
from adaptguard.reporting.plots import plot_curves
from adaptguard.reporting.sweep import collect, sweep_curves, sweep_table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptguard report", description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="sweep directories (or any folders with results.json)")
    parser.add_argument("--out", type=Path, help="write the results page: <out>.md plus CSVs and PNGs in <out>/")
    parser.add_argument("--intro", type=Path, help="markdown inserted under the page's title (budget, discussion)")
    parser.add_argument("--curves", type=Path, help="plot every job's eval.at_steps curves into this PNG")
    parser.add_argument("--wandb", action="store_true", help="log the summary table and page files to wandb")
    parser.add_argument("--project", default="adaptguard", help="wandb project for --wandb")
    parser.add_argument("--allow-failed", action="store_true",
                        help="exit 0 even when jobs failed (they are still listed)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    opts = _parser().parse_args(argv)
    try:
        for folder in opts.folders:
            print(sweep_table(folder))
        out = opts.out or (Path(tempfile.mkdtemp(prefix="adaptguard-report-")) / "results" if opts.wandb else None)
        command = "python -m experiments.report " + " ".join(sys.argv[1:] if argv is None else argv)
        page = write_page(opts.folders, out, _read(opts.intro), command if opts.out else None) if out else None
    except (FileNotFoundError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if page is not None and opts.out:
        print(f"page: {page.markdown} (+ {len(page.files)} files in {page.markdown.with_suffix('')})")
    if opts.curves:
        curves = {k: v for f in opts.folders for k, v in sweep_curves(collect(f)).items()}
        if not curves:
            print("error: no job in these sweeps has curves (run them with eval.at_steps=[...])", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        print(f"curves: {plot_curves(curves, opts.curves)}")
    if opts.wandb and page is not None:
        from adaptguard.reporting.wandb_summary import log_summary

        print(f"wandb: {log_summary(opts.folders, page, opts.project)}")
    failed = [r for f in opts.folders for r in collect(f, failed=True)]
    if failed and not opts.allow_failed:
        print(f"error: {len(failed)} jobs failed or were interrupted (listed above); --allow-failed to accept",
              file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_SWEEP_FAILED)


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"--intro: {path} does not exist")
    return path.read_text()


if __name__ == "__main__":
    main()
