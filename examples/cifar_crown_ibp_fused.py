"""CIFAR-10 CROWN-IBP training with auto_LiRPA's loss fusion, as its users write it, plus the two hooks.

Loss fusion (auto_LiRPA's ``CrossEntropyWrapper`` and bound option ``loss_fusion``, the default of auto_LiRPA's
CIFAR example) bounds the cross-entropy itself: per example an upper bound ``u_i`` of the robust CE instead of the
C-1 margins. The hooks then read the fused margin ``2 exp(-u_i) - 1`` (docs/loss-fusion.md). The lines marked
``# lirpa_reweight`` are what adopting them takes.

    python examples/cifar_crown_ibp_fused.py --synthetic --steps 40        # CIFAR-shaped random data, ~1 min on CPU
    python examples/cifar_crown_ibp_fused.py --data-root ~/data/cifar10    # torchvision's CIFAR10 (downloads)

The defaults are a short demonstration (4 epochs, eps 2/255). The paper's CIFAR CROWN-IBP setting is eps_train
8.8/255 on DM-large for thousands of epochs: ``python -m lirpa_reweight.train +experiment=cifar_crownibp
bound.loss_fusion=true``.
"""
import argparse
import os

import torch
import torchvision.datasets as datasets
import torchvision.transforms as transforms
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lirpa_reweight  # lirpa_reweight (first: it also patches auto_LiRPA for current torch)
from auto_LiRPA import BoundedModule, BoundedTensor, CrossEntropyWrapper
from auto_LiRPA.eps_scheduler import SmoothedScheduler
from auto_LiRPA.perturbations import PerturbationLpNorm

NUM_CLASS = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("LIRPA_REWEIGHT_DATA", "~/.cache/lirpa_reweight/data"))
    parser.add_argument("--synthetic", action="store_true", help="a learnable CIFAR-shaped random stand-in")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--eps", type=float, default=2 / 255, help="target training eps (pixel units)")
    parser.add_argument("--bound-type", default="CROWN-IBP", choices=["IBP", "CROWN-IBP"])
    parser.add_argument("--num-epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="total training steps; default: full epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scheduler-opts", default="start=2,length=2,mid=0.4")
    parser.add_argument("--gamma", type=float, default=5.0, help="re-weighting sharpness (0: off)")
    parser.add_argument("--maxoff", type=float, default=0.01, help="auto eps's largest offset (0: off)")
    return parser.parse_args(argv)


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, NUM_CLASS),
    )


def load_data(args):
    if args.synthetic:  # one random prototype image per class, plus noise
        gen = torch.Generator().manual_seed(0)
        labels = torch.arange(2400) % NUM_CLASS
        images = (torch.rand(NUM_CLASS, 3, 32, 32, generator=gen)[labels]
                  + 0.1 * torch.randn(2400, 3, 32, 32, generator=gen)).clamp(0, 1)
        train_data, test_data = TensorDataset(images[:2000], labels[:2000]), TensorDataset(images[2000:], labels[2000:])
    else:
        root = os.path.expanduser(args.data_root)
        train_data = datasets.CIFAR10(root, train=True, download=True, transform=transforms.ToTensor())
        test_data = datasets.CIFAR10(root, train=False, download=True, transform=transforms.ToTensor())
    return tuple(lirpa_reweight.IndexedDataset(d) for d in (train_data, test_data))  # lirpa_reweight: (x, y, index)


def exp_node(bounded):
    """The Exp node of the wrapper's graph: its ``max_input`` is the shift loss fusion subtracts before exp."""
    return next(node for node in bounded.modules() if type(node).__name__ == "BoundExp")


def train_epoch(model_loss, loader, eps_scheduler, reweight, args, opt, max_batches):
    """One training pass with loss fusion; returns the mean loss and the spread of the eq. 7 weights seen."""
    model_loss.train()
    eps_scheduler.train()
    total, seen, weights = 0.0, 0, []
    for i, (data, labels, idx) in enumerate(loader):  # lirpa_reweight
        if i == max_batches:
            break
        data, labels = data.to(args.device), labels.to(args.device)
        eps_scheduler.step_batch()
        eps = eps_scheduler.get_eps()
        eps_i = eps_scheduler.eps(idx).view(-1, 1, 1, 1)  # lirpa_reweight: per-example radius
        ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(data - eps_i).clamp(0, 1),
                                 x_U=(data + eps_i).clamp(0, 1))
        output = model_loss(BoundedTensor(data, ptb), labels)  # sum_j exp(z_j - z_y - M), M the shift
        loss = (torch.log(output) + exp_node(model_loss).max_input).mean()  # the clean CE
        if eps > 1e-20:  # below that, natural training: no bounds needed
            # CROWN-IBP mixed with IBP as in auto_LiRPA's examples; both passes' shifts taken into account.
            factor = (eps_scheduler.get_max_eps() - eps) / eps_scheduler.get_max_eps()
            u = lirpa_reweight.fused_losses(model_loss, args.bound_type, beta=factor)  # (B,) robust CE bounds
            weighted = reweight.compute_from_losses(u, lirpa_reweight.fused_margin(u.detach()))  # lirpa_reweight
            loss = weighted.loss  # lirpa_reweight
            eps_scheduler.update(idx, weighted.margins)  # lirpa_reweight: Algorithm 1 on the fused margins
            weights.append(weighted.weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, seen = total + loss.item() * len(labels), seen + len(labels)
    weights = torch.cat(weights) if weights else torch.ones(1)
    return {"loss": total / max(seen, 1), "weight_min": weights.min().item(), "weight_max": weights.max().item()}


def margin_spec(labels):
    """C matrix: rows e_y - e_j for every j != y, so that the bounds are on z_y - z_j."""
    eye = torch.eye(NUM_CLASS, device=labels.device)
    c = eye[labels].unsqueeze(1) - eye.unsqueeze(0)
    others = labels.unsqueeze(1) != torch.arange(NUM_CLASS, device=labels.device).unsqueeze(0)
    return c[others].view(labels.size(0), NUM_CLASS - 1, NUM_CLASS)


def evaluate(model, loader, eps, args):
    """Clean and IBP-verified error at ``eps``, certified on the unfused margins (a plain BoundedModule)."""
    model.eval()
    errors, verified, seen = 0, 0, 0
    with torch.no_grad():
        for data, labels, _ in loader:
            data, labels = data.to(args.device), labels.to(args.device)
            ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(data - eps).clamp(0, 1),
                                     x_U=(data + eps).clamp(0, 1))
            output = model(BoundedTensor(data, ptb))
            lb, _ = model.compute_bounds(IBP=True, C=margin_spec(labels), method=None)
            errors += (output.argmax(1) != labels).sum().item()
            verified += (lb > 0).all(1).sum().item()
            seen += len(labels)
    return {"clean_err": errors / seen, "verified_err": 1 - verified / seen}


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    train_data, test_data = load_data(args)
    train_loader = DataLoader(train_data, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_data, batch_size=200)
    epoch_length = len(train_loader)
    if args.steps is not None:
        epoch_length = min(epoch_length, -(-args.steps // args.num_epochs))

    model_ori = cnn()
    dummy = torch.zeros(2, 3, 32, 32)
    # The fused graph for training and a plain one for certifying: both hold model_ori's own parameters.
    model_loss = BoundedModule(CrossEntropyWrapper(model_ori), (dummy, torch.zeros(2, dtype=torch.long)),
                               bound_opts={"loss_fusion": True}, device=args.device)
    model = BoundedModule(model_ori, dummy, device=args.device)
    opt = torch.optim.Adam(model_loss.parameters(), lr=args.lr)
    eps_scheduler = lirpa_reweight.AutoEpsScheduler(SmoothedScheduler(args.eps, args.scheduler_opts), len(train_data),
                                                    maxoff=args.maxoff, device=args.device)  # lirpa_reweight
    reweight = lirpa_reweight.WeightedRobustLoss(gamma=args.gamma, alpha=0.1)  # lirpa_reweight

    for epoch in range(1, args.num_epochs + 1):
        eps_scheduler.train()
        eps_scheduler.step_epoch()
        eps_scheduler.set_epoch_length(epoch_length)
        stats = train_epoch(model_loss, train_loader, eps_scheduler, reweight, args, opt, epoch_length)
        stats.update(eps_scheduler.stats())
        print(f"epoch {epoch} eps {eps_scheduler.get_eps():.5f} " + " ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    stats.update(evaluate(model, test_loader, args.eps, args))
    print("test " + " ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    return stats


if __name__ == "__main__":
    main()
