"""Certified (IBP / CROWN-IBP) training on MNIST with auto_LiRPA, as its users write it, plus the two hooks.

The loop follows auto_LiRPA's examples/vision/simple_training.py: a BoundedModule, a
BoundedTensor with an L-inf PerturbationLpNorm, a C matrix of margins, compute_bounds,
the robust cross-entropy, and one of auto_LiRPA's eps schedulers. The lines marked
``# lirpa_reweight`` are all it takes to adopt the bound-based re-weighted loss
(WeightedRobustLoss) and the per-example auto-tuned eps (AutoEpsScheduler).

    python -m lirpa_reweight.data fetch-mnist          # MNIST into ~/.cache/lirpa_reweight/data, offline-friendly
    python examples/drop_in_auto_lirpa.py --steps 300  # a quick run: about a minute on CPU
    python examples/drop_in_auto_lirpa.py --synthetic --steps 300  # no MNIST needed

The defaults are a short demonstration (5 epochs, eps 0.1). The paper's MNIST IBP setting is
about ``--eps 0.4 --num-epochs 100 --batch-size 100 --scheduler-name LinearScheduler
--scheduler-opts start=4,length=17`` (and a learning-rate decay, left out here).
"""
import argparse
import os

import torch
import torchvision.datasets as datasets
import torchvision.transforms as transforms
from torch import nn
from torch.nn import CrossEntropyLoss
from torch.utils.data import DataLoader, TensorDataset

import lirpa_reweight  # lirpa_reweight (first: it also patches auto_LiRPA for current torch)
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.eps_scheduler import LinearScheduler, SmoothedScheduler  # noqa: F401 (picked by name)
from auto_LiRPA.perturbations import PerturbationLpNorm

NUM_CLASS = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("LIRPA_REWEIGHT_DATA", "~/.cache/lirpa_reweight/data"))
    parser.add_argument("--synthetic", action="store_true", help="a learnable random stand-in for MNIST")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.1, help="target training eps (pixel units)")
    parser.add_argument("--bound-type", default="IBP", choices=["IBP", "CROWN-IBP"])
    parser.add_argument("--num-epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="total training steps (spread over the epochs); default: full epochs")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scheduler-name", default="SmoothedScheduler",
                        choices=["LinearScheduler", "SmoothedScheduler"])
    parser.add_argument("--scheduler-opts", default="start=2,length=2")
    return parser.parse_args(argv)


def cnn_4layer():
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, NUM_CLASS),
    )


def margin_spec(labels):
    """C matrix: rows e_y - e_j for every j != y, so that the bounds are on z_y - z_j."""
    eye = torch.eye(NUM_CLASS, device=labels.device)
    c = eye[labels].unsqueeze(1) - eye.unsqueeze(0)
    others = labels.unsqueeze(1) != torch.arange(NUM_CLASS, device=labels.device).unsqueeze(0)
    return c[others].view(labels.size(0), NUM_CLASS - 1, NUM_CLASS)


def load_data(args):
    if args.synthetic:  # one random prototype image per class, plus noise
        gen = torch.Generator().manual_seed(0)
        labels = torch.arange(12000) % NUM_CLASS
        images = (torch.rand(NUM_CLASS, 1, 28, 28, generator=gen)[labels]
                  + 0.1 * torch.randn(12000, 1, 28, 28, generator=gen)).clamp(0, 1)
        train_data = TensorDataset(images[:10000], labels[:10000])
        test_data = TensorDataset(images[10000:], labels[10000:])
    else:
        root = os.path.expanduser(args.data_root)
        train_data = datasets.MNIST(root, train=True, download=True, transform=transforms.ToTensor())
        test_data = datasets.MNIST(root, train=False, download=True, transform=transforms.ToTensor())
    return tuple(lirpa_reweight.IndexedDataset(d) for d in (train_data, test_data))  # lirpa_reweight: (x, y, index)


def run_epoch(model, loader, eps_scheduler, args, opt=None, max_batches=None):
    """One pass over ``loader``: training when ``opt`` is given, else evaluation."""
    train = opt is not None
    model.train(train)
    if train:
        eps_scheduler.train()
    else:
        eps_scheduler.eval()
    totals = {"loss": 0.0, "clean_err": 0.0, "verified_err": 0.0}
    seen = 0
    # --8<-- [start:loop]  (docs/hooks.md shows the lines from here to [end:loop])
    reweight = lirpa_reweight.WeightedRobustLoss(gamma=5.0, alpha=0.1)  # lirpa_reweight
    for i, (data, labels, idx) in enumerate(loader):  # lirpa_reweight
        if i == max_batches:
            break
        data, labels = data.to(args.device), labels.to(args.device)
        eps_scheduler.step_batch()
        eps = eps_scheduler.get_eps()
        eps_i = eps_scheduler.eps(idx).view(-1, 1, 1, 1)  # lirpa_reweight: per-example radius (eps in eval mode)
        x_L, x_U = (data - eps_i).clamp(0, 1), (data + eps_i).clamp(0, 1)  # lirpa_reweight
        ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=x_L, x_U=x_U)
        output = model(BoundedTensor(data, ptb))
        loss = regular_ce = CrossEntropyLoss()(output, labels)
        lb = None
        if eps > 1e-20:  # below that, natural training: no bounds needed
            c = margin_spec(labels)
            lb, _ = model.compute_bounds(IBP=True, C=c, method=None)
            if args.bound_type == "CROWN-IBP":  # mixed with IBP as in auto_LiRPA's examples
                factor = (eps_scheduler.get_max_eps() - eps) / eps_scheduler.get_max_eps()
                if factor > 1e-5:
                    clb, _ = model.compute_bounds(IBP=False, C=c, method="backward", bound_upper=False)
                    lb = clb * factor + lb * (1 - factor)
            # The robust cross-entropy: CE of the worst-case logits [0, -lb], true class first.
            weighted = reweight.compute(lb)  # lirpa_reweight: re-weighted robust CE (gamma=0: the plain one)
            loss = weighted.loss  # lirpa_reweight
            eps_scheduler.update(idx, weighted.margins)  # lirpa_reweight: Algorithm 1 (no-op in eval)
        # --8<-- [end:loop]
        if train:
            opt.zero_grad()
            loss.backward()
            eps_scheduler.update_loss(loss.item() - regular_ce.item())
            opt.step()
        batch = labels.size(0)
        seen += batch
        totals["loss"] += loss.item() * batch
        totals["clean_err"] += (output.argmax(1) != labels).sum().item()
        totals["verified_err"] += batch if lb is None else (lb < 0).any(1).sum().item()
    return eps, {k: v / max(seen, 1) for k, v in totals.items()}


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    train_data, test_data = load_data(args)
    train_loader = DataLoader(train_data, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_data, batch_size=256)
    epoch_length = len(train_loader)
    if args.steps is not None:
        epoch_length = min(epoch_length, -(-args.steps // args.num_epochs))

    model_ori = cnn_4layer()
    model = BoundedModule(model_ori, torch.zeros(2, 1, 28, 28), device=args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    eps_scheduler = globals()[args.scheduler_name](args.eps, args.scheduler_opts)
    eps_scheduler = lirpa_reweight.AutoEpsScheduler(eps_scheduler, len(train_data), maxoff=0.15, device=args.device)  # lirpa_reweight

    for epoch in range(1, args.num_epochs + 1):
        eps_scheduler.train()
        eps_scheduler.step_epoch()
        eps_scheduler.set_epoch_length(epoch_length)
        eps, stats = run_epoch(model, train_loader, eps_scheduler, args, opt, max_batches=epoch_length)
        print(f"epoch {epoch} train eps {eps:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    with torch.no_grad():
        eps, stats = run_epoch(model, test_loader, eps_scheduler, args)
    print(f"test eps {eps:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    return stats


if __name__ == "__main__":
    main()
