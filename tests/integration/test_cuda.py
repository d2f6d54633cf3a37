"""The CUDA path: run where a GPU is present, skipped (with the reason) elsewhere."""
import pytest
import torch
from torch import nn

import lirpa_reweight  # noqa: F401
from lirpa_reweight.core.bounds import BoundedClassifier

pytestmark = pytest.mark.cuda  # `pytest -m cuda` selects this file's tests wherever it moves

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 CUDA devices")


@needs_cuda
@pytest.mark.parametrize("method", ["IBP", "CROWN-IBP", "CROWN"])
def test_bounds_on_cuda_equal_bounds_on_cpu(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 10, (8,))
    eps = torch.linspace(0.0, 0.05, 8)
    results = []
    for device in ("cpu", "cuda"):
        clf = BoundedClassifier(model, torch.rand(2, 1, 6, 6), device=device, mean=[0.5], std=[0.25]).train()
        logits, lb = clf.certify(x, y, eps, method=method)
        results.append((logits.cpu(), lb.detach().cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-4)


@needs_two_gpus
def test_nccl_two_ranks_equal_one_process(tmp_path):
    from support import TINY_DDP, launch, metrics
    tiny = [arg for arg in TINY_DDP if not arg.startswith("trainer.device")] + ["trainer.device=cuda"]
    launch([*tiny, f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path, ranks=2)
    launch([*tiny, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path, ranks=1)
    for got, want in zip(metrics(tmp_path / "ddp"), metrics(tmp_path / "one")):
        assert got["world_size"] == 2
        for key in ("loss", "clean_error", "verified_error", "autoeps_mean_offset"):
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key
