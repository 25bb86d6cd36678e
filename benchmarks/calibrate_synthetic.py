"""How hard is the synthetic dataset? Two reference points on its 7 expressions (chance = 14.3 %).

  1. a frozen, randomly initialised ResNet-18 + a linear probe (logistic regression on pooled
  features):
     what pixels alone give without learning a representation; should stay far below (2).
  2. a ResNet-18 trained from scratch, supervised, for a few minutes on CPU at 64 px: what learning
  gives.

    python benchmarks/calibrate_synthetic.py                 # both, 15-30 minutes on 2 CPU cores
    python benchmarks/calibrate_synthetic.py --epochs 0      # the random-trunk probes only
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
from data_support.device_augment import normalize
from data_support.synthetic_faces import LOOKS


def render(split, count, seed, look="aligned"):
    ds = data.get_dataset("synthetic", split=split, seed=seed, synthetic_count=count,
                          synthetic_look=look)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return images, torch.tensor(ds.labels)


def resize(images, size):
    if images.shape[-1] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def features(trunk, images, batch=250):
    return torch.cat([trunk(normalize(images[i:i + batch])) for i in range(0, len(images),
                                                                                batch)])


def linear_probe(xtr, ytr, xte, yte, steps=300, wd=1e-4):
    """Multinomial logistic regression, full-batch LBFGS on standardised features -> test
    accuracy."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    head = nn.Linear(xtr.shape[1], 7)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xtr), ytr) + wd * head.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        train_acc = (head(xtr).argmax(1) == ytr).float().mean().item()
        return train_acc, (head(xte).argmax(1) == yte).float().mean().item()


def supervised(xtr, ytr, xte, yte, epochs, seed, batch=64, lr=2e-3, model=None, device="cpu"):
    """Train `model` (default: a fresh torchvision ResNet-18) on the labels, in place: AdamW,
    one-cycle lr, flip + small shift. uint8 images on the CPU; batches go to `device`. Returns the
    last test accuracy."""
    torch.manual_seed(seed)
    model = (model if model is not None else torchvision.models.resnet18(num_classes=7)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(xtr) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    size = xtr.shape[-1]
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr))
        for k in range(len(xtr) // batch):
            idx = perm[k * batch:(k + 1) * batch]
            x = normalize(xtr[idx].to(device))
            # light augmentation: flip and a shift of up to 1/16 of the image
            x = torch.where(torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
            pad = size // 16
            i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            x = F.pad(x, [pad] * 4, mode="reflect")[:, :, i:i + size, j:j + size]
            loss = F.cross_entropy(model(x), ytr[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (torch.cat([model(normalize(xte[i:i + 250].to(device))).argmax(1).cpu()
                              for i in range(0, len(xte), 250)]) == yte)
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test accuracy "
              f"{acc.float().mean().item():.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    return acc.float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=4000, help="synthetic training images")
    p.add_argument("--test", type=int, default=1000, help="synthetic test images")
    p.add_argument("--epochs", type=int, default=8, help="supervised epochs at 64 px (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=["val", "test"],
                   help="the synthetic split scored")
    p.add_argument("--look", default="aligned", choices=list(LOOKS),
                   help="the synthetic faces' look")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    xtr, ytr = render("train", args.train, args.seed, args.look)
    xte, yte = render(args.split, args.test, args.seed, args.look)
    print(f"rendered {len(xtr)} + {len(xte)} faces at 112 px in {time.time() - t0:.0f} s")
    results = {}
    torch.manual_seed(args.seed)
    trunk = torchvision.models.resnet18()
    trunk.fc = nn.Identity()
    trunk.eval()  # frozen, BatchNorm in eval mode, as the paper's linear-probe protocol
    for size in (64, 112):
        t0 = time.time()
        tr, te = features(trunk, resize(xtr, size)), features(trunk, resize(xte, size))
        train_acc, test_acc = linear_probe(tr, ytr, te, yte)
        results[f"random ResNet-18 + linear probe, {size} px"] = test_acc
        print(f"random-trunk probe at {size} px: train {train_acc:.3f}, test {test_acc:.3f} "
              f"({time.time() - t0:.0f} s)")
    if args.epochs:
        t0 = time.time()
        print(f"supervised ResNet-18 from scratch at 64 px, {args.epochs} epochs:")
        results["supervised ResNet-18, 64 px"] = supervised(resize(xtr, 64), ytr, resize(xte, 64),
                                                            yte, args.epochs, args.seed)
        print(f"  ({time.time() - t0:.0f} s)")
    print(f"\n| model | {args.split} accuracy ({args.look} faces) |\n|---|---|")
    for k, v in results.items():
        print(f"| {k} | {100 * v:.1f} % |")
    print("| chance | 14.3 % |")


if __name__ == "__main__":
    main()
