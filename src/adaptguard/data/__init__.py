from adaptguard.data.base import CaptionedImageDataModule, SplitSpec
from adaptguard.data.shapes import ShapesDataModule, ShapesWorld

__all__ = ["CaptionedImageDataModule", "SplitSpec", "ShapesDataModule", "ShapesWorld"]
