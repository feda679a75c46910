"""FID and prompt fidelity with adaptguard's shapes feature network, for the patched reference FID script.

The patched ``evaluate_fid_topiq_target.py`` imports this module (``reference/freezeasguard`` is on its PYTHONPATH)
in place of InceptionV3 and TOPIQ, whose weights cannot be downloaded here. The network is the one the project's own
FID uses for the freezing presets (the shipped ``features-*`` asset for the 64-px shapes world with orange and
beige), found through adaptguard's artifact cache from the preset's dataset config; it is never trained here.

    AG_EXPERIMENT   the preset whose dataset picks the network (default: page/compare_freezing)
"""

from __future__ import annotations

import os
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import torch

from adaptguard.metrics.quality import _Precomputed as Precomputed  # passes computed features through

EXTRACTOR = "shapesnet"  # completed with the asset's folder name once the network is loaded


@lru_cache(maxsize=1)
def _load():
    """(data module, feature network) of the preset; fails if the network is not a shipped asset."""
    global EXTRACTOR
    from adaptguard.cli.build import instantiate
    from adaptguard.cli.config import compose
    from adaptguard.core.artifacts import ArtifactCache
    from adaptguard.metrics.features import FEATURE_KIND, domain_feature_net, feature_spec

    cfg = compose([f"experiment={os.environ.get('AG_EXPERIMENT', 'page/compare_freezing')}"])
    data = instantiate(cfg.dataset)
    cache = ArtifactCache(cfg.paths.cache)
    spec = feature_spec(data.feature_extractor_spec())
    shipped = cache.shipped(FEATURE_KIND, spec)
    if shipped is None:
        raise RuntimeError(f"no shipped feature network for {spec}; the project's FID could not be reproduced")
    net = domain_feature_net(data, SimpleNamespace(cache=cache, progress=False))
    EXTRACTOR = f"shapesnet ({shipped.name})"
    return data, net


def _as_tensor(images) -> torch.Tensor:
    """PIL images (or an (N, 3, H, W) tensor in [0, 1]) -> (N, 3, H, W) float in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images.float()
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@torch.no_grad()
def features(images01: torch.Tensor) -> torch.Tensor:
    _, net = _load()
    return torch.cat([net(chunk.clamp(0, 1)) for chunk in images01.float().split(64)])


@torch.no_grad()
def fid(real01: torch.Tensor, fake01: torch.Tensor) -> float:
    """FID between two image sets in [0, 1] in the shapes network's feature space (as adaptguard computes it)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = features(real01), features(fake01)
    metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]))
    for chunk in real.split(64):
        metric.update(chunk, real=True)
    for chunk in fake.split(64):
        metric.update(chunk, real=False)
    return float(metric.compute())


@torch.no_grad()
def fidelity(images, prompts: list[str]) -> dict[str, float]:
    """Share of images showing what their prompt asks for, per attribute, ``kind+colour`` and ``all``: the
    project's prompt fidelity (its CLIP-score analogue), read by the same network's attribute heads."""
    from adaptguard.metrics.fidelity import attribute_matches, fidelity_matches, shares

    data, net = _load()
    x = _as_tensor(images)
    logits: dict[str, list[torch.Tensor]] = {}
    for chunk in x.split(64):
        for k, v in net.logits(chunk.clamp(0, 1)).items():
            logits.setdefault(k, []).append(v)
    wanted = [data.prompt_attributes(p) for p in prompts]
    matches = attribute_matches({k: torch.cat(v) for k, v in logits.items()}, net.labels, wanted)
    return shares(fidelity_matches(matches, data.fidelity_groups()))
