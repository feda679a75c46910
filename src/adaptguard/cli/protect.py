"""``adaptguard protect`` / ``python -m experiments.protect``: protect a model for publishing.

    adaptguard protect defense=backdoor model=tiny out=release/

Writes ``<out>/model/`` (diffusers folder, publish this), ``<out>/owner.key`` (0600, keep it) and
``<out>/protect.json``. Check any model later with ``adaptguard verify key=<out>/owner.key suspect=...``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from adaptguard.cli.app import check_keys, check_overrides, hydra_command, quiet_libraries, user_errors
from adaptguard.cli.build import build_protection, make_context
from adaptguard.cli.per_option import apply_per_option
from adaptguard.pipeline.owner import protect_to


def protect(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """In-process ``protect`` (tests, notebooks): ``output_dir`` (the command's ``out``) receives the files.

    Any ``experiment=<preset>`` works: its ``per_option`` entry for the chosen defense applies as in ``run``
    (so a page preset protects with the page's settings), and its attack and evaluation settings are ignored.
    """
    out = Path(output_dir)
    cfg = apply_per_option(cfg)
    return protect_to(
        build_protection(cfg),
        make_context(cfg, out),
        out,
        single_file=bool(cfg.single_file),
        use_cache=bool(cfg.use_cache),
    )


def summary(report: dict[str, Any]) -> str:
    lines = [f"protected with {report['defense']} ({report['wall_s']:.0f} s)",
             f"  model (publish this): {report['model_dir']}"
             + (f" (one file: {report['single_file']})" if report.get("single_file") else ""),
             f"  key (keep private, mode 0600): {report.get('key_file') or 'none (this defense keeps no secret)'}"]  # fmt: skip
    for name in ("protected", "base"):
        v = report.get(name)
        if v:
            state = "detected" if v["detected"] else "not detected"
            lines.append(f"  {name}: {state}, rate {v['rate']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}], "
                         f"p {v['p_value']:.3g}")  # fmt: skip
    if report.get("protected") and not report["protected"]["detected"]:
        lines.append(
            "  warning: the protected model does not verify as watermarked; strengthen the embedding "
            "(defense.steps, defense.lr) before publishing"
        )
    if not report.get("protected"):
        lines.append(f"  {report['decision']['rule']}")
    else:
        lines.append(f"  verify: adaptguard verify key={report['key_file']} suspect=<folder or checkpoint>")
    return "\n".join(lines)


def task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    quiet_libraries()
    with user_errors():
        report = protect(cfg, Path(HydraConfig.get().runtime.output_dir))
    print(summary(report))


def main() -> None:
    check_overrides(sys.argv[1:])
    check_keys(sys.argv[1:], "protect")
    hydra_command(task, "protect")()


if __name__ == "__main__":
    main()
