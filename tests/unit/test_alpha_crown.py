"""alpha-CROWN (auto_LiRPA's CROWN-Optimized) in evaluation: sound, at least CROWN, and reported per verifier."""
import pytest
import torch
from torch import nn

from lirpa_reweight import BoundedClassifier
from lirpa_reweight._compat import patches as compat
from lirpa_reweight.evaluation.robustness import evaluate_classifier
from lirpa_reweight.core.margins import logit_margins


def mlp_classifier(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 16), nn.BatchNorm1d(16),
                          nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[4].running_mean.uniform_(-0.2, 0.2)
        model[4].running_var.uniform_(0.5, 1.5)
    return BoundedClassifier(model.eval(), torch.rand(2, 1, 6, 6), device="cpu", mean=[0.5], std=[0.3]).eval()


def lowest_margins_found(classifier, x, y, eps, samples=256, pgd_steps=30):
    """Per example and class, the smallest margin seen at random points and corners of the ball and along PGD."""
    low, high = classifier.input_box(x, eps)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        found = logit_margins(classifier(x), y)
        for _ in range(samples):
            point = torch.where(torch.rand(x.shape, generator=gen) < 0.5, high, low)
            point = torch.where(torch.rand(x.shape, generator=gen) < 0.2, low + (high - low) * torch.rand(
                x.shape, generator=gen), point)
            found = torch.minimum(found, logit_margins(classifier(point), y))
    for column in range(found.shape[1]):  # PGD on each margin separately
        point = (low + high) / 2
        for _ in range(pgd_steps):
            point.requires_grad_(True)
            (grad,) = torch.autograd.grad(logit_margins(classifier(point), y)[:, column].sum(), point)
            point = torch.max(torch.min(point.detach() - 0.1 * (high - low) * grad.sign(), high), low)
            with torch.no_grad():
                found = torch.minimum(found, logit_margins(classifier(point), y))
    return found


@pytest.mark.parametrize("eps", [0.02, 0.08])
def test_alpha_crown_is_sound_and_at_least_crown(eps):
    classifier = mlp_classifier()
    x, y = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        crown = classifier.margin_lower_bounds(x, y, eps, "CROWN")
        before = [p.requires_grad for p in classifier.model.parameters()]
        alpha = classifier.margin_lower_bounds(x, y, eps, "alpha-CROWN")
    assert (alpha >= crown - 1e-5).all()
    # The slopes do move (they could not with torch's zero clamp gradient at 0 and 1: see compat).
    assert (alpha > crown + 1e-4).any()
    assert (alpha <= lowest_margins_found(classifier, x, y, eps) + 1e-5).all()
    assert all(p.grad is None for p in classifier.model.parameters())  # no trace on the model
    assert [p.requires_grad for p in classifier.model.parameters()] == before


def test_the_alpha_slope_patch_is_installed_where_torch_needs_it():
    if compat._clamp_blocks_boundary_gradient():
        assert "auto_LiRPA.operators.BoundRelu._relu_mask_alpha" in compat.APPLIED


def test_more_iterations_never_loosen_and_the_count_reaches_auto_lirpa():
    classifier = mlp_classifier()
    x, y = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(2)), torch.tensor([3, 2, 1, 0])
    bounds = {}
    for iterations in (2, 30):
        classifier.bounded.set_bound_opts({"optimize_bound_args": {"iteration": iterations}})
        with torch.no_grad():
            bounds[iterations] = classifier.margin_lower_bounds(x, y, 0.08, "alpha-CROWN")
    assert (bounds[30] >= bounds[2] - 1e-5).all() and (bounds[30] > bounds[2] + 1e-4).any()


def test_evaluation_reports_which_verifier_certified_each_example():
    classifier = mlp_classifier()
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.rand(8, 1, 6, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen), None)
               for _ in range(2)]
    # A radius where IBP certifies little and the linear bounds more: every column says something.
    result = evaluate_classifier(classifier, batches, 0.01, methods=["IBP", "CROWN", "alpha-CROWN"], pgd_steps=0,
                                 alpha_crown_iterations=10, progress=False)
    by = result["verified_by"]
    assert list(by) == ["IBP", "CROWN", "alpha-CROWN"]
    total = result["num_examples"]
    assert sum(by.values()) == round((1 - result["verified_error"]) * total)
    assert by["IBP"] == round((1 - result["verified_error_by_method"]["IBP"]) * total)
    # alpha-CROWN is at least CROWN, so its own count is at least CROWN's, and the union is alpha-CROWN's.
    errors = result["verified_error_by_method"]
    assert errors["alpha-CROWN"] <= errors["CROWN"] + 1e-9
    assert result["verified_error"] == pytest.approx(min(errors.values()))

    # Too big for full CROWN: both linear-bound methods are skipped, with the reason, and count nothing.
    skipped = evaluate_classifier(classifier, batches, 0.01, methods=["IBP", "alpha-CROWN"], pgd_steps=0,
                                  crown_max_relu_units=10, progress=False)
    assert "alpha-CROWN" in skipped["skipped"] and skipped["verified_by"]["alpha-CROWN"] is None
    assert skipped["verified_error_by_method"]["alpha-CROWN"] is None
    with pytest.raises(ValueError, match="bad value alpha_crown_iterations=0: an integer >= 1"):
        evaluate_classifier(classifier, batches, 0.01, methods=["alpha-CROWN"], alpha_crown_iterations=0)
