"""
The FFL's share of the ResNet's gradient at initialisation (train_support.observe's
gradient_shares: α·L_d's gradient norm at the backbone's weights over the sum of every term's),
tiny preset, 16 random faces a batch, per seed: the figures README.md and docs/departures.md
cite, and tests/test_simfle.py pins.

    python benchmarks/gradient_shares.py                  # the table, seeds 0 1 2
    python benchmarks/gradient_shares.py --out benchmarks/results/gradient_shares_init.md

At the end of a run the shares are what train.py logged (grad_share_* in metrics.jsonl), not these.
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from simfle import SimFLE, SimFLEConfig  # noqa: E402
from train_support.observe import gradient_shares  # noqa: E402

OPEN = dict(gfl="simclr", distill_target="ffl", distill_loss="cosine")
ARMS = {"BYOL, the paper's weights": dict(gfl="byol"),
        "SimCLR, the paper's weights": dict(gfl="simclr"),
        **{f"SimCLR, the channel opened, α = {a:g}": dict(OPEN, alpha=a) for a in (0.3, 1.0, 3.0)}}


def random_batch(cfg, n, seed):
    """Origin and two views of n faces of N(0, 1) pixels: -> (origin, view1, view2)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, cfg.origin_size, cfg.origin_size, generator=g),
            *(torch.randn(n, 3, cfg.view_size, cfg.view_size, generator=g) for _ in range(2)))


def share_at_init(options, seed, n=16):
    """The distillation term's share of the ResNet's gradient of the model train.py --seed seed
    builds (torch seeded right before it), on one random batch of n."""
    torch.manual_seed(seed)
    cfg = SimFLEConfig.preset("tiny", **options)
    return gradient_shares(SimFLE(cfg), *random_batch(cfg, n, seed))["grad_share_distillation"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    lines = ["| tiny preset, at initialisation | FFL's share of the ResNet's gradient (%), "
             "per seed | mean ± std |", "|---|---|---|"]
    for name, options in ARMS.items():
        shares = [100 * share_at_init(options, seed) for seed in args.seeds]
        spread = statistics.stdev(shares) if len(shares) > 1 else 0.0
        lines.append(f"| {name} | {', '.join(f'{s:.2f}' for s in shares)} | "
                     f"{statistics.mean(shares):.1f} ± {spread:.1f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + f"\n\n`python benchmarks/gradient_shares.py --seeds " \
                               f"{' '.join(map(str, args.seeds))}`, torch {torch.__version__}\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
