"""Binarized-MNIST data: IDX loading, the embedded 14x14 copy, and named datasets/binarizers."""

from .datasets import (
    BINARIZERS,
    DATASETS,
    Binarizer,
    DynamicBinarizer,
    GreyImages,
    ThresholdBinarizer,
    load_splits,
    select_per_class,
    select_validation,
    threshold_levels,
)
from .mnist import (
    DATA_ENV,
    EMBEDDED_PATH,
    EMBEDDED_SHA256,
    MNIST_FILES,
    MNIST_MD5,
    build_embedded,
    load_embedded,
    load_idx_dir,
    pool2x2,
    read_idx,
)

__all__ = [
    "BINARIZERS",
    "DATASETS",
    "DATA_ENV",
    "EMBEDDED_PATH",
    "EMBEDDED_SHA256",
    "MNIST_FILES",
    "MNIST_MD5",
    "Binarizer",
    "DynamicBinarizer",
    "GreyImages",
    "ThresholdBinarizer",
    "build_embedded",
    "load_embedded",
    "load_idx_dir",
    "load_splits",
    "pool2x2",
    "read_idx",
    "select_per_class",
    "select_validation",
    "threshold_levels",
]
