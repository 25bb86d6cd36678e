"""
Does semantic masking help? Train and evaluate five trunks under one budget, for several seeds.

    python benchmarks/compare.py                          # synthetic faces, tiny preset, CPU
    python benchmarks/compare.py --data rafdb --preset paper --epochs 100 --device cuda   # paper

Arms: a random trunk (no training), as initialised and with its BatchNorm statistics recomputed on
the training faces (eval.recompute_batchnorm: what statistics alone do); the GFL method alone (BYOL,
use_facemae=false); SimFLE with random masking; SimFLE with semantic masking; a supervised trunk
trained on the labels with the same number of images seen (the upper bound). Each trunk gets the
same evaluation: linear probe (cached features, accuracy and mean class accuracy) and, where the
data has landmarks, the landmark probe (NME), and for the FaceMAE arms the landmark hit rate of
semantic masking (eval.landmark_hit_rate) after training and for the same model at its
initialisation. Nothing is tuned on the test split. Writes <out>/compare.json, <out>/compare.md and
<out>/group_maps.png (group attention maps of the semantic-masking model after training).
"""
import argparse
import json
import os
import shlex
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import eval as evaluate  # noqa: E402
import train  # noqa: E402
import calibrate_synthetic as calibrate  # noqa: E402  (this folder)
from data_support.layouts import BadImageError  # noqa: E402
from data_support.synthetic_faces import LOOKS  # noqa: E402
from eval_support.common import load_checkpoint, pick_device  # noqa: E402
from eval_support.landmarks import (hit_rate_trained_and_untrained, inspect_ffl,  # noqa: E402
                                    landmark_probe)
from simfle import Backbone, SimFLE, SimFLEConfig  # noqa: E402
from train_support.options import TRAIN_DEFAULTS  # noqa: E402

# name -> (run folder, train.py options); None: no pretraining; "supervised": trained on labels
ARMS = {
    "random trunk": ("random", None),
    "random trunk, BN statistics of the faces": ("random-bn", "random-bn"),
    "BYOL alone": ("byol", ["--use-facemae", "false"]),
    "SimFLE, random masking": ("random-masking", ["--masking", "random"]),
    "SimFLE, semantic masking": ("semantic-masking", ["--masking", "semantic"]),
    "supervised (upper bound)": ("supervised", "supervised"),
}


def supervised_trunk(args, seed, device):
    """A trunk trained on the labels with the pretraining budget (same images seen, same view size),
    by the recipe of calibrate_synthetic.py: AdamW 2e-3, one-cycle lr, flip + small shift. (SGD with
    the probe's RandomResizedCrop stayed at chance within this budget: 14.3 % after 2 epochs of
    4,000 faces.)"""
    cfg = SimFLEConfig.preset(args.preset)
    torch.manual_seed(seed)
    trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
    train_base, test_base = datasets(args, seed)
    (xtr, ytr), (xte, yte) = (labelled_images(b, cfg.view_size) for b in (train_base, test_base))
    model = nn.Sequential(trunk, nn.Linear(trunk.dim, len(test_base.classes)))
    accuracy = calibrate.supervised(xtr, ytr, xte, yte, args.epochs, seed, batch=args.batch_size,
                                    model=model,
                                    device=device)
    print(f"supervised trunk, seed {seed}: its own classifier {100 * accuracy:.1f} % on test",
          flush=True)
    return trunk.cpu().eval(), cfg


def labelled_images(base, size):
    """A labelled dataset in memory: uint8 (n,3,size,size) images (plain resize) and (n,) labels."""
    images, labels = [], []
    for i in range(len(base)):
        try:
            img, label, _ = base[i]
        except BadImageError:  # unreadable: left out, as the training loops do
            continue
        images.append(calibrate.resize(img[None], size)[0])
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def datasets(args, seed):
    """The training split (as pretrained on) and the test split; synthetic faces are drawn once into
    memory (data.SyntheticFaces.render keeps them for every arm of the seed)."""
    return [data.get_dataset(args.data, args.root, split, seed=seed, synthetic_look=args.look,
                             render=True,
                             synthetic_count=args.num_synthetic if split == "train" else None)
            for split in ("train", "test")]


def evaluate_trunk(trunk, cfg, args, seed, device):
    train_base, test_base = datasets(args, seed)
    report, _ = evaluate.linear_probe(trunk, train_base, test_base, cfg.view_size, device,
                                      epochs=args.probe_epochs, workers=args.workers, seed=seed)
    result = {"accuracy": report["last_epoch_accuracy"],
              "mean_class_accuracy": report["mean_class_accuracy"]}
    if train_base.num_landmarks:
        result["nme"] = landmark_probe(trunk, train_base, test_base, cfg.origin_size,
                                                device,
                                                workers=args.workers, seed=seed)["nme"]
    return result


def hit_rates(ckpt_path, args, seed, device):
    """Landmark hit rate of semantic masking on the test faces: the trained model, and the same
    model at the initialisation it started from (train.py seeds torch with --seed right before
    building it)."""
    model, _ = evaluate.load_model(ckpt_path)
    test_base = datasets(args, seed)[1]
    if not test_base.num_landmarks:
        return {}
    trained, untrained = hit_rate_trained_and_untrained(model, seed, test_base, device)
    return {"hit_rate": trained["semantic"], "hit_rate_untrained": untrained["semantic"],
            "hit_rate_random_masking": trained["random"]}


def group_map_figure(ckpt_path, args, path):
    """Group attention maps of a trained model on a few test faces: image, then 6 groups' maps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    state = load_checkpoint(ckpt_path)
    model = SimFLE(state["config_obj"])
    model.load_state_dict(state["model"])
    model.eval()
    cfg = state["config_obj"]
    test_base = datasets(args, 0)[1]
    batch, _ = data.collate([data.ProbeView(test_base, cfg.origin_size,
                                            train=False)[i] for i in range(4)])
    images, _, _ = data.probe_batch(batch, torch.device("cpu"))
    maps = inspect_ffl(model, images)["maps"]  # (B,G,h,w)
    groups = maps.flatten(2).var(2).mean(0).argsort(descending=True)[:6]  # the 6 most varied groups
    fig, axes = plt.subplots(4, 7, figsize=(10.5, 6))
    for r in range(4):
        img = batch[0][r].permute(1, 2, 0).numpy()
        axes[r, 0].imshow(img)
        for c, g in enumerate(groups.tolist()):
            up = torch.nn.functional.interpolate(maps[r:r + 1, g:g + 1], size=img.shape[:2],
                                                 mode="bilinear")[0, 0]
            axes[r, c + 1].imshow(img)
            axes[r, c + 1].imshow(up.numpy(), cmap="jet", alpha=0.5)
            if r == 0:
                axes[r, c + 1].set_title(f"group {g}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("group attention maps after pretraining (SimFLE, semantic masking, seed 0)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fmt(values, scale=100):
    if not values:
        return "–"
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def write_table(results, args):
    """compare.md: mean ± std over the seeds of each arm; printed too."""
    lines = ["| trunk | linear probe acc. (%) | mean class acc. (%) | landmark NME (%) | landmark "
             "hit rate, trained (%) | landmark hit rate, untrained (%) |",
             "|---|---|---|---|---|---|"]
    for arm, rs in results.items():
        lines.append(f"| {arm} | {fmt([r['accuracy'] for r in rs])} | "
                     f"{fmt([r['mean_class_accuracy'] for r in rs])} | "
                     f"{fmt([r['nme'] for r in rs if 'nme' in r])} | "
                     f"{fmt([r['hit_rate'] for r in rs if 'hit_rate' in r])} | "
                     f"{fmt([r['hit_rate_untrained'] for r in rs if 'hit_rate' in r])} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write(table + "\n")
    print(table)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--root", default=None)
    p.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    p.add_argument("--epochs", type=int, default=None,
                   help="pretraining epochs (the budget; default: train.py's)")
    p.add_argument("--num-synthetic", type=int, default=4000,
                   help="synthetic training images (4000: train.py's default)")
    p.add_argument("--look", default="aligned", choices=list(LOOKS),
                   help="synthetic faces' look")
    p.add_argument("--train-options", default="",
                   help="more train.py options for every pretrained arm, e.g. '--lr 0.1'")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="pretraining lr (default: train.py's)")
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", default="runs/compare")
    args = p.parse_args()
    device = pick_device(args.device)
    args.epochs = args.epochs or TRAIN_DEFAULTS[args.preset]["epochs"]
    os.makedirs(args.out, exist_ok=True)
    results, t0 = {arm: [] for arm in args.arms}, time.time()
    for seed in args.seeds:
        for arm in args.arms:
            slug, options = ARMS[arm]
            if options in (None, "random-bn"):
                torch.manual_seed(seed)
                cfg = SimFLEConfig.preset(args.preset)
                trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
                # the same random weights, BatchNorm statistics of the training faces
                if options == "random-bn":
                    trunk = evaluate.recompute_batchnorm(trunk, datasets(args, seed)[0],
                                                         cfg.view_size, device).cpu()
            elif options == "supervised":
                trunk, cfg = supervised_trunk(args, seed, device)
            else:
                out = os.path.join(args.out, f"{slug}-seed{seed}")
                argv = ["--data", args.data, "--preset", args.preset, "--batch-size",
                        str(args.batch_size),
                        "--seed", str(seed), "--out", out, "--probe", "false", "--look", args.look,
                        "--knn-samples", "0", "--device", str(device), "--workers",
                        str(args.workers),
                        "--num-synthetic", str(args.num_synthetic), "--epochs", str(args.epochs),
                        *shlex.split(args.train_options), *options]
                if args.root:
                    argv += ["--root", args.root]
                if args.lr:
                    argv += ["--lr", str(args.lr)]
                # a finished arm is reused, an unfinished one resumed
                if os.path.exists(os.path.join(out, "last.pt")):
                    argv = ["--resume", os.path.join(out, "last.pt"), "--device", str(device)]
                code = train.main(argv)
                if code:
                    raise SystemExit(f"{arm}, seed {seed}: train.py exited with {code}")
                trunk, cfg, _ = evaluate.load_trunk(os.path.join(out, "last.pt"))
            r = evaluate_trunk(trunk, cfg, args, seed, device)
            if isinstance(options, list) and cfg.use_facemae:
                r.update(hit_rates(os.path.join(out, "last.pt"), args, seed, device))
            results[arm].append(r)
            print(f"[{time.time() - t0:.0f} s] seed {seed}, {arm}: {r}", flush=True)
            with open(os.path.join(args.out, "compare.json"), "w") as f:
                json.dump({"args": vars(args), "results": results, "seconds": time.time() - t0}, f,
                          indent=2)

    write_table(results, args)
    print(f"{len(args.seeds)} seeds, {time.time() - t0:.0f} s in all on {device}")
    semantic = os.path.join(args.out, f"semantic-masking-seed{args.seeds[0]}", "last.pt")
    if os.path.exists(semantic):
        group_map_figure(semantic, args, os.path.join(args.out, "group_maps.png"))


if __name__ == "__main__":
    main()
