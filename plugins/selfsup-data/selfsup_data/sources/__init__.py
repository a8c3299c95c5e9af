"""Data sources (entry-point group ``selfsup.data_sources``): read samples, no augmentation."""
from __future__ import annotations

from .arrays import NumpyArrays
from .base import ArraySource, BadSampleError, DataSource, load_image
from .cifar import CIFAR10, CIFAR100
from .folder import ImageFolder, ImageList
from .mnist import MNIST, FashionMNIST
from .subset import Subset

__all__ = [
    "ArraySource", "BadSampleError", "CIFAR10", "CIFAR100", "DataSource", "FashionMNIST", "ImageFolder",
    "ImageList", "MNIST", "NumpyArrays", "Subset", "load_image",
]
