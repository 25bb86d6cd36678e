"""
Does training sharpen semantic masking? The landmark hit rate (eval.landmark_hit_rate: the share of a face's
landmarks inside the 12 visible patches, averaged over the groups) measured every few steps of train.py.

    python benchmarks/hit_rate_over_training.py --every 20 --steps 124 \\
        --variant "paper:" --variant "beta0:--beta 0"

    python benchmarks/hit_rate_over_training.py --checkpoints runs/a/last.pt runs/b/last.pt --seeds 0 1

A variant is "name:train.py options". Training is train.py itself, stopped with --stop-after-steps and resumed
(resume is exact, so the run is the same as an uninterrupted one). The hit rate is read on 500 val faces, never
on test. --checkpoints scores finished train.py runs instead, each on the 1,000 val faces of its --seeds entry,
beside the same configuration freshly initialised with that seed. Besides the hit rate the table gives the grouping loss (l_g, not squared) of the channel-grouping
layer on those faces, and how far apart the groups' maps are (mean pairwise cosine similarity of the group
maps over 128 faces, 1 = all groups alike; a map that is zero everywhere counts as similarity 0).
"""
import argparse
import json
import os
import shlex
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import eval as evaluate  # noqa: E402
import train  # noqa: E402
from simfle import SimFLE, channel_similarity, group_maps, grouping_loss  # noqa: E402


@torch.no_grad()
def grouping_state(model, faces, size):
    """l_g and the mean pairwise cosine similarity of the G group maps, on one batch of faces (BN in train mode)."""
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    batch, _ = data.collate([data.ProbeView(faces, size, train=False)[i] for i in range(min(128, len(faces)))])
    origin = data.probe_batch(batch, torch.device("cpu"))[0]
    attn = model.grouping(model.backbone.feature_map(origin))
    maps = F.normalize(group_maps(attn, model.config.groups).flatten(2), dim=2)  # (B,G,h·w)
    sim = torch.einsum("bgi,bhi->gh", maps, maps) / maps.shape[0]
    G = sim.shape[0]
    model.load_state_dict(snapshot)
    return {"grouping_loss": grouping_loss(channel_similarity(attn), model.config.groups).item(),
            "group_similarity": ((sim.sum() - sim.diagonal().sum()) / (G * (G - 1))).item()}


def measure(model, faces, step):
    r = evaluate.landmark_hit_rate(model, faces, torch.device("cpu"))
    return {"step": step, "hit_rate": r["semantic"], "best_group": r["best_group"], "worst_group": min(r["per_group"]),
            **grouping_state(model, faces, model.config.origin_size)}


def run_variant(name, options, args, faces):
    out = os.path.join(args.runs, name)
    base = ["--seed", str(args.seed), "--out", out, "--probe", "false", "--knn-samples", "0"] + shlex.split(options)
    torch.manual_seed(args.seed)  # train.py seeds torch right before it builds the model: this is its start
    cfg = train.parse_args(base).config
    rows = [measure(SimFLE(cfg), faces, 0)]
    print(json.dumps(rows[-1]), flush=True)
    for stop in range(args.every, args.steps + 1, args.every):
        argv = ["--stop-after-steps", str(stop)]
        argv = base + ["--overwrite"] + argv if stop == args.every else ["--resume", os.path.join(out, "last.pt")] + argv
        if train.main(argv) != 0:
            raise SystemExit(f"{name}: train.py failed at step {stop}")
        model, _ = evaluate.load_model(os.path.join(out, "last.pt"))
        rows.append(measure(model, faces, stop))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def score_checkpoints(paths, seeds):
    """Hit rate of finished runs and of their configurations freshly initialised (same seed), on val faces."""
    lines = ["| checkpoint | seed | hit rate, trained (%) | untrained (%) | best group (%) | worst group (%) |",
             "|---|---|---|---|---|---|"]
    for path, seed in zip(paths, seeds):
        model, _ = evaluate.load_model(path)
        faces = data.get_dataset("synthetic", split="val", seed=seed, render=True)
        trained, untrained = evaluate.hit_rate_trained_and_untrained(model, seed, faces, torch.device("cpu"))
        lines.append(f"| {path} | {seed} | {100 * trained['semantic']:.1f} | {100 * untrained['semantic']:.1f} | "
                     f"{100 * trained['best_group']:.1f} | {100 * min(trained['per_group']):.1f} |")
        print(lines[-1], flush=True)
    return lines


def variants_table(args):
    """Train each --variant, measuring every --every steps: -> the table's lines."""
    faces = data.get_dataset("synthetic", split="val", seed=args.seed, synthetic_count=500, render=True)
    lines = ["| variant | step | hit rate, mean over groups (%) | best group (%) | worst group (%) | l_g | "
             "group-map similarity |", "|---|---|---|---|---|---|---|"]
    for spec in args.variant or ["paper:"]:
        name, _, options = spec.partition(":")
        for r in run_variant(name, options, args, faces):
            lines.append(f"| {name} `{options}` | {r['step']} | {100 * r['hit_rate']:.1f} | {100 * r['best_group']:.1f} | "
                         f"{100 * r['worst_group']:.1f} | {r['grouping_loss']:.1f} | {r['group_similarity']:.3f} |")
    return lines + ["", "random masking: 12/49 = 24.5 % of the landmarks visible, whatever the training."]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", default=[], help='"name:train.py options"')
    p.add_argument("--every", type=int, default=20, help="steps between measurements")
    p.add_argument("--steps", type=int, default=124, help="training steps in all (124: the quick start's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/hit-rate")
    p.add_argument("--out", default="benchmarks/results/hit_rate_over_training.md")
    p.add_argument("--checkpoints", nargs="+", default=None, help="score these train.py runs instead")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="with --checkpoints: each run's seed")
    args = p.parse_args()
    if args.checkpoints:
        seeds = args.seeds or [args.seed] * len(args.checkpoints)
        if len(seeds) != len(args.checkpoints):
            p.error("--seeds needs one seed per checkpoint")
        table = score_checkpoints(args.checkpoints, seeds)
    else:
        table = variants_table(args)
    lines = [f"`python benchmarks/hit_rate_over_training.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}`", "",
             *table]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
