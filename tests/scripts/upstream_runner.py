"""Run one of upstream auto_LiRPA's example scripts on small synthetic data and record what the hooks saw.

    python upstream_runner.py OUT.json N_TRAIN N_TEST SCRIPT [SCRIPT ARGS...]

torchvision's MNIST and CIFAR10 are replaced by same-signature stand-ins that yield synthetic PIL images through
the script's own transforms, so the script itself runs unchanged (no download). OUT.json gets the sequence of
cross-entropy and WeightedRobustLoss values in call order, every batch's margins and eq. 7 weights, every AutoEpsScheduler's
final offsets and maxoff, and the radii each ``eps(idx)`` call returned.
"""
import json
import os
import runpy
import sys

import torch
import torchvision.datasets
from PIL import Image

import lirpa_reweight
from lirpa_reweight.data.datasets import SyntheticDataset

OUT, N_TRAIN, N_TEST, SCRIPT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), os.path.abspath(sys.argv[4])


class _Synthetic(torch.utils.data.Dataset):
    shape = None

    def __init__(self, root, train=True, download=False, transform=None):
        self.base = SyntheticDataset(N_TRAIN if train else N_TEST, self.shape, 10, seed=0, train=train)
        self.transform = transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        x, y = self.base[index]
        pixels = (x * 255).round().to(torch.uint8)
        image = Image.fromarray(pixels[0].numpy(), "L") if pixels.shape[0] == 1 else \
            Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")
        return (self.transform(image) if self.transform else image), y


class MNIST(_Synthetic):
    shape = (1, 28, 28)


class CIFAR10(_Synthetic):
    shape = (3, 32, 32)


torchvision.datasets.MNIST, torchvision.datasets.CIFAR10 = MNIST, CIFAR10

events, schedulers, radii, weights, margins = [], [], [], [], []


def _recording(cls, method, record):
    original = getattr(cls, method)

    def wrapper(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        record(self, out)
        return out

    setattr(cls, method, wrapper)


_recording(torch.nn.CrossEntropyLoss, "forward", lambda self, out: events.append(["ce", float(out)]))


def _record_weighted(self, out):
    events.append(["reweighted", float(out.loss)])
    weights.append(out.weights.tolist())
    margins.append(out.margins.tolist())


for _method in ("compute", "compute_from_losses"):  # every batch's loss and eq. 7 weights, fused or not
    _recording(lirpa_reweight.WeightedRobustLoss, _method, _record_weighted)

_recording(lirpa_reweight.AutoEpsScheduler, "__init__", lambda self, out: schedulers.append(self))
_recording(lirpa_reweight.AutoEpsScheduler, "eps", lambda self, out: radii.append(
    {"training": bool(self.is_training), "eps_base": float(self.get_eps()), "eps": out.tolist()}))

os.chdir(os.path.dirname(SCRIPT))  # the scripts import their models package and write checkpoints next to themselves
sys.path.insert(0, os.path.dirname(SCRIPT))
sys.argv = [SCRIPT] + sys.argv[5:]
torch.set_num_threads(1)
runpy.run_path(SCRIPT, run_name="__main__")

with open(OUT, "w") as f:
    json.dump({"events": events, "radii": radii, "weights": weights, "margins": margins,
               "schedulers": [{"num_examples": s.num_examples, "maxoff": s.maxoff, "offsets": s.offsets.tolist()}
                              for s in schedulers]}, f)
