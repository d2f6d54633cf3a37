"""The model zoo: shapes, hand-counted parameters, argument checks, and sound IBP bounds through auto_LiRPA."""
import pytest
import torch
from torch import nn

from lirpa_reweight import BoundedClassifier
from lirpa_reweight.models import MODELS, build_model

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
SHAPES = {"mnist": MNIST, "cifar": CIFAR}
ALLOWED_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.Flatten, nn.Linear)


def conv_params(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def linear_params(n_in, n_out):
    return n_in * n_out + n_out


def count(model):
    return sum(p.numel() for p in model.parameters())


def clean_margins(logits, y):
    """``z_y - z_j`` for ``j != y`` in class order: the layout of ``margin_lower_bounds``."""
    others = y.unsqueeze(1) != torch.arange(logits.shape[1]).unsqueeze(0)
    diffs = logits.gather(1, y.unsqueeze(1)) - logits
    return diffs[others].view(len(y), -1)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_gives_logits(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=10).eval()
    assert isinstance(model, nn.Sequential)
    assert all(isinstance(layer, ALLOWED_LAYERS) for layer in model)
    # auto_LiRPA needs out-of-place ops.
    assert not any(getattr(layer, "inplace", False) for layer in model)
    with torch.no_grad():
        logits = model(torch.rand(2, *shape))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_class_count_sets_the_last_layer():
    model = build_model("cnn_4layer", CIFAR, num_classes=7)
    assert model[-1].out_features == 7
    assert model(torch.rand(3, *CIFAR)).shape == (3, 7)


def test_dm_small_mnist_parameter_count():
    # VALID padding: 28 -> (28-4)//2+1 = 13 -> (13-4)//1+1 = 10, so 32*10*10 = 3200 features.
    expected = (conv_params(1, 16, 4)           # 272
                + conv_params(16, 32, 4)        # 8224
                + linear_params(32 * 10 * 10, 100)  # 320100
                + linear_params(100, 10))       # 1010
    assert expected == 329606
    assert count(build_model("dm_small", MNIST)) == expected


def test_cnn_4layer_mnist_parameter_count():
    # padding 1, stride 2: 28 -> (28+2-4)//2+1 = 14 -> 7, so 32*7*7 = 1568 features.
    expected = conv_params(1, 16, 4) + conv_params(16, 32, 4) + linear_params(32 * 7 * 7, 100) + linear_params(100, 10)
    assert expected == 272 + 8224 + 156900 + 1010 == 166406
    assert count(build_model("cnn_4layer", MNIST)) == expected


def test_dm_medium_mnist_parameter_count():
    # VALID padding: 28 -> 26 -> (26-4)//2+1 = 12 -> 10 -> (10-4)//2+1 = 4, so 64*4*4 = 1024 features.
    expected = (conv_params(1, 32, 3) + conv_params(32, 32, 4) + conv_params(32, 64, 3) + conv_params(64, 64, 4)
                + linear_params(64 * 4 * 4, 512) + linear_params(512, 512) + linear_params(512, 10))
    assert count(build_model("dm_medium", MNIST)) == expected


def test_dm_large_and_cnn_7layer_cifar_parameter_counts():
    # SAME padding, one stride-2 conv: 32 -> 16, so 128*16*16 = 32768 features (DM-large's well-known ~17.2M).
    dm_large = (conv_params(3, 64, 3) + conv_params(64, 64, 3) + conv_params(64, 128, 3)
                + 2 * conv_params(128, 128, 3) + linear_params(128 * 16 * 16, 512) + linear_params(512, 10))
    assert dm_large == 17190602
    assert count(build_model("dm_large", CIFAR)) == dm_large
    # cnn_7layer adds a BatchNorm (weight and bias per channel) after each of the 5 convs and the hidden Linear.
    batch_norm = 2 * (64 + 64 + 128 + 128 + 128) + 2 * 512
    assert count(build_model("cnn_7layer", CIFAR)) == dm_large + batch_norm


def test_cnn_7layer_has_batch_norm_after_every_hidden_layer():
    layers = list(build_model("cnn_7layer", MNIST))
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.BatchNorm2d) and layers[i + 1].num_features == layer.out_channels
        if isinstance(layer, nn.Linear):
            assert isinstance(layers[i + 1], nn.BatchNorm1d) and layers[i + 1].num_features == layer.out_features
    assert isinstance(layers[-1], nn.Linear)


def test_padding_follows_the_sources():
    assert [m.padding for m in build_model("dm_small") if isinstance(m, nn.Conv2d)] == [(0, 0)] * 2
    assert [m.padding for m in build_model("dm_medium") if isinstance(m, nn.Conv2d)] == [(0, 0)] * 4
    assert [m.padding for m in build_model("dm_large") if isinstance(m, nn.Conv2d)] == [(1, 1)] * 5
    assert [m.padding for m in build_model("cnn_4layer") if isinstance(m, nn.Conv2d)] == [(1, 1)] * 2


def test_unknown_name_lists_the_allowed_names():
    with pytest.raises(ValueError, match="resnet_99") as info:
        build_model("resnet_99")
    for name in MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize("in_shape", [(28, 28), (1, 28, 28, 1), (0, 28, 28), (1, -28, 28), (1, 28.0, 28),
                                      (True, 28, 28), 28])
def test_bad_in_shape_is_refused(in_shape):
    with pytest.raises(ValueError, match="in_shape") as info:
        build_model("dm_small", in_shape)
    assert repr(in_shape) in str(info.value)


@pytest.mark.parametrize("num_classes", [1, 0, 2.0, "10"])
def test_bad_class_count_is_refused(num_classes):
    with pytest.raises(ValueError, match="num_classes") as info:
        build_model("dm_small", MNIST, num_classes)
    assert repr(num_classes) in str(info.value)


def test_input_too_small_for_the_convolutions_is_refused():
    with pytest.raises(ValueError, match=r"\(1, 6, 6\)"):
        build_model("dm_medium", (1, 6, 6))


# ---- through auto_LiRPA ----

def bounded(name, shape, batch=2):
    torch.manual_seed(0)
    model = build_model(name, shape).eval()
    x = torch.rand(batch, *shape)
    y = torch.arange(batch) % 10
    return BoundedClassifier(model, x, device="cpu"), model, x, y


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", sorted(MODELS))
def test_ibp_margin_bounds_are_below_clean_and_sampled_margins(name, shape):
    classifier, model, x, y = bounded(name, shape)
    eps = 0.01
    with torch.no_grad():
        logits, lb = classifier.certify(x, y, eps, method="IBP")
        assert torch.allclose(logits, model(x), atol=1e-5)
        assert lb.shape == (2, 9)
        assert (lb <= clean_margins(logits, y) + 1e-5).all()
        # Points of the (clamped) eps-box, corners included, must respect the bounds too.
        low, high = classifier.input_box(x, eps)
        for _ in range(4):
            corner = torch.where(torch.rand_like(x) < 0.5, low, high)
            assert (lb <= clean_margins(model(corner), y) + 1e-5).all()


def test_cnn_7layer_train_mode_bounds_use_the_batch_statistics():
    classifier, model, x, y = bounded("cnn_7layer", MNIST, batch=4)
    classifier.train()
    assert model.training
    with torch.no_grad():
        logits, lb = classifier.certify(x, y, 0.01, method="IBP")
        # Train-mode BatchNorm normalises by this batch's statistics, so the logits match a train-mode forward.
        assert torch.allclose(logits, model(x), atol=1e-4)
    assert (lb <= clean_margins(logits, y) + 1e-5).all()
