"""Feature extractors for FID/KID.

InceptionV3 (torch-fidelity weights) is the standard for natural images, but it needs a
weights file and means little on 32-pixel synthetic shapes. For the built-in data we
train a small CNN on the dataset's own labels and use its penultimate layer, as MNIST
FIDs use a LeNet. The metric name records which extractor produced it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule, LabelledImages

log = logging.getLogger(__name__)

# torch-fidelity's InceptionV3 weights, as torch hub caches them
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def find_inception_weights(weights_path: str | None) -> Path | None:
    if weights_path:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise ConfigError(
                f"eval.fid.weights_path: {p} does not exist; point it at torch-fidelity's {INCEPTION_FILE} "
                "or leave it empty to use the torch hub cache"
            )
        return p
    hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return hub if hub.is_file() else None


class InceptionFeatures(nn.Module):
    """torch-fidelity's InceptionV3 (2048-d pool features) from a local weights file."""

    num_features = 2048

    def __init__(self, weights_path: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(weights_path))

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.net((images01.clamp(0, 1) * 255).to(torch.uint8)).reshape(images01.shape[0], -1)


class DomainFeatureNet(nn.Module):
    """Small CNN: images in [0, 1] -> 128 standardised features; one head per attribute.

    Features are standardised with the mean/std of held-out real images, so FID values
    have a readable scale (about 2 x 128 for unrelated distributions, 0 for identical).
    """

    num_features = 128

    def __init__(self, heads: dict[str, int], resolution: int = 32) -> None:
        super().__init__()
        self.resolution = resolution
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, self.num_features), nn.SiLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({k: nn.Linear(self.num_features, n) for k, n in heads.items()})
        self.register_buffer("mean", torch.zeros(self.num_features))
        self.register_buffer("std", torch.ones(self.num_features))
        self.labels: dict[str, list[str]] = {}  # attribute -> its values in head order (set when loaded)

    def raw_features(self, images01: torch.Tensor) -> torch.Tensor:
        x = images01.float()
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)
        return self.body(x * 2 - 1)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return (self.raw_features(images01) - self.mean) / self.std

    def logits(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.raw_features(images01)
        return {k: head(f) for k, head in self.heads.items()}

    def features_and_logits(self, images01: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Both from one pass: FID's features and the attribute heads' logits (prompt fidelity)."""
        f = self.raw_features(images01)
        return (f - self.mean) / self.std, {k: head(f) for k, head in self.heads.items()}


class _Classifier(L.LightningModule):
    def __init__(self, net: DomainFeatureNet, labels: dict[str, list[str]], lr: float) -> None:
        super().__init__()
        self.net, self.labels, self.lr = net, labels, lr

    def training_step(self, batch, _):
        images, targets = batch
        logits = self.net.logits(images)
        loss = sum(F.cross_entropy(logits[k], targets[:, i]) for i, k in enumerate(self.labels))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


FEATURE_KIND = "features"
TRAIN_STEPS, TRAIN_BATCH = 600, 64


def feature_spec(dataset_spec: dict[str, Any]) -> dict[str, Any]:
    """Cache key of a domain feature extractor."""
    return {**dataset_spec, "steps": TRAIN_STEPS, "batch_size": TRAIN_BATCH, "net": "ShapesFeatureNet/v2"}


def domain_feature_net(data: CaptionedImageDataModule, ctx: RunContext) -> DomainFeatureNet:
    """Train (once, cached by the dataset's ``feature_extractor_spec``) a classifier of the dataset's labels."""
    spec = data.feature_extractor_spec()
    if spec is None:
        raise ConfigError(f"eval.fid.feature=domain: dataset {data.name!r} has no domain feature extractor")
    resolution = spec["resolution"]

    def build(work: Path) -> None:
        labelled = data.feature_training_data()
        net = _train_feature_net(labelled, resolution, ctx)
        accuracy = _accuracy(net, labelled.test, labelled.labels)
        with torch.no_grad():
            feats = torch.cat([net.raw_features(x) for x, _ in DataLoader(labelled.test, 256)])
        net.mean.copy_(feats.mean(0))
        net.std.copy_(feats.std(0).clamp_min(1e-3))
        torch.save(net.state_dict(), work / "net.pt")
        (work / "info.json").write_text(json.dumps({"labels": labelled.labels, "test_accuracy": accuracy}, indent=2))

    folder = ctx.cache.get_or_build(FEATURE_KIND, feature_spec(spec), build)
    info = json.loads((folder / "info.json").read_text())
    net = DomainFeatureNet({k: len(v) for k, v in info["labels"].items()}, resolution)
    net.load_state_dict(torch.load(folder / "net.pt", weights_only=True))
    net.test_accuracy = info["test_accuracy"]
    net.labels = info["labels"]
    return net.eval().requires_grad_(False)


def _train_feature_net(labelled: LabelledImages, resolution: int, ctx: RunContext) -> DomainFeatureNet:
    L.seed_everything(0, verbose=False)  # before the net's initialisation: it must not depend on what ran before
    net = DomainFeatureNet({k: len(v) for k, v in labelled.labels.items()}, resolution)
    loader = DataLoader(labelled.train, batch_size=TRAIN_BATCH, shuffle=True, drop_last=True, num_workers=0)
    log.info("training the domain feature extractor for FID/KID (%d steps, cached afterwards)", TRAIN_STEPS)
    trainer = L.Trainer(max_steps=TRAIN_STEPS, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=ctx.progress, accelerator="cpu", devices=1)  # fmt: skip
    trainer.fit(_Classifier(net, labelled.labels, 2e-3), loader)
    return net


@torch.no_grad()
def _accuracy(net: DomainFeatureNet, ds, labels: dict[str, list[str]]) -> dict[str, float]:
    net.eval()
    correct = {k: 0 for k in labels}
    for images, y in DataLoader(ds, batch_size=256):
        logits = net.logits(images)
        for i, k in enumerate(labels):
            correct[k] += int((logits[k].argmax(1) == y[:, i]).sum())
    return {k: round(c / len(ds), 4) for k, c in correct.items()}
