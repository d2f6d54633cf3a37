"""Mistakes a user porting an existing auto_LiRPA loop makes, and the hints they get."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lirpa_reweight
from auto_LiRPA.eps_scheduler import LinearScheduler
from lirpa_reweight.data.datasets import DATASETS, IndexedDataset, dataset_info


def test_num_examples_given_as_len_loader_fails_at_the_first_index_past_it_with_a_hint():
    data = IndexedDataset(TensorDataset(torch.zeros(100, 1, 4, 4), torch.zeros(100, dtype=torch.long)),
                          dataset_info("synthetic", in_shape=(1, 4, 4)))
    loader = DataLoader(data, batch_size=10)
    scheduler = lirpa_reweight.AutoEpsScheduler(LinearScheduler(0.1, "start=1,length=1"), len(loader), maxoff=0.1,
                                                device="cpu")
    scheduler.train()
    batches = iter(loader)
    _, _, idx = next(batches)  # indices 0-9 fit in [0, 10)
    assert scheduler.eps(idx).shape == (10,)
    _, _, idx = next(batches)
    with pytest.raises(IndexError, match=r"num_examples must be len\(dataset\), not len\(loader\)"):
        scheduler.eps(idx)


def test_a_negative_index_gets_no_loader_hint():
    scheduler = lirpa_reweight.AutoEpsScheduler(LinearScheduler(0.1, "start=1,length=1"), 10, maxoff=0.1,
                                                device="cpu")
    with pytest.raises(IndexError) as raised:
        scheduler.eps(torch.tensor([-1]))
    assert "len(loader)" not in str(raised.value)


@pytest.mark.parametrize("spelling, key", [("MNIST", "mnist"), ("CIFAR", "cifar10"), ("CIFAR10", "cifar10"),
                                           ("cifar-10", "cifar10"), ("FashionMNIST", "fashion_mnist")])
def test_dataset_info_accepts_upstreams_and_torchvisions_spellings(spelling, key):
    assert dataset_info(spelling) == DATASETS[key]


def test_an_unknown_data_set_name_lists_the_names_known():
    with pytest.raises(ValueError) as raised:
        dataset_info("ImageNet")
    message = str(raised.value)
    assert "'ImageNet'" in message and all(name in message for name in ("mnist", "cifar10", "cifar", "synthetic"))
