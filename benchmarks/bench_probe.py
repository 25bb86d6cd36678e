"""
Linear-probe throughput: the paper's protocol (augmented views through the frozen trunk every epoch)
against cached features (the trunk runs once; eval.py's --protocol chosen at one lr, not the paper's
protocol).

    python benchmarks/bench_probe.py              # tiny preset, 1000 synthetic faces (1-2 min)
    python benchmarks/bench_probe.py --preset paper --train-images 256 --test-images 128

Each mode runs eval.linear_probe twice, for one epoch and for more (`--epochs`; 10x that for
"cached", whose epochs are too quick to time otherwise), on a random trunk (the cost does not depend
on the weights); the difference gives the cost of one more epoch, the rest is the fixed cost (test
features, and for "cached" the training features). The table extrapolates both to the paper's 100
epochs. Synthetic faces are drawn in memory, so file decoding is not part of the figure.
"""
import argparse
import contextlib
import io
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import data  # noqa: E402
import eval as evaluate  # noqa: E402
from bench_step import machine  # noqa: E402


def timed_probe(trunk, train, test, size, device, epochs, features, batch_size, workers):
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # tqdm's bar: the table is the output
        # "cached" at one fixed lr: one head's training, not the lr search (5 heads)
        evaluate.linear_probe(trunk, train, test, size, device,
                              "paper" if features == "augmented" else "chosen", epochs=epochs,
                              batch_size=batch_size, lr=0.5 * batch_size / 256, workers=workers)
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description="Linear-probe throughput, augmented vs cached features "
                                            "(one table).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3, help="the longer of the two runs per mode")
    p.add_argument("--batch-size", type=int, default=256, help="the paper uses 1024")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (one run of 1 epoch is the other point)")
    device = torch.device(args.device)
    torch.manual_seed(0)
    trunk, cfg, _ = evaluate.load_trunk("random", args.preset)
    train = data.get_dataset("synthetic", split="train", synthetic_count=args.train_images)
    test = data.get_dataset("synthetic", split="test", synthetic_count=args.test_images)
    rows = []
    for features in ("augmented", "cached"):
        one = timed_probe(trunk, train, test, cfg.view_size, device, 1, features, args.batch_size,
                          args.workers)
        epochs = args.epochs * (10 if features == "cached" else 1)
        many = timed_probe(trunk, train, test, cfg.view_size, device, epochs, features,
                           args.batch_size,
                           args.workers)
        per_epoch = max((many - one) / (epochs - 1), 1e-4)  # below that: timer noise
        fixed = max(one - per_epoch, 0.0)
        rows.append((features, fixed, per_epoch, args.train_images / per_epoch,
                     fixed + 100 * per_epoch))
        print(f"{features}: {one:.1f} s for 1 epoch, {many:.1f} s for {epochs}", flush=True)
    command = "python benchmarks/bench_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n{command}\n{machine()}; {cfg.backbone} at {cfg.view_size} px, {args.train_images} "
          "train / "
          f"{args.test_images} test synthetic faces, batch {args.batch_size}\n")
    print("| features | fixed cost s | s per epoch | training images/s | 100 epochs, s | x faster "
          "(100 epochs) |")
    print("|---|---|---|---|---|---|")
    base = rows[0][4]
    for features, fixed, per_epoch, images_s, hundred in rows:
        print(f"| {features} | {fixed:.1f} | {per_epoch:.3f} | {images_s:.0f} | {hundred:.0f} | "
              f"{base / hundred:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
