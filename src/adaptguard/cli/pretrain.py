"""``adaptguard pretrain``: (re)make the artifacts adaptguard ships: a base model's pretrained weights
and the dataset's FID feature extractor, built into the cache and copied into the package.

    adaptguard pretrain model=tiny                                  # what `make pretrain` runs
    adaptguard pretrain model=tiny experiment=freeze +features_only=true
                                                                    # only the feature extractor of another world
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from adaptguard.cli.app import check_overrides, hydra_command, quiet_libraries, user_errors
from adaptguard.cli.build import instantiate
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from adaptguard.metrics.features import FEATURE_KIND, domain_feature_net, feature_spec


def task(cfg: DictConfig) -> None:
    quiet_libraries()
    with user_errors():
        cache = ArtifactCache(cfg.paths.cache, use_shipped=False)
        ctx = RunContext(cache=cache, make_trainer=instantiate(cfg.trainer), progress=bool(cfg.progress), seed=0)
        if not cfg.get("features_only", False):
            source = instantiate(cfg.model)
            source.load(ctx)
            print(f"base model {source.name}: shipped to {cache.ship('base', source.describe())}")
        data = instantiate(cfg.dataset)
        spec = data.feature_extractor_spec()
        if spec is not None:
            net = domain_feature_net(data, ctx)
            print(f"feature extractor ({net.test_accuracy}): shipped to {cache.ship(FEATURE_KIND, feature_spec(spec))}")


def main() -> None:
    check_overrides(sys.argv[1:])
    hydra_command(task, "config")()


if __name__ == "__main__":
    main()
