"""Data: the built-in dataset, ImageFolder reading, splits, transforms and the batch loader."""

from jaxvgg.core.folder import ImageFolderIndex, load_rgb, scan_image_folder
from jaxvgg.core.split import Split, load_split, make_split, save_split
from jaxvgg.core.transforms import Pipeline
from jaxvgg.data.loader import Batch, Loader
from jaxvgg.data.normalize import normalize

__all__ = [
    "Batch",
    "ImageFolderIndex",
    "Loader",
    "Pipeline",
    "Split",
    "load_rgb",
    "load_split",
    "make_split",
    "normalize",
    "save_split",
    "scan_image_folder",
]
