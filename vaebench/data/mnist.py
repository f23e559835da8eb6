"""MNIST from the canonical IDX files, and the 14x14 copy embedded in the package.

The embedded copy stores 2x2 block *sums* (uint16, 0..1020) rather than means, so every
threshold on the mean (e.g. mean > 128) is an exact integer comparison (sum > 512).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

# Key in the returned dict -> IDX file name (without .gz).
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# MD5 of the *uncompressed* files, so a re-gzipped copy still verifies.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

MNIST_SIZES: dict[str, int] = {"train": 60_000, "test": 10_000}

DATA_ENV = "VAEBENCH_DATA"
EMBEDDED_PATH = Path(__file__).with_name("mnist14.bin.gz")
# sha256 of EMBEDDED_PATH; update after running scripts/build_mnist14.py.
EMBEDDED_SHA256 = "971090b33f23e96ae3aab72cefd1f28bb26f793142bae153972062c91690945c"

_HOW_TO_POINT = f"set data.root or the {DATA_ENV} environment variable to the folder with the MNIST IDX files"
_REBUILD = "the package file is corrupt: reinstall vaebench or rebuild it with `python scripts/build_mnist14.py`"

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """Raw file contents, gunzipped when the file is gzip (by magic, not by name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; {_HOW_TO_POINT}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a valid gzip file ({e}); replace it with a fresh copy of the MNIST files") from None


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    def bad(what: str) -> DataError:
        return DataError(f"{path} is not a valid IDX file: {what}; replace it with a fresh copy of the MNIST files")

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise bad("bad magic number")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise bad(f"unknown type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad("header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise bad(f"{len(data)} bytes but the header {dims} implies {expected} (truncated or padded)")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # native order, and a writable copy


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (gzip or raw); corrupt content is a DataError, not a numpy crash."""
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST file {name}(.gz) not found in {root}; {_HOW_TO_POINT}")


def load_idx_dir(root: str | os.PathLike[str], verify: bool = True) -> dict[str, np.ndarray]:
    """The four MNIST arrays from a folder, md5-checked so a wrong copy never trains silently."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"MNIST data folder {root} does not exist; {_HOW_TO_POINT}")
    out: dict[str, np.ndarray] = {}
    for key, name in MNIST_FILES.items():
        path = _find(root, name)
        data = _read_bytes(path)
        if verify:
            actual = hashlib.md5(data).hexdigest()
            if actual != MNIST_MD5[name]:
                raise DataError(
                    f"{path} has md5 {actual} (uncompressed) but MNIST {name} has md5 {MNIST_MD5[name]}; "
                    "replace it with a fresh copy of the MNIST files"
                )
        out[key] = _parse_idx(data, path)
    for split, n in MNIST_SIZES.items():
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if images.shape != (n, 28, 28) or images.dtype != np.uint8 or labels.shape != (n,) or labels.dtype != np.uint8:
            raise DataError(
                f"MNIST {split} files in {root} have shapes {images.shape}/{labels.shape}, "
                f"expected ({n}, 28, 28)/({n},) uint8; replace them with a fresh copy"
            )
    return out


def pool2x2(images: np.ndarray) -> np.ndarray:
    """Sum (not mean) of each 2x2 block, so thresholds on the mean stay exact integers."""
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"pool2x2 expects uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    n = images.shape[0]
    return images.reshape(n, 14, 2, 14, 2).sum(axis=(2, 4), dtype=np.uint16)


def pooled_arrays(idx: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """load_idx_dir's dict with the images replaced by their 14x14 block sums."""
    return {k: pool2x2(v) if k.endswith("_images") else v for k, v in idx.items()}


def encode_embedded(arrays: dict[str, np.ndarray]) -> bytes:
    """The embedded file's bytes: deterministic (gzip mtime 0, no name, fixed order and dtypes)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=9) as gz:
        for key in MNIST_FILES:
            dtype = "<u2" if key.endswith("_images") else "u1"
            np.lib.format.write_array(gz, np.ascontiguousarray(arrays[key], dtype=dtype), version=(1, 0))
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def load_embedded() -> dict[str, np.ndarray]:
    """The 14x14 sums shipped with the package; read-only because the cached arrays are shared."""
    try:
        raw = EMBEDDED_PATH.read_bytes()
    except OSError:
        raise DataError(f"{EMBEDDED_PATH} is missing; {_REBUILD}") from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != EMBEDDED_SHA256:
        raise DataError(f"{EMBEDDED_PATH} has sha256 {actual}, expected {EMBEDDED_SHA256}; {_REBUILD}")
    out: dict[str, np.ndarray] = {}
    with gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb") as gz:
        for key in MNIST_FILES:
            arr = np.lib.format.read_array(gz, allow_pickle=False)
            arr = arr.astype(np.uint16 if key.endswith("_images") else np.uint8, copy=False)
            arr.setflags(write=False)
            out[key] = arr
    return out


def build_embedded(root: str | os.PathLike[str], out: str | os.PathLike[str]) -> str:
    """Write the embedded file atomically (a crash never leaves half a file); return its sha256."""
    data = encode_embedded(pooled_arrays(load_idx_dir(root, verify=True)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()
