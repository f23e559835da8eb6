"""Rebuild vaebench/data/mnist14.bin.gz from the canonical MNIST IDX files.

The output is byte-identical on every run, so its sha256 can live in the source
(vaebench.data.mnist.EMBEDDED_SHA256); paste the printed sha256 there after a rebuild.

    python scripts/build_mnist14.py [--root DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # works from a checkout without `pip install -e`

from vaebench.data.mnist import DATA_ENV, EMBEDDED_PATH, EMBEDDED_SHA256, build_embedded  # noqa: E402
from vaebench.errors import DataError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    default_root = os.environ.get(DATA_ENV) or str(REPO.parent / "shared" / "data" / "mnist")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default_root, help=f"folder with the IDX files (default: {default_root})")
    parser.add_argument("--out", default=str(EMBEDDED_PATH), help=f"output file (default: {EMBEDDED_PATH})")
    args = parser.parse_args(argv)
    try:
        sha = build_embedded(args.root, args.out)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(sha)
    if sha != EMBEDDED_SHA256:
        print(f"note: set EMBEDDED_SHA256 = {sha!r} in vaebench/data/mnist.py", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
