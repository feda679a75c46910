"""``adaptguard layers``: which UNet blocks does fine-tuning move? (busy vs lazy)

    adaptguard layers                                  # the base model vs attack=full on its data
    adaptguard layers attack=lora attack.steps=500
    adaptguard layers reference=path/a tuned=path/b    # two saved models

Prints a table (relative weight change per block, busy / lazy) and writes
``layer_activity.png`` and ``layer_activity.json`` into the run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from adaptguard.analysis import ActivityReport, compare_unets
from adaptguard.cli.app import check_overrides, hydra_command, quiet_libraries, user_errors
from adaptguard.cli.build import instantiate, make_context, make_logger
from adaptguard.core.errors import ConfigError
from adaptguard.models.bundle import DiffusionModel


def load_model(path: str, key: str) -> DiffusionModel:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder; give a saved model (a diffusers pipeline folder)")
    return DiffusionModel.load(folder)


def activity_report(cfg: DictConfig, output_dir: Path) -> ActivityReport:
    ctx = make_context(cfg, output_dir)
    if cfg.reference is not None:
        reference = load_model(cfg.reference, "reference").to(ctx.torch_device())
        title = Path(cfg.reference).name
    else:
        reference = instantiate(cfg.model).load(ctx)
        title = cfg.model.name
    if cfg.tuned is not None:
        tuned = load_model(cfg.tuned, "tuned").to(ctx.torch_device())
        title += f" vs {Path(cfg.tuned).name}"
    else:
        attack = instantiate(cfg.attack)
        tuned = attack.run(reference, instantiate(cfg.dataset), None, ctx)
        title += f" vs attack={attack.name} ({attack.training_steps or 0} steps)"
    report = compare_unets(reference.unet, tuned.unet, reference.latent_shape, float(cfg.busy_fraction))
    png = report.plot(output_dir / "layer_activity.png", title=title)
    report.save_json(output_dir / "layer_activity.json")
    logger = make_logger(cfg)
    if logger is not None:
        logger.log_metrics({f"activity/{b.name}": a for b, a in zip(report.blocks, report.activity, strict=True)})
        if hasattr(logger, "log_image"):  # wandb
            logger.log_image(key="layer_activity", images=[str(png)])
        logger.finalize("success")
    return report


def task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    quiet_libraries()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with user_errors():
        report = activity_report(cfg, output_dir)
    print(report.table())
    print(f"busy blocks: {[report.blocks[i].name for i in report.busy]}")
    print(f"wrote {output_dir / 'layer_activity.png'} and layer_activity.json")


def main() -> None:
    check_overrides(sys.argv[1:])
    hydra_command(task, "layers")()


if __name__ == "__main__":
    main()
