"""The data layer: IDX parsing, the embedded 14x14 copy, and dataset/binarizer selection."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vaebench.data import (
    BINARIZERS,
    DATASETS,
    EMBEDDED_PATH,
    EMBEDDED_SHA256,
    MNIST_FILES,
    GreyImages,
    load_embedded,
    load_idx_dir,
    load_splits,
    pool2x2,
    read_idx,
    select_per_class,
    select_validation,
    split_train,
)
from vaebench.errors import ConfigError, DataError, UnknownComponentError

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared/data/mnist"
# From ../shared/data/mnist/README.md.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _need_shared() -> Path:
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"canonical MNIST IDX files not found at {SHARED_MNIST}")
    return SHARED_MNIST


@pytest.fixture(scope="module")
def idx() -> dict[str, np.ndarray]:
    return load_idx_dir(_need_shared())


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


# --- IDX parsing ---------------------------------------------------------------------------


def test_read_idx_raw_and_gz(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(arr, 0x08))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(arr, 0x08)))
    for name in ("a", "a.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, arr)

    ints = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "i").write_bytes(_idx_bytes(ints, 0x0C))
    np.testing.assert_array_equal(read_idx(tmp_path / "i"), [1, -2, 70000])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "truncated"),  # 3 of 5 data bytes
        (b"\x00\x00\x08\x03\x00\x00", "header is truncated"),
        (b"GIF89a garbage", "bad magic"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01x", "unknown type code"),
        (b"\x1f\x8b\x08\x00garbage", "not a valid gzip"),
    ],
)
def test_read_idx_corrupt(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(_idx_bytes(np.zeros((50, 28, 28), np.uint8), 0x08))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a valid gzip"):
        read_idx(path)


# --- pooling and thresholds ----------------------------------------------------------------


def test_pool2x2_matches_loop() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    images[0] = 255  # the maximum sum must not overflow
    expected = np.zeros((3, 14, 14), dtype=np.int64)
    for n in range(3):
        for i in range(14):
            for j in range(14):
                expected[n, i, j] = sum(int(images[n, 2 * i + a, 2 * j + b]) for a in (0, 1) for b in (0, 1))
    out = pool2x2(images)
    assert out.dtype == np.uint16 and out.shape == (3, 14, 14)
    np.testing.assert_array_equal(out, expected)
    assert out[0].max() == 1020


def test_threshold_boundary_is_exact() -> None:
    levels = np.array([[0, 511, 512, 513, 1020]], dtype=np.uint16)
    grey = GreyImages(levels, np.zeros(1, np.uint8), 1020, (1, 5))
    bits = BINARIZERS.get("threshold").prepare(grey, "cpu")
    assert bits.tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0]]  # mean 128 -> 0, mean 128.25 -> 1

    grey28 = GreyImages(np.array([[127, 128, 129, 255]], np.uint8), np.zeros(1, np.uint8), 255, (1, 4))
    assert BINARIZERS.get("threshold").prepare(grey28, "cpu").tolist() == [[0.0, 0.0, 1.0, 1.0]]


# --- the embedded copy ---------------------------------------------------------------------


def test_embedded_layout_and_readonly() -> None:
    emb = load_embedded()
    assert emb["train_images"].shape == (60000, 14, 14) and emb["train_images"].dtype == np.uint16
    assert emb["test_images"].shape == (10000, 14, 14)
    assert emb["train_labels"].dtype == np.uint8 and emb["test_labels"].shape == (10000,)
    assert int(emb["train_images"].max()) <= 1020
    assert not emb["train_images"].flags.writeable
    assert load_embedded() is emb  # cached


def test_embedded_sha_constant_matches_file() -> None:
    assert hashlib.sha256(EMBEDDED_PATH.read_bytes()).hexdigest() == EMBEDDED_SHA256


def test_label_counts_match_readme() -> None:
    emb = load_embedded()
    assert np.bincount(emb["train_labels"], minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(emb["test_labels"], minlength=10).tolist() == TEST_COUNTS


def test_embedded_equals_pooled_idx(idx: dict[str, np.ndarray]) -> None:
    emb = load_embedded()
    for split in ("train", "test"):
        np.testing.assert_array_equal(emb[f"{split}_images"], pool2x2(idx[f"{split}_images"]))
        np.testing.assert_array_equal(emb[f"{split}_labels"], idx[f"{split}_labels"])


def test_embedded_threshold_equals_float_mean(idx: dict[str, np.ndarray]) -> None:
    """Independent check: float mean of each 2x2 block of the raw images > 128."""
    grey = DATASETS.get("mnist14")(None)
    for split in ("train", "test"):
        raw = idx[f"{split}_images"].astype(np.float64)
        expected = raw.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)) > 128
        bits = BINARIZERS.get("threshold").prepare(grey[split], "cpu").numpy()
        np.testing.assert_array_equal(bits, expected.reshape(-1, 196).astype(np.float32))


@pytest.mark.slow
def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    root = _need_shared()
    out = tmp_path / "m14.bin.gz"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts/build_mnist14.py"), "--root", str(root), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == EMBEDDED_SHA256
    assert out.read_bytes() == EMBEDDED_PATH.read_bytes()
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind


def test_embedded_corrupt_is_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaebench.data import mnist

    bad = tmp_path / "mnist14.bin.gz"
    bad.write_bytes(b"not the file")
    monkeypatch.setattr(mnist, "EMBEDDED_PATH", bad)
    mnist.load_embedded.cache_clear()
    try:
        with pytest.raises(DataError, match="corrupt.*build_mnist14.py"):
            mnist.load_embedded()
        monkeypatch.setattr(mnist, "EMBEDDED_PATH", tmp_path / "absent.bin.gz")
        with pytest.raises(DataError, match="missing.*build_mnist14.py"):
            mnist.load_embedded()
    finally:
        mnist.load_embedded.cache_clear()


# --- IDX folder errors ---------------------------------------------------------------------


@pytest.fixture
def idx_copy(tmp_path: Path) -> Path:
    root = _need_shared()
    dest = tmp_path / "mnist"
    dest.mkdir()
    for name in MNIST_FILES.values():
        shutil.copy(root / f"{name}.gz", dest / f"{name}.gz")
    return dest


def test_md5_mismatch(idx_copy: Path) -> None:
    path = idx_copy / "t10k-labels-idx1-ubyte.gz"
    labels = bytearray(gzip.decompress(path.read_bytes()))
    labels[100] = (labels[100] + 1) % 10  # still a valid IDX file, but not MNIST
    path.write_bytes(gzip.compress(bytes(labels)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*md5.*27ae3e4e09519cfbb04c329615203637"):
        load_idx_dir(idx_copy)
    assert load_idx_dir(idx_copy, verify=False)["test_labels"].shape == (10000,)


def test_uncompressed_file_is_found(idx_copy: Path) -> None:
    gz = idx_copy / "t10k-labels-idx1-ubyte.gz"
    (idx_copy / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    assert load_idx_dir(idx_copy)["test_labels"].shape == (10000,)


def test_missing_file_and_folder(idx_copy: Path, tmp_path: Path) -> None:
    (idx_copy / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*not found.*VAEBENCH_DATA"):
        load_idx_dir(idx_copy)
    with pytest.raises(DataError, match="does not exist.*data.root.*VAEBENCH_DATA"):
        load_idx_dir(tmp_path / "nowhere")


def test_mnist28_needs_a_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAEBENCH_DATA", raising=False)
    with pytest.raises(DataError, match="mnist28.*VAEBENCH_DATA"):
        DATASETS.get("mnist28")(None)


def test_mnist28_and_mnist14_from_root(monkeypatch: pytest.MonkeyPatch) -> None:
    root = _need_shared()
    monkeypatch.setenv("VAEBENCH_DATA", str(root))
    d28 = DATASETS.get("mnist28")(None)
    assert d28["train"].images.shape == (60000, 784) and d28["train"].max_level == 255
    assert d28["test"].shape == (28, 28)
    d14 = DATASETS.get("mnist14")(str(root))
    emb = DATASETS.get("mnist14")(None)
    np.testing.assert_array_equal(d14["test"].images, emb["test"].images)
    assert emb["train"].max_level == 1020 and emb["train"].shape == (14, 14)


def test_unknown_names() -> None:
    with pytest.raises(UnknownComponentError, match="mnist14"):
        DATASETS.get("mnist15")
    with pytest.raises(UnknownComponentError, match="dynamic"):
        BINARIZERS.get("dynamc")


# --- subsets -------------------------------------------------------------------------------


def test_select_per_class() -> None:
    labels = load_embedded()["train_labels"]
    a = select_per_class(labels, 100, seed=1)
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
    assert np.bincount(labels[a], minlength=10).tolist() == [100] * 10
    np.testing.assert_array_equal(a, select_per_class(labels, 100, seed=1))
    assert not np.array_equal(a, select_per_class(labels, 100, seed=2))
    assert len(select_per_class(labels, None, seed=1)) == 60000
    with pytest.raises(DataError, match="5421"):  # digit 5 is the smallest class
        select_per_class(labels, 6000, seed=1)


def test_select_validation() -> None:
    np.testing.assert_array_equal(select_validation(10000, 3), [0, 1, 2])
    assert len(select_validation(10000, None)) == 10000
    with pytest.raises(DataError, match="10000"):
        select_validation(10000, 10001)


def test_load_splits() -> None:
    s = load_splits("mnist14", None, per_class=10, data_seed=0, val_size=500, val_from="test")
    assert len(s["train"]) == 100 and len(s["val"]) == 500 and len(s["test"]) == 10000
    np.testing.assert_array_equal(s["val"].images, s["test"].images[:500])
    assert s["train"].images.shape == (100, 196) and s["train"].max_level == 1020


def test_validation_from_train_is_held_out_and_disjoint_from_test() -> None:
    whole = DATASETS.get("mnist14")(None)["train"]
    s = load_splits("mnist14", None, per_class=100, data_seed=3, val_size=2000, val_from="train")
    t = load_splits("mnist14", None, per_class=100, data_seed=3, val_size=2000, val_from="test")
    # the same training images as under val_from: test; validation never among them
    np.testing.assert_array_equal(s["train"].images, t["train"].images)
    assert len(s["val"]) == 2000 and len(s["test"]) == 10000
    train_idx, val_idx = split_train(whole.labels, 100, 2000, 3)
    assert not set(train_idx) & set(val_idx)
    np.testing.assert_array_equal(s["val"].images, whole.images[val_idx])
    # chosen by data.seed, reproducibly; another seed draws other images
    again = split_train(whole.labels, 100, 2000, 3)[1]
    np.testing.assert_array_equal(again, val_idx)
    assert len(set(split_train(whole.labels, 100, 2000, 4)[1]) & set(val_idx)) < 1000
    # per_class null: carved out of the whole split, the rest trains
    tr, va = split_train(whole.labels, None, 10_000, 0)
    assert len(tr) == 50_000 and len(va) == 10_000 and not set(tr) & set(va)
    with pytest.raises(DataError, match="leaves only 5790 training images out"):
        split_train(whole.labels, 5421, 6000, 0)  # 10 x 5,421 train, 5,790 left out
    with pytest.raises(ConfigError, match="needs a data.val_size"):
        split_train(whole.labels, None, None, 0)


# --- binarizers ----------------------------------------------------------------------------


def test_dynamic_binarization() -> None:
    grey = load_splits("mnist14", None, per_class=20, data_seed=0, val_size=10)["train"]
    dyn = BINARIZERS.get("dynamic")
    assert dyn.fixed is False and BINARIZERS.get("threshold").fixed is True
    probs = dyn.prepare(grey, "cpu")
    assert probs.dtype == torch.float32 and probs.shape == (200, 196)
    np.testing.assert_allclose(probs.numpy(), grey.images / 1020.0, rtol=1e-6)

    draw = [dyn.sample(probs, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])
    assert set(draw[0].unique().tolist()) <= {0.0, 1.0}

    g = torch.Generator().manual_seed(0)
    mean = torch.stack([dyn.sample(probs, g) for _ in range(400)]).mean(0)
    assert not torch.equal(dyn.sample(probs, g), dyn.sample(probs, g))
    err = (mean - probs).abs()  # 400 draws: sd <= 0.025 per pixel
    assert err.max() < 0.15 and err.mean() < 0.02

    thr = BINARIZERS.get("threshold")
    fixed = thr.prepare(grey, "cpu")
    assert thr.sample(fixed, None) is fixed


def test_a_dataset_without_checksums_is_identified_by_its_images(tmp_path) -> None:
    """Two folders with the same files are one run; a changed image is another (not the path)."""
    from vaebench.config import resolve
    from vaebench.data.datasets import GreyImages

    name = "npz_digits_for_test"
    if name not in DATASETS:
        @DATASETS.register(name)
        def npz_digits(root):
            a = np.load(Path(root) / "digits.npz")
            return {s: GreyImages(a[f"{s}_x"], a[f"{s}_y"], 255, (14, 14)) for s in ("train", "test")}

    rng = np.random.default_rng(0)
    arrays = {f"{s}_{k}": (rng.integers(0, 256, (n, 196)) if k == "x" else rng.integers(0, 10, n)).astype(np.uint8)
              for s, n in (("train", 300), ("test", 50)) for k in ("x", "y")}
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / "digits.npz", **arrays)
    arrays["test_x"][0, 0] ^= 1
    np.savez(tmp_path / "c" / "digits.npz", **arrays)

    def run_id(folder):
        return resolve({"data": {"dataset": name, "root": str(tmp_path / folder), "per_class": None,
                                 "val_size": 20}}).run_hash()

    assert run_id("a") == run_id("b") != run_id("c")
