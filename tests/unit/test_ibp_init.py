"""IBP initialisation: Shi et al.'s per-layer std, what stays untouched, and the interval growth it is for."""
import math

import pytest
import torch
from torch import nn

from lirpa_reweight.training import build
from lirpa_reweight.fast.ibp_init import apply_init, ibp_init_, ibp_std
from lirpa_reweight.models import MODELS, build_model


def big_net():
    # Enough weights per layer that the empirical std is within ~1% (Linear) / ~3% (Conv) of the truth.
    return nn.Sequential(
        nn.Conv2d(16, 64, 5), nn.BatchNorm2d(64), nn.ReLU(), nn.Flatten(),
        nn.Linear(64, 2000), nn.BatchNorm1d(2000), nn.ReLU(),
        nn.Linear(2000, 500), nn.ReLU(),
        nn.Linear(500, 10),
    )


def test_every_hidden_weight_follows_the_formula_and_biases_are_kept():
    torch.manual_seed(0)
    net = big_net()
    biases = [layer.bias.clone() for layer in (net[0], net[4], net[7])]
    ibp_init_(net)
    conv, first, second = net[0], net[4], net[7]
    # fan_in is in_channels * kh * kw for a convolution, in_features for a Linear.
    for layer, fan_in, tolerance in ((conv, 16 * 25, 0.03), (first, 64, 0.01), (second, 2000, 0.01)):
        expected = math.sqrt(2 * math.pi) / fan_in
        assert ibp_std(layer.weight) == pytest.approx(expected)
        assert layer.weight.std().item() == pytest.approx(expected, rel=tolerance)
        assert abs(layer.weight.mean().item()) < 5 * expected / math.sqrt(layer.weight.numel())
    # Shi et al.'s ibp_init redraws weights only.
    for layer, bias in zip((net[0], net[4], net[7]), biases):
        assert torch.equal(layer.bias, bias)


def test_last_layer_and_batch_norm_are_untouched():
    torch.manual_seed(0)
    net = big_net()
    with torch.no_grad():
        for bn in (net[1], net[5]):  # non-default BN values, so that a reset would show
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
            bn.running_mean.uniform_(-1, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert ibp_init_(net) is net
    after = net.state_dict()
    untouched = [k for k in before if k.startswith(("1.", "5.", "9."))]
    assert len(untouched) == 12  # two BatchNorms (5 entries each) and the last Linear (2)
    for key in untouched:
        assert torch.equal(before[key], after[key]), key
    for key in ("0.weight", "4.weight", "7.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_interval_radius_doubles_through_a_layer_as_the_init_intends():
    # With w ~ N(0, 2*pi/n^2), E[sum_j |w_ij|] * r = n * sqrt(2*pi)/n * sqrt(2/pi) * r = 2r: the ReLU then roughly
    # halves it, so interval widths neither explode nor vanish at initialisation (Shi et al. sec. 3.2).
    torch.manual_seed(0)
    layer = ibp_init_(nn.Sequential(nn.Linear(400, 4000), nn.Linear(4000, 2)))[0]
    radius = 0.1
    out_radius = layer.weight.abs().sum(1) * radius
    assert out_radius.mean().item() == pytest.approx(2 * radius, rel=0.01)


def test_residual_layers_get_half_the_std():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(100, 3000), nn.Linear(100, 3000), nn.Linear(3000, 10))
    ibp_init_(net, residual_layers=["1"])
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 * math.pi) / 100, rel=0.02)
    assert net[1].weight.std().item() == pytest.approx(0.5 * math.sqrt(2 * math.pi) / 100, rel=0.02)
    with pytest.raises(ValueError, match=r"residual_layers \['7'\]"):
        ibp_init_(net, residual_layers=["7"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_initialises_with_its_logit_layer_kept(name):
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), 10)
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    kept = last.weight.clone()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    ibp_init_(model)
    assert torch.equal(last.weight, kept)
    assert first.weight.std().item() == pytest.approx(ibp_std(first.weight), rel=0.3)  # few weights: loose


def test_the_builder_applies_the_init_by_name():
    info = dict(in_shape=[1, 28, 28], num_classes=10, mean=None, std=None)
    torch.manual_seed(0)
    default = build.build_classifier("cnn_4layer_bn", info, device="cpu")
    torch.manual_seed(0)
    ibp = build.build_classifier("cnn_4layer_bn", info, device="cpu", init="ibp")
    linear_default, linear_ibp = default.model[7], ibp.model[7]  # Linear(32*7*7, 100)
    assert linear_ibp.weight.std().item() == pytest.approx(math.sqrt(2 * math.pi) / (32 * 7 * 7), rel=0.02)
    assert linear_default.weight.std().item() > 2 * linear_ibp.weight.std().item()
    with pytest.raises(ValueError, match=r"bad value init='xavier': one of \['default', 'ibp'\]"):
        apply_init(nn.Linear(2, 2), "xavier")
