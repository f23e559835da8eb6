"""Datasets and binarizations, chosen by name from the config.

A dataset yields integer grey levels; a binarizer turns them into 0/1 pixels. Keeping the two
apart lets static and dynamic binarization be compared on exactly the same images.
"""

from __future__ import annotations

import functools

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..registry import Registry
from .mnist import DATA_ENV, load_embedded, load_idx_dir, pooled_arrays

DatasetFn = Callable[[str | None], dict[str, "GreyImages"]]

DATASETS: Registry[DatasetFn] = Registry("dataset")
BINARIZERS: Registry[type["Binarizer"]] = Registry("binarization")


@dataclass(frozen=True, eq=False)
class GreyImages:
    """Integer grey levels with their maximum, so binarization can be exact integer arithmetic."""

    images: np.ndarray  # (N, H*W), integer levels in 0..max_level
    labels: np.ndarray  # (N,)
    max_level: int
    shape: tuple[int, int]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def dim(self) -> int:
        return int(self.images.shape[1])

    def probs(self) -> np.ndarray:
        return self.images.astype(np.float32) / np.float32(self.max_level)

    def subset(self, idx: np.ndarray) -> "GreyImages":
        return GreyImages(self.images[idx], self.labels[idx], self.max_level, self.shape)


def _grey(arrays: dict[str, np.ndarray], max_level: int) -> dict[str, GreyImages]:
    out = {}
    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        n, h, w = images.shape
        out[split] = GreyImages(images.reshape(n, h * w), arrays[f"{split}_labels"], max_level, (h, w))
    return out


@functools.lru_cache(maxsize=2)
def _idx_arrays(root: str) -> dict[str, np.ndarray]:
    """Cached per folder so repeated runs in one process read and md5 the files once."""
    arrays = load_idx_dir(root, verify=True)
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


def _idx_root(root: str | None, dataset: str) -> str:
    root = root or os.environ.get(DATA_ENV)
    if not root:
        raise DataError(
            f"dataset {dataset!r} needs the MNIST IDX files: set data.root or the {DATA_ENV} environment variable"
        )
    return str(Path(root).expanduser().resolve())


@DATASETS.register("mnist14")
def mnist14(root: str | None) -> dict[str, GreyImages]:
    """14x14 MNIST as 2x2 block sums (0..1020); embedded in the package so it needs no download."""
    if root is None:
        arrays = load_embedded()
    else:
        arrays = pooled_arrays(_idx_arrays(_idx_root(root, "mnist14")))
    return _grey(arrays, max_level=1020)


@DATASETS.register("mnist28")
def mnist28(root: str | None) -> dict[str, GreyImages]:
    """Full-resolution MNIST (0..255), read from IDX files the user provides."""
    return _grey(_idx_arrays(_idx_root(root, "mnist28")), max_level=255)


def threshold_levels(levels: np.ndarray, max_level: int) -> np.ndarray:
    """Pixel is 1 when level/max_level > 128/255, compared exactly in integers."""
    return levels.astype(np.int64) * 255 > 128 * int(max_level)


class Binarizer:
    """Stateless; methods are static so they work on the class or an instance alike."""

    fixed: ClassVar[bool]

    @staticmethod
    def prepare(grey: GreyImages, device: torch.device | str) -> torch.Tensor:
        """What the trainer keeps resident on the device: float32 (N, D)."""
        raise NotImplementedError

    @staticmethod
    def sample(prepared_batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The 0/1 batch the model sees this time."""
        raise NotImplementedError


@BINARIZERS.register("threshold")
class ThresholdBinarizer(Binarizer):
    """Static binarization: the same 0/1 image every epoch."""

    fixed = True

    @staticmethod
    def prepare(grey: GreyImages, device: torch.device | str) -> torch.Tensor:
        bits = threshold_levels(grey.images, grey.max_level).astype(np.float32)
        return torch.from_numpy(bits).to(device)

    @staticmethod
    def sample(prepared_batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return prepared_batch


@BINARIZERS.register("dynamic")
class DynamicBinarizer(Binarizer):
    """Dynamic binarization: a fresh Bernoulli draw each time an image is used (less overfitting)."""

    fixed = False

    @staticmethod
    def prepare(grey: GreyImages, device: torch.device | str) -> torch.Tensor:
        return torch.from_numpy(grey.probs()).to(device)

    @staticmethod
    def sample(prepared_batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.bernoulli(prepared_batch, generator=generator)


def select_per_class(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """A class-balanced training subset, reproducible from the seed alone."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels), dtype=np.int64)
    if per_class < 1:
        raise ConfigError(f"data.per_class must be at least 1 (or null for all images), got {per_class}")
    classes, counts = np.unique(labels, return_counts=True)
    if per_class > counts.min():
        smallest = classes[counts.argmin()]
        raise DataError(
            f"data.per_class={per_class} but digit {smallest} has only {counts.min()} training images; "
            f"use at most {counts.min()}"
        )
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def select_validation(n_test: int, size: int | None) -> np.ndarray:
    """The first `size` test images: fixed across seeds so validation curves are comparable."""
    if size is None:
        return np.arange(n_test, dtype=np.int64)
    if size < 1:
        raise ConfigError(f"data.val_size must be at least 1 (or null for all), got {size}")
    if size > n_test:
        raise DataError(f"data.val_size={size} but the test split has only {n_test} images")
    return np.arange(size, dtype=np.int64)


def load_splits(
    dataset: Any, root: str | None = None, per_class: int | None = None, data_seed: int = 0,
    val_size: int | None = None
) -> dict[str, GreyImages]:
    """Train subset, validation subset (a prefix of test, used for model selection) and full test.

    ``dataset``: a run's ``data`` section (a DataConfig or its dict: the one way every caller reads
    it), or the data set's name with the other keys given one by one."""
    if not isinstance(dataset, str):
        d = dataset if isinstance(dataset, dict) else dataset.model_dump()
        dataset, root, per_class = d["dataset"], d.get("root"), d.get("per_class")
        data_seed, val_size = d.get("seed", 0), d.get("val_size")
    return _load_splits(dataset, root, per_class, data_seed, val_size)


def _load_splits(dataset: str, root: str | None, per_class: int | None, data_seed: int,
                 val_size: int | None) -> dict[str, GreyImages]:
    splits = DATASETS.get(dataset)(root)
    train, test = splits["train"], splits["test"]
    return {
        "train": train.subset(select_per_class(train.labels, per_class, data_seed)),
        "val": test.subset(select_validation(len(test), val_size)),
        "test": test,
    }
