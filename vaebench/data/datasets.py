"""Datasets and binarizations, chosen by name from the config.

A dataset yields integer grey levels; a binarizer turns them into 0/1 pixels (or, ``none``, into
grey levels in [0, 1], for a likelihood on [0, 1]). Keeping the two apart lets static and dynamic
binarization be compared on exactly the same images.
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


def verified(fn: DatasetFn) -> DatasetFn:
    """Marks a dataset whose loader checks its files against fixed checksums (the canonical MNIST
    md5s): its images are the same from any folder that loads, so the folder is not part of a run's
    identity. Any other dataset is identified by a digest of the images it yields (content_id)."""
    fn.verified = True  # type: ignore[attr-defined]
    return fn


def width(n: int) -> Callable[[DatasetFn], DatasetFn]:
    """Declares a dataset's image width (values per image), so the structure of a model can be built
    from a config without loading its images (vaebench.training.loop.choose_engine)."""
    def mark(fn: DatasetFn) -> DatasetFn:
        fn.dim = int(n)  # type: ignore[attr-defined]
        return fn
    return mark


def data_dim(dataset: str, root: str | None = None, load: bool = True) -> int | None:
    """Values per image of ``dataset``: its declared width, else (``load``) its train split's,
    loaded; None when it declares none and ``load`` is false."""
    fn = DATASETS.get(dataset)
    dim = getattr(fn, "dim", None)
    if dim is not None:
        return int(dim)
    return int(fn(root)["train"].dim) if load else None


@DATASETS.register("mnist14")
@verified
@width(14 * 14)
def mnist14(root: str | None) -> dict[str, GreyImages]:
    """14x14 MNIST as 2x2 block sums (0..1020); embedded in the package so it needs no download."""
    if root is None:
        arrays = load_embedded()
    else:
        arrays = pooled_arrays(_idx_arrays(_idx_root(root, "mnist14")))
    return _grey(arrays, max_level=1020)


@DATASETS.register("mnist28")
@verified
@width(28 * 28)
def mnist28(root: str | None) -> dict[str, GreyImages]:
    """Full-resolution MNIST (0..255), read from IDX files the user provides."""
    return _grey(_idx_arrays(_idx_root(root, "mnist28")), max_level=255)


def threshold_levels(levels: np.ndarray, max_level: int) -> np.ndarray:
    """Pixel is 1 when level/max_level > 128/255, compared exactly in integers."""
    return levels.astype(np.int64) * 255 > 128 * int(max_level)


class Binarizer:
    """Stateless; methods are static so they work on the class or an instance alike."""

    fixed: ClassVar[bool]  # the same image every time it is used
    # Only 0/1 pixels: vaebench.config refuses a binary-only likelihood (bernoulli) with one that is not.
    binary: ClassVar[bool]

    @staticmethod
    def prepare(grey: GreyImages, device: torch.device | str) -> torch.Tensor:
        """What the trainer keeps resident on the device: float32 (N, D)."""
        raise NotImplementedError

    @staticmethod
    def sample(prepared_batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The batch the model sees this time (0/1 pixels, or grey levels where ``binary`` is False)."""
        raise NotImplementedError


@BINARIZERS.register("threshold")
class ThresholdBinarizer(Binarizer):
    """Static binarization: the same 0/1 image every epoch."""

    fixed, binary = True, True

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

    fixed, binary = False, True

    @staticmethod
    def prepare(grey: GreyImages, device: torch.device | str) -> torch.Tensor:
        return torch.from_numpy(grey.probs()).to(device)

    @staticmethod
    def sample(prepared_batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.bernoulli(prepared_batch, generator=generator)


@BINARIZERS.register("none")
class NoBinarizer(Binarizer):
    """No binarization: grey levels in [0, 1] (level / max_level, the dynamic binarizer's
    probabilities), the same image every time; for a likelihood on [0, 1] (continuous_bernoulli)."""

    fixed, binary = True, False
    prepare = staticmethod(DynamicBinarizer.prepare)
    sample = staticmethod(ThresholdBinarizer.sample)


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
    """``data.val_from: test``: the first `size` test images (the seed's protocol; they overlap the test set)."""
    if size is None:
        return np.arange(n_test, dtype=np.int64)
    if size < 1:
        raise ConfigError(f"data.val_size must be at least 1 (or null for all), got {size}")
    if size > n_test:
        raise DataError(f"data.val_size={size} but the test split has only {n_test} images")
    return np.arange(size, dtype=np.int64)


# Its own stream of data.seed, so the validation draw never moves the per_class subset.
_VAL_STREAM = 1


def split_train(labels: np.ndarray, per_class: int | None, size: int | None, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``data.val_from: train``: (training, validation) indices into the train split, disjoint.

    Validation is drawn (by ``seed``) from the images the per_class subset leaves out, so the
    training images are the same as under ``val_from: test``; with ``per_class: null`` it is carved
    out of the whole split (the rest trains). ``size`` null: every image left out (per_class set)."""
    n = len(labels)
    if size is not None and size < 1:
        raise ConfigError(f"data.val_size must be at least 1 (or null for all), got {size}")
    rng = np.random.default_rng([seed, _VAL_STREAM])
    if per_class is None:
        if size is None:
            raise ConfigError("data.val_from: train with data.per_class: null needs a data.val_size "
                              "(how many of the training images to hold out)")
        if size >= n:
            raise DataError(f"data.val_size={size} leaves no training images of the {n} in the train split; "
                            "lower data.val_size")
        val = np.sort(rng.permutation(n)[:size])
        return np.setdiff1d(np.arange(n, dtype=np.int64), val), val.astype(np.int64)
    train = select_per_class(labels, per_class, seed)
    left = np.setdiff1d(np.arange(n, dtype=np.int64), train)
    if size is None:
        return train, left
    if size > len(left):
        raise DataError(f"data.val_size={size} but data.per_class={per_class} leaves only {len(left)} training "
                        f"images out for validation; lower data.val_size or data.per_class")
    return train, np.sort(rng.permutation(left)[:size]).astype(np.int64)


def load_splits(
    dataset: Any, root: str | None = None, per_class: int | None = None, data_seed: int = 0,
    val_size: int | None = None, val_from: str = "train"
) -> dict[str, GreyImages]:
    """Train subset, validation subset (used for curves and model selection) and the full test split.

    ``dataset``: a run's ``data`` section (a DataConfig or its dict: the one way every caller reads
    it), or the data set's name with the other keys given one by one."""
    if not isinstance(dataset, str):
        d = dataset if isinstance(dataset, dict) else dataset.model_dump()
        dataset, root, per_class = d["dataset"], d.get("root"), d.get("per_class")
        data_seed, val_size, val_from = d.get("seed", 0), d.get("val_size"), d.get("val_from", "train")
    return _load_splits(dataset, root, per_class, data_seed, val_size, val_from)


def _load_splits(dataset: str, root: str | None, per_class: int | None, data_seed: int,
                 val_size: int | None, val_from: str) -> dict[str, GreyImages]:
    splits = DATASETS.get(dataset)(root)
    train, test = splits["train"], splits["test"]
    if val_from == "train":
        trained, val = split_train(train.labels, per_class, val_size, data_seed)
        return {"train": train.subset(trained), "val": train.subset(val), "test": test}
    if val_from != "test":
        raise ConfigError(f"data.val_from must be train or test, got {val_from!r}")
    return {
        "train": train.subset(select_per_class(train.labels, per_class, data_seed)),
        "val": test.subset(select_validation(len(test), val_size)),
        "test": test,
    }


@functools.lru_cache(maxsize=8)
def _content_id(dataset: str, root: str | None, env: str | None) -> str:
    """``env``: $VAEBENCH_DATA, part of the cache key (a dataset may read it when root is null)."""
    import hashlib

    h = hashlib.sha256()
    for split, g in sorted(DATASETS.get(dataset)(root).items()):
        for part in (split.encode(), np.ascontiguousarray(g.images), np.ascontiguousarray(g.labels),
                     str((g.max_level, g.shape)).encode()):
            h.update(part)
    return h.hexdigest()[:16]


def content_id(dataset: str, root: str | None) -> str | None:
    """What identifies a dataset's images in a run id: None for a verified dataset (fixed content),
    else a digest of the images it yields from ``root`` (so two folders holding the same files
    are one run, and a changed file is another)."""
    if getattr(DATASETS.get(dataset), "verified", False):
        return None
    return _content_id(dataset, root if root is None else str(Path(root).expanduser().resolve()),
                       os.environ.get(DATA_ENV))
