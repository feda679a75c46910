"""(Re)make the artifacts adaptguard ships: a base model's pretrained weights and the
dataset's FID feature extractor, built into the cache and copied into the package.

    python -m experiments.pretrain model=tiny      # what `make pretrain` runs
    python -m experiments.pretrain model=tiny experiment=freeze +features_only=true
                                                   # only the feature extractor of another shapes world
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from experiments.cli import check_overrides


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from adaptguard.artifacts import ArtifactCache
    from adaptguard.context import RunContext
    from adaptguard.metrics.features import FEATURE_KIND, feature_spec, shapes_feature_net
    from experiments.cli import _quiet_libraries

    _quiet_libraries()
    cache = ArtifactCache(cfg.paths.cache, use_shipped=False)
    ctx = RunContext(cache=cache, make_trainer=instantiate(cfg.trainer), progress=bool(cfg.progress), seed=0)
    if not cfg.get("features_only", False):
        source = instantiate(cfg.model, _convert_="all")
        source.load(ctx)
        print(f"base model {source.name}: shipped to {cache.ship('base', source.describe())}")
    data = instantiate(cfg.dataset, _convert_="all")
    spec = data.feature_extractor_spec()
    if spec is not None:
        net = shapes_feature_net(spec, ctx)
        print(f"feature extractor ({net.test_accuracy}): shipped to {cache.ship(FEATURE_KIND, feature_spec(spec))}")


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
