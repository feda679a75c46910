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

from adaptguard.context import RunContext
from adaptguard.errors import ConfigError

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


class ShapesFeatureNet(nn.Module):
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


class _Classifier(L.LightningModule):
    def __init__(self, net: ShapesFeatureNet, labels: dict[str, list[str]], lr: float) -> None:
        super().__init__()
        self.net, self.labels, self.lr = net, labels, lr

    def training_step(self, batch, _):
        images, targets = batch
        logits = self.net.logits(images)
        loss = sum(F.cross_entropy(logits[k], targets[:, i]) for i, k in enumerate(self.labels))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


def _labelled(ds, labels: dict[str, list[str]]):
    """Shapes dataset -> (image in [0,1], attribute-index tensor) pairs."""

    class Labelled(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            a = ds.attributes(i)
            y = torch.tensor([values.index(a[k]) for k, values in labels.items()])
            return ds[i]["image"] * 0.5 + 0.5, y

    return Labelled()


FEATURE_KIND = "features"
TRAIN_STEPS, TRAIN_BATCH = 600, 64


def feature_spec(dataset_spec: dict[str, Any]) -> dict[str, Any]:
    """Cache key of a domain feature extractor."""
    return {**dataset_spec, "steps": TRAIN_STEPS, "batch_size": TRAIN_BATCH, "net": "ShapesFeatureNet/v2"}


def shapes_feature_net(spec: dict[str, Any], ctx: RunContext) -> ShapesFeatureNet:
    """Train (once, cached) the shapes feature net on fresh images of the dataset's world."""
    from adaptguard.data.shapes import ATTRIBUTES, ShapesDataModule, ShapesWorld

    world = ShapesWorld(**spec["world"])
    labels = {k: world.values(k) for k in ATTRIBUTES}
    steps, batch_size = TRAIN_STEPS, TRAIN_BATCH
    train_spec = feature_spec(spec)

    def build(work: Path) -> None:
        # Items far down the stream: the extractor never sees the images models train on.
        dm = ShapesDataModule(resolution=spec["resolution"], world=world,
                              splits={"train": {"offset": 500_000, "size": 8192},
                                      "test": {"offset": 600_000, "size": 1024}})  # fmt: skip
        net = ShapesFeatureNet({k: len(v) for k, v in labels.items()}, spec["resolution"])
        loader = DataLoader(_labelled(dm.dataset("train"), labels), batch_size=batch_size, shuffle=True,
                            drop_last=True, num_workers=0)  # fmt: skip
        log.info("training the shapes feature extractor for FID/KID (%d steps, cached afterwards)", steps)
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_model_summary=False,
                            enable_progress_bar=ctx.progress, accelerator="cpu", devices=1)  # fmt: skip
        trainer.fit(_Classifier(net, labels, 2e-3), loader)
        accuracy = _accuracy(net, _labelled(dm.dataset("test"), labels), labels)
        with torch.no_grad():
            feats = torch.cat([net.raw_features(x) for x, _ in DataLoader(_labelled(dm.dataset("test"), labels), 256)])
        net.mean.copy_(feats.mean(0))
        net.std.copy_(feats.std(0).clamp_min(1e-3))
        torch.save(net.state_dict(), work / "net.pt")
        (work / "info.json").write_text(json.dumps({"labels": labels, "test_accuracy": accuracy}, indent=2))

    folder = ctx.cache.get_or_build(FEATURE_KIND, train_spec, build)
    net = ShapesFeatureNet({k: len(v) for k, v in labels.items()}, spec["resolution"])
    net.load_state_dict(torch.load(folder / "net.pt", weights_only=True))
    net.test_accuracy = json.loads((folder / "info.json").read_text())["test_accuracy"]
    return net.eval().requires_grad_(False)


@torch.no_grad()
def _accuracy(net: ShapesFeatureNet, ds, labels: dict[str, list[str]]) -> dict[str, float]:
    net.eval()
    correct = {k: 0 for k in labels}
    for images, y in DataLoader(ds, batch_size=256):
        logits = net.logits(images)
        for i, k in enumerate(labels):
            correct[k] += int((logits[k].argmax(1) == y[:, i]).sum())
    return {k: round(c / len(ds), 4) for k, c in correct.items()}
