"""Run observation of train.py: what a run shows of itself, none of which changes the training.

  write_run_info   the run's configuration, printed and written to <out>/config.json
  EpochTally       an epoch's running sums, the progress bar's line, and the epoch's record
  collapse_figures the collapse monitor's figures of a set of embeddings
  gradient_shares  which loss term trains the ResNet: each term's share of its gradient
  Monitor          epoch-end monitors: k-NN accuracy and landmark hit rate on held-out faces; the
                   collapse monitor on training faces
  RunLog         each record to metrics.jsonl and the console, curves.png (draw_curves), TensorBoard
"""
import dataclasses
import json
import math
import os
import time

import torch
from torch.utils.data import DataLoader

import data
from data_support.layouts import DatasetError
from eval import embed, knn_predict
from eval_support.common import capped
from eval_support.landmarks import landmark_hit_rate
from train_support.run import git_commit

LOSS_TERMS = ("similarity", "reconstruction", "distillation", "grouping")  # grouping is l_g²
WEIGHTED = tuple("weighted_" + term for term in LOSS_TERMS)  # the terms as they add up to the total
# each term's share of the ResNet's gradient
SHARES = tuple("grad_share_" + term for term in LOSS_TERMS)
HIT_RATE_FACES = 200  # held-out faces on which each epoch measures the landmark hit rate


def tensorboard_writer():
    """torch's SummaryWriter class, or None when the optional tensorboard package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def write_run_info(args, setup, trainer, num_images, steps_per_epoch):
    """Print the run's configuration and write it to <out>/config.json: -> that record."""
    os.makedirs(args.out, exist_ok=True)
    run_info = {"model": dataclasses.asdict(args.config),
                "train": {k: v for k, v in vars(args).items() if k not in ("config", "overrides",
                                                                           "ckpt")},
                "device": str(setup.device), "precision": setup.precision,
                "world_size": setup.world, "torch": torch.__version__, "git_commit": git_commit()}
    if setup.main:
        setup.say(json.dumps(run_info, indent=2))
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(run_info, f, indent=2)
        millions = sum(p.numel() for p in trainer.raw_model.parameters()) / 1e6
        setup.say(f"{millions:.1f} M parameters; {num_images} images, {steps_per_epoch} "
                  f"steps/epoch on {setup.device} ({setup.precision}), {args.workers} workers")
    return run_info


class EpochTally:
    """An epoch's running sums of the loss parts, images and skipped images. `progress`: the sums of
    an epoch cut by an interrupt ({} else), so that a resumed epoch's record still covers all of
    it."""

    def __init__(self, progress, start):
        self.sums, self.seen = progress.get("sums", {}), progress.get("seen", 0)
        self.skipped = progress.get("skipped", 0)
        # the steps that logged each key (every step, but the gradient shares only the measured
        # ones)
        self.counts = progress.get("counts", {k: progress.get("steps", start) for k in self.sums})
        # optimizer steps this epoch (a skipped batch is not one)
        self.taken = progress.get("steps", start)
        self.t0 = time.time() - progress.get("elapsed", 0.0)

    def add(self, values, images):
        self.taken += 1
        self.seen += images
        for k, v in values.items():
            self.sums[k], self.counts[k] = self.sums.get(k, 0.0) + v, self.counts.get(k, 0) + 1

    def line(self, values, lr):
        """The progress bar's: the loss as the sum of its weighted terms, which shows which one
        dominates."""
        w = [values[k] for k in WEIGHTED]
        return (f"loss {values['total']:.4g} = sim {w[0]:.3g} + rec {w[1]:.3g} + dist {w[2]:.3g} + "
                f"grp {w[3]:.3g}, lr {lr:.4f}, {self.seen / (time.time() - self.t0):.0f} img/s")

    def progress(self):
        return {"sums": self.sums, "counts": self.counts, "seen": self.seen,
                "skipped": self.skipped, "steps": self.taken, "elapsed": time.time() - self.t0}

    def record(self, epoch, step, lr):
        means = {k: v / self.counts[k] for k, v in self.sums.items()}
        return {"epoch": epoch + 1, "step": step, "lr": lr,
                "images_per_s": self.seen / max(time.time() - self.t0, 1e-9), **means,
                "skipped_images": self.skipped}


def collapse_figures(z):
    """Is the GFL's embedding collapsing? z: (n, d) projector outputs of n faces, L2-normalised
    here.
      embedding_std     the std of each dimension over the faces, averaged over dimensions: about
                        1/√d for embeddings spread over the sphere, → 0 when every face maps to one
                        point (the collapse BYOL's predictor and EMA are there to prevent)
      embedding_cosine  the mean cosine between two different faces: → 1 when they collapse. A
                        random network starts near 1 too (its ReLU features share a large mean), so
                        read the trend: a healthy run moves it down, a collapsing one up
    -> {embedding_std, embedding_std_sqrt_d (the std × √d: ~1 spread, 0 collapsed),
    embedding_cosine}."""
    z = torch.nn.functional.normalize(z.float(), dim=1)
    n, d = z.shape
    cosine = z @ z.T
    off_diagonal = (cosine.sum() - cosine.diagonal().sum()) / (n * (n - 1))
    std = z.std(dim=0).mean().item()
    return {"embedding_std": std, "embedding_std_sqrt_d": std * math.sqrt(d),
            "embedding_cosine": off_diagonal.item()}


def gradient_shares(model, origin, view1, view2, scale=1.0):
    """Which loss trains the ResNet: each weighted term's gradient norm at the backbone's weights,
    as a share of their sum -> {grad_share_<term>: float}, adding up to 1. A term with no path into
    the backbone reads exactly 0 (L_r and β·l_g² in the paper: argsort and the no-grad origin pass
    cut theirs). scale multiplies every term (fp16's loss scale, so small gradients do not
    underflow; the shares do not change). One backward per term; the caller keeps the weights'
    .grad, BatchNorm statistics and RNG as they were (train.py's Trainer.gradient_shares)."""
    weighted, _ = model.loss_terms(origin, view1, view2)
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    norms = []
    for term in weighted.values():
        grads = (torch.autograd.grad(term * scale, params, retain_graph=True, allow_unused=True)
                 if term.requires_grad else [])
        norms.append(sum((g.float().pow(2).sum() for g in grads if g is not None),
                         origin.new_zeros((), dtype=torch.float32)))
    norms = torch.stack(norms).sqrt().tolist()  # one host sync
    total = sum(norms) or 1.0
    return {"grad_share_" + name[len("weighted_"):]: n / total for name, n in zip(weighted, norms)}


class Monitor:
    """The epoch-end monitors, on the main process only: the collapse monitor on training faces
    (--collapse-samples 0: off), and on labelled data (--knn-samples 0: off) the k-NN accuracy of
    the trunk's features and the landmark hit rate of semantic masking (paper §3)."""

    def __init__(self, args, setup, train_base):
        self.setup, self.workers = setup, args.workers
        self.knn_sets = self.hit_faces = self.collapse_set = None
        if args.collapse_samples > 0 and setup.main:
            self.collapse_set = DataLoader(
                capped(data.ProbeView(train_base, args.config.view_size, train=False),
                       args.collapse_samples, seed=args.seed + 1),
                batch_size=256, num_workers=args.workers, collate_fn=data.collate,
                generator=torch.Generator().manual_seed(args.seed))  # the global RNG untouched
        if args.knn_samples <= 0 or not train_base.classes or not setup.main:
            return
        split = "val" if args.data in data.SPLITS_WITH_VAL else "test"  # watching never reads test
        try:
            held_out = data.get_dataset(args.data, args.root, split, seed=args.seed,
                                        synthetic_look=args.look, render=True)
        except DatasetError as e:
            setup.say(f"k-NN monitor off: {e}")
            return
        self.classes = len(train_base.classes)
        self.knn_sets = [DataLoader(capped(data.ProbeView(b, args.config.view_size, train=False),
                                           args.knn_samples),
                                    batch_size=256, num_workers=args.workers,
                                    collate_fn=data.collate,
                                    generator=torch.Generator().manual_seed(args.seed))
                         for b in (train_base, held_out)]
        self.hit_faces = self.hit_rate_faces(args, held_out)

    def hit_rate_faces(self, args, held_out):
        """A fixed random subset of the held-out faces, when they have landmarks and the model has
        FaceMAE; at most HIT_RATE_FACES (and --knn-samples), to keep it a small part of an epoch."""
        if not held_out.num_landmarks or not args.config.use_facemae:
            return None
        # BatchNorm in train mode: a SyncBatchNorm on rank 0 alone would hang
        if self.setup.distributed:
            self.setup.say("landmark hit rate off under DDP")
            return None
        return data.random_subset(held_out, min(HIT_RATE_FACES, args.knn_samples), args.seed)

    def __call__(self, model):
        """-> {embedding_std, embedding_std_sqrt_d, embedding_cosine, knn_accuracy,
        landmark_hit_rate}, those that are on."""
        record, device = {}, self.setup.device
        if self.collapse_set is not None:  # the projector's outputs, BatchNorm in eval mode
            net = torch.nn.Sequential(model.backbone, model.projector).eval()
            record.update(collapse_figures(embed(net, self.collapse_set, device)[0]))
        if self.knn_sets is not None:
            trunk = model.backbone.eval()
            (tx, ty), (vx, vy) = (embed(trunk, loader, device) for loader in self.knn_sets)
            record["knn_accuracy"] = (knn_predict(tx, ty, vx,
                                                  self.classes) == vy).float().mean().item()
        if self.hit_faces is not None:  # share of landmarks that semantic masking keeps visible
            record["landmark_hit_rate"] = landmark_hit_rate(model, self.hit_faces, device,
                                                            workers=self.workers)["semantic"]
        return record


class RunLog:
    """Where the run's numbers go, from the main process only: each epoch's record to metrics.jsonl
    and the console; curves.png, redrawn from the whole metrics.jsonl (a resumed run appends to it,
    so the picture shows the whole run); and with --tensorboard the same numbers as TensorBoard
    scalars, step/<key> after every step and epoch/<key> after every epoch, <key> as in
    metrics.jsonl."""

    def __init__(self, args, setup):
        self.setup = setup
        self.metrics_path = os.path.join(args.out, "metrics.jsonl")
        self.curves_path = os.path.join(args.out, "curves.png")
        self.drawing = True  # until matplotlib turns out to be missing
        self.writer = tensorboard_writer()(args.out) if args.tensorboard and setup.main else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()

    def step(self, step, values):
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"step/{key}", value, step)

    def epoch(self, record):
        if not self.setup.main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for line in epoch_lines(record):
            self.setup.say(line)
        if record["skipped_images"]:
            self.setup.say(f"warning: {record['skipped_images']} unreadable images were skipped "
                           "this epoch (named above)")
        self.draw()
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    self.writer.add_scalar(f"epoch/{key}", value, record["epoch"])
            self.writer.flush()  # an interrupted run keeps every finished epoch's scalars

    def draw(self):
        """Redraw curves.png. A picture is never worth a run: a failure to draw is a warning."""
        if not self.drawing:
            return
        try:
            drawn = draw_curves(self.metrics_path, self.curves_path)
        # any error inside plotting: a matplotlib bug, an odd value, a full disk
        except Exception as e:
            self.setup.say(f"warning: {self.curves_path} not drawn ({type(e).__name__}: {e}); "
                           f"training goes on")
            return
        if drawn is None:
            self.setup.say("curves.png not drawn: matplotlib is not installed "
                           "(metrics.jsonl has every number)")
            self.drawing = False  # said once


def epoch_lines(record):
    """The epoch's record as printed: the run's state, then the total as the sum of its weighted
    terms with each one's share (which one dominates), then the unweighted losses."""
    def show(key):
        value = record[key]
        return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
    losses = {"total", "l_g", *LOSS_TERMS, *WEIGHTED, *SHARES}
    lines = [" ".join(show(k) for k in record if k not in losses)]
    if "total" in record:  # absent only when every batch of the epoch was unreadable
        total = record["total"]
        terms = " + ".join(f"{k} {record[k]:.4g} ({100 * record[k] / (total or 1):.1f} %)"
                           for k in WEIGHTED)
        lines += [f"  loss: total={total:.4g} = {terms}",
                  "  unweighted: " + " ".join(show(k) for k in (*LOSS_TERMS, "l_g"))]
    if SHARES[0] in record:
        lines.append("  share of the ResNet's gradient: " + ", ".join(
            f"{k[len('grad_share_'):]} {100 * record[k]:.1f} %" for k in SHARES))
    return lines


# what curves.png draws: (panel title, metrics.jsonl keys on that axis, log scale); each loss gets
# its own axis, as they differ by orders of magnitude, and one log axis shows the weighted terms
# beside the total
CURVE_PANELS = [("loss (log scale)", ("total", *WEIGHTED), True),
                ("similarity (L_s)", ("similarity",), False),
                ("reconstruction (L_r)", ("reconstruction",), False),
                ("distillation (L_d)", ("distillation",), False),
                ("grouping l_g (the total has β·l_g²)", ("l_g",), False),
                ("share of the ResNet's gradient", SHARES, False),
                ("learning rate", ("lr",), False), ("images / s", ("images_per_s",), False),
                ("k-NN accuracy, held-out", ("knn_accuracy",), False),
                ("spread of z: std × √d (0: collapsed)", ("embedding_std_sqrt_d",), False),
                ("cosine of two faces' z (1: collapsed)", ("embedding_cosine",), False),
                ("landmark hit rate, semantic masking", ("landmark_hit_rate",), False)]


def steady_limits(ax, least):
    """A linear axis spans at least `least` of its values' size around them, so that two epochs
    whose throughput differs by a few % do not fill the panel from bottom to top like a collapse."""
    low, high = ax.get_ylim()
    size, middle = max(abs(low), abs(high)), (low + high) / 2
    if size > 0 and high - low < least * size:
        ax.set_ylim(middle - least * size / 2, middle + least * size / 2)


def draw_curves(metrics_path, png_path):
    """Draw curves.png from the whole metrics.jsonl, against the epoch: the panels of CURVE_PANELS
    whose keys the run logs. Written to a temporary file and renamed, so a reader never sees half a
    picture.
    -> the epochs drawn, or None when matplotlib is not installed."""
    try:  # matplotlib is optional; Figure, not pyplot, leaves a notebook's backend as it was
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    # an epoch logged twice (a run restarted in one folder): its latest
    with open(metrics_path) as f:
        rows = sorted({r["epoch"]: r for r in map(json.loads, f)}.values(),
                      key=lambda r: r["epoch"])
    panels = [(title, [k for k in keys if any(k in r for r in rows)], log)
              for title, keys, log in CURVE_PANELS]
    panels = [panel for panel in panels if panel[1]]
    few = len(rows) <= 3
    # the first panel (the total and its terms) gets the top row, its legend above it in place of a
    # title; the others follow three to a row
    grid_rows = 1 + math.ceil((len(panels) - 1) / 3)
    fig = Figure(figsize=(12, 2.8 * grid_rows), dpi=100, layout="constrained")
    grid = fig.add_gridspec(grid_rows, 3)
    axes = [fig.add_subplot(grid[0, :])]
    axes += [fig.add_subplot(grid[1 + i // 3, i % 3]) for i in range(len(panels) - 1)]
    for ax, (title, keys, log) in zip(axes, panels):
        for key in keys:
            points = [(r["epoch"], r[key]) for r in rows if key in r and (r[key] > 0 or not log)]
            if points:
                # a few epochs are points, not a trend; the total, which a dominant term (β·l_g² at
                # the paper's weights) lies on, is drawn over it in black, dashed, hollow markers
                total = key == "total"
                ax.plot(*zip(*points), marker="o", markersize=(5 if few else 3) + 3 * total,
                        ls=("--" if total else "-") if not few else "none", label=key,
                        zorder=3 if total else 2, color="black" if total else None,
                        markerfacecolor="none" if total else None)
        if log:
            ax.set_yscale("log")
            ax.legend(fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(keys),
                      frameon=False)
            ax.set_ylabel(title, fontsize=9)
        else:
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(title.split(" (")[0], fontsize=8)
            if len(keys) > 1:  # several keys on one axis (the gradient shares): say which is which
                ax.legend(fontsize=7)
            steady_limits(ax, 0.5 if few else 0.1)
        if few:
            ax.set_xlim(min(r["epoch"] for r in rows) - 0.5, max(r["epoch"] for r in rows) + 0.5)
        ax.set_xlabel("epoch", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    tmp = png_path + ".tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, png_path)
    return [r["epoch"] for r in rows]
