"""Layer activity between two checkpoints, or a base model and a fine-tune this tool runs.

    python -m experiments.layers                          # tiny base vs attack=full on its data
    python -m experiments.layers attack=lora attack.steps=500
    python -m experiments.layers reference=path/a tuned=path/b

Prints a table (relative weight change per block, busy / lazy) and writes
``layer_activity.png`` and ``layer_activity.json`` into the run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from experiments.cli import EXIT_USER_ERROR, _quiet_libraries, _user_error, check_overrides, make_context


def activity_report(cfg: DictConfig, output_dir: Path):
    from hydra.utils import instantiate

    from adaptguard.analysis import compare_unets
    from adaptguard.models.bundle import DiffusionModel

    ctx = make_context(cfg, output_dir)
    if cfg.reference is not None:
        reference = DiffusionModel.load(Path(cfg.reference)).to(ctx.torch_device())
        title = Path(cfg.reference).name
    else:
        reference = instantiate(cfg.model, _convert_="all").load(ctx)
        title = cfg.model.name
    if cfg.tuned is not None:
        tuned = DiffusionModel.load(Path(cfg.tuned)).to(ctx.torch_device())
        title += f" vs {Path(cfg.tuned).name}"
    else:
        attack = instantiate(cfg.attack, _convert_="all")
        data = instantiate(cfg.dataset, _convert_="all")
        tuned = attack.run(reference, data, None, ctx)
        title += f" vs attack={attack.name} ({getattr(attack, 'steps', '?')} steps)"
    report = compare_unets(reference.unet, tuned.unet, reference.latent_shape, float(cfg.busy_fraction))
    png = report.plot(output_dir / "layer_activity.png", title=title)
    report.save_json(output_dir / "layer_activity.json")
    if cfg.get("logger") and "_target_" in cfg.logger:
        logger = instantiate(cfg.logger)
        logger.log_metrics({f"activity/{b.name}": a for b, a in zip(report.blocks, report.activity, strict=True)})
        if hasattr(logger, "log_image"):  # wandb
            logger.log_image(key="layer_activity", images=[str(png)])
        logger.finalize("success")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="layers")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    _quiet_libraries()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        report = activity_report(cfg, output_dir)
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        message = _user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(report.table())
    print(f"busy blocks: {[report.blocks[i].name for i in report.busy]}")
    print(f"wrote {output_dir / 'layer_activity.png'} and layer_activity.json")


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
