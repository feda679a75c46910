from adaptguard.data.afhq import AfhqDataModule
from adaptguard.data.base import CaptionedImageDataModule, SplitSpec
from adaptguard.data.coco import CocoDataModule
from adaptguard.data.cub200 import Cub200DataModule
from adaptguard.data.dreambooth import DreamBoothDataModule
from adaptguard.data.lsun import LsunDataModule
from adaptguard.data.shapes import ShapesDataModule, ShapesWorld

__all__ = [
    "AfhqDataModule",
    "CaptionedImageDataModule",
    "CocoDataModule",
    "Cub200DataModule",
    "DreamBoothDataModule",
    "LsunDataModule",
    "ShapesDataModule",
    "ShapesWorld",
    "SplitSpec",
]
