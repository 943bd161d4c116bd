"""LightningDataModules of named batches (`Batch`: image, label, tokens, moments). Each is a
`BatchDataModule` and exposes `image_shape` and `num_classes` for the model."""

from ddpm_lab.data.base import BatchDataModule
from ddpm_lab.data.batch import Batch
from ddpm_lab.data.digits import DigitsDataModule
from ddpm_lab.data.gmm import GaussianMixtureDataModule
from ddpm_lab.data.image_folder import ImageFolderDataModule
from ddpm_lab.data.mnist import MNISTDataModule
from ddpm_lab.data.moving_shapes import MovingShapesDataModule
from ddpm_lab.data.shapes import ShapesDataModule

__all__ = ["Batch", "BatchDataModule", "DigitsDataModule", "GaussianMixtureDataModule", "ImageFolderDataModule",
           "MNISTDataModule", "MovingShapesDataModule", "ShapesDataModule"]
