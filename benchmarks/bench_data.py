"""Input-pipeline throughput per CPU core: data.py's pretraining pipeline against the reference
recipe.

Both run in this one process on one thread (torch.set_num_threads(1)), on the same JPEG faces
written to a temporary folder, and produce the same thing per sample: the 112 px origin and two
augmented 224 px views, normalised floats, views blurred (the paper's recipe).

  reference  PIL per image: RandomResizedCrop(224, scale 0.08-1), flip,
             ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2, ToTensor, a separable
             23-tap Gaussian blur (sigma U[0.1, 2]) per image, Normalize; origin Resize(112),
             ToTensor, Normalize
  data.py    torchvision.io decode, transforms.v2 on uint8 per image (PretrainView), collate,
             then blur and normalisation batched (pretrain_batch), here on the CPU and counted
  data.py, augment="device"  the loader only decodes and resizes; crop, flip, colour, blur and
             normalisation are batched (pretrain_batch), here on the CPU and counted

It also times the synthetic face renderer. About a minute on one core:

    python benchmarks/bench_data.py
    python benchmarks/bench_data.py --n 256 --size 224 --image-size 100
"""
import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as Fn
import torchvision.transforms as T
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
from data_support.device_augment import MEAN, STD


class SeparableBlur:
    """The reference's per-image Gaussian blur (kernel 23, sigma ~ U[0.1, 2]), separable, on a
    float tensor."""

    def __init__(self, kernel_size=23, sigma=(0.1, 2.0)):
        self.k, self.sigma = kernel_size, sigma

    def __call__(self, x):
        s = float(torch.empty(1).uniform_(*self.sigma))
        t = torch.arange(self.k, dtype=torch.float32) - self.k // 2
        kernel = torch.exp(-0.5 * (t / s) ** 2)
        kernel = (kernel / kernel.sum()).expand(3, -1)
        y = Fn.pad(x[None], [self.k // 2] * 4, mode="reflect")
        y = Fn.conv2d(y, kernel.reshape(3, 1, 1, self.k), groups=3)
        return Fn.conv2d(y, kernel.reshape(3, 1, self.k, 1), groups=3)[0]


def reference_pipeline(size, origin_size):
    view = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                      T.RandomGrayscale(p=0.2),
                      T.ToTensor(), SeparableBlur(round(23 * size / 224) // 2 * 2 + 1),
                      T.Normalize(MEAN, STD)])
    origin = T.Compose([T.Resize((origin_size, origin_size)), T.ToTensor(), T.Normalize(MEAN, STD)])

    def sample(path):
        img = Image.open(path).convert("RGB")
        return origin(img), view(img), view(img)
    return sample


def time_reference(paths, n, size, origin_size):
    """CPU seconds per sample (process time: other programs on the machine do not count)."""
    sample = reference_pipeline(size, origin_size)
    for p in paths[:4]:  # warm-up
        sample(p)
    t0 = time.process_time()
    for i in range(n):
        sample(paths[i % len(paths)])
    return (time.process_time() - t0) / n


def time_ours(root, n, size, origin_size, batch, augment="loader"):
    """CPU seconds per sample: (total, the per-image part, the batched part)."""
    view = data.PretrainView(data.get_dataset("images", root), size, origin_size, augment=augment)
    data.pretrain_batch(data.collate([view[i] for i in range(4)])[0], "cpu")  # warm-up
    per_item = per_batch = 0.0
    done = 0
    while done < n:
        t0 = time.process_time()
        items = [view[(done + i) % len(view)] for i in range(min(batch, n - done))]
        b, _ = data.collate(items)
        t1 = time.process_time()
        data.pretrain_batch(b, "cpu")
        t2 = time.process_time()
        per_item, per_batch, done = per_item + t1 - t0, per_batch + t2 - t1, done + len(items)
    return (per_item + per_batch) / n, per_item / n, per_batch / n


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="samples timed per pipeline")
    p.add_argument("--size", type=int, default=224, help="GFL view size")
    p.add_argument("--origin-size", type=int, default=112, help="FFL origin size")
    p.add_argument("--image-size", type=int, default=100,
                   help="side of the JPEG faces read (RAF-DB aligned: 100)")
    p.add_argument("--files", type=int, default=128, help="distinct JPEG files, read in turn")
    p.add_argument("--batch", type=int, default=64, help="batch size of the batched step")
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds, alternating the pipelines; the best round counts")
    p.add_argument("--synthetic", type=int, default=1000,
                   help="synthetic faces rendered at 112 px (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as root:
        faces = data.get_dataset("synthetic", synthetic_size=args.image_size,
                                 synthetic_count=args.files)
        paths = []
        for i in range(args.files):
            paths.append(os.path.join(root, f"{i:05d}.jpg"))
            Image.fromarray(faces[i][0].permute(1, 2, 0).numpy()).save(paths[-1], quality=90)
        refs, ours, batched = [], [], []
        for _ in range(args.repeat):
            refs.append(time_reference(paths, args.n, args.size, args.origin_size))
            ours.append(time_ours(root, args.n, args.size, args.origin_size, args.batch))
            batched.append(time_ours(root, args.n, args.size, args.origin_size, args.batch,
                                     augment="device"))
    ref = 1 / min(refs)
    dev = min(batched)
    best = min(ours)
    ours, item_ms, batch_ms = 1 / best[0], 1e3 * best[1], 1e3 * best[2]

    print(f"pretraining samples (origin {args.origin_size} px + two {args.size} px views) from "
          f"{args.image_size} px "
          f"JPEGs, one thread, CPU time, best of {args.repeat} rounds of {args.n} samples:\n")
    print("| pipeline | samples/s per core | ms per sample |\n|---|---|---|")
    print(f"| reference (PIL per image) | {ref:.0f} | {1e3 / ref:.2f} |")
    print(f"| data.py (uint8 v2 per image + batched blur/normalise) | {ours:.0f} | "
          f"{1e3 / ours:.2f} "
          f"({item_ms:.2f} per image + {batch_ms:.2f} batched) |")
    print("| data.py, augment=\"device\" (decode + resize per image, the rest batched) | "
          f"{1 / dev[0]:.0f} | "
          f"{1e3 * dev[0]:.2f} ({1e3 * dev[1]:.2f} per image + {1e3 * dev[2]:.2f} batched) |")
    worker = 1e3 / item_ms
    print("| data.py, a loader worker's share (blur/normalise on the training device) | "
          f"{worker:.0f} | {item_ms:.2f} |")
    print(f"\nratio, everything on this CPU core:            {ours / ref:.2f}x the reference's "
          "samples/s")
    print(f"ratio, per loader core when training on a GPU: {worker / ref:.2f}x (the batched step "
          "runs on the GPU)")
    print("augment=device against data.py's default, everything on this core: "
          f"{best[0] / dev[0]:.2f}x; "
          f"per loader core: {best[1] / dev[1]:.2f}x")
    if args.synthetic:
        ds = data.get_dataset("synthetic", synthetic_count=args.synthetic)
        rates = []
        for _ in range(args.repeat):
            t0 = time.process_time()
            for i in range(len(ds)):
                ds[i]
            rates.append(len(ds) / (time.process_time() - t0))
        print(f"synthetic faces at 112 px: {max(rates):.0f} images/s on one core (best of "
              f"{args.repeat})")


if __name__ == "__main__":
    main()
