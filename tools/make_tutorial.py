"""
Build tutorial.ipynb from the cells below, and (with --execute) run it once so its pictures are saved in it.

    python tools/make_tutorial.py             # cells only, no outputs
    python tools/make_tutorial.py --execute   # run top to bottom on CPU and keep the outputs (a few minutes)

Edit the notebook here, not in Jupyter: the cells stay reviewable as plain text and the committed outputs
always come from one clean top-to-bottom run. The notebook only calls simfle.py, data.py and eval.py; the
code in it is set-up, plotting and a few-line training loop.
"""
import argparse
import os
import sys
import tempfile
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "tutorial.ipynb")

CELLS = []


def md(text):
    CELLS.append(new_markdown_cell(text.strip("\n")))


def code(text):
    CELLS.append(new_code_cell(text.strip("\n")))


# ----------------------------------------------------------------------------- set-up

md(r"""
# SimFLE, one box at a time

SimFLE (Moon & Park, *SimFLE: Simple Facial Landmark Encoding for Self-Supervised Facial Expression
Recognition in the Wild*, arXiv 2303.07648) learns facial-expression features from faces **without labels**.
Two branches share one ResNet:

* **GFL** (global facial feature learning): the ResNet learns from two augmented views of a face (BYOL).
* **FFL** (fine-grained facial landmark learning): **FaceMAE**, a masked autoencoder, rebuilds the face
  from 12 of its 49 patches. The 12 are chosen by **semantic masking**: a **channel-grouping** layer turns
  the ResNet's feature map into group attention maps, and the most activated patches stay visible.
* **Distillation** ties the branches together; it is the only path from FaceMAE back into the ResNet.

This notebook walks through each box of the paper's figure on the `tiny` preset, with a picture for each,
then pretrains for a minute on the CPU and probes the result. Every step calls the project's own code
(`simfle.py`, `data.py`, `eval.py`); nothing of the model is re-written here.

**Run it**: top to bottom, on a CPU, in two to three minutes. On Colab, set `REPO_URL` in the next cell
first. Locally, open the notebook from the repository's folder after `pip install -r requirements.txt`.
""")

code(r'''
# ▶ Colab only: the address of the repository that holds simfle.py, data.py, train.py and eval.py
REPO_URL = "https://github.com/<owner>/simfle"

import importlib.util
import os
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
if importlib.util.find_spec("simfle") is None:  # not started from the repository's folder: fetch it
    if "<owner>" in REPO_URL:
        raise RuntimeError("simfle.py is not importable here: set REPO_URL at the top of this cell to the "
                           "repository's address (or start Jupyter in the repository's folder), then rerun it.")
    if not os.path.isdir("simfle-repo"):
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "simfle-repo"], check=True)
    sys.path.insert(0, os.path.abspath("simfle-repo"))
# Colab already has torch, torchvision, tqdm and matplotlib: install only what is missing, never torch itself
missing = [name for name in ("tqdm", "matplotlib") if importlib.util.find_spec(name) is None]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
os.environ.setdefault("TQDM_DISABLE", "1")  # short cell outputs: no progress bars from the probes
print("running on", "Colab" if IN_COLAB else "a local kernel")
''')

code(r'''
import copy

import matplotlib.pyplot as plt
import torch
from torch.utils.data import DataLoader

import data                # faces, augmentations
import eval as evaluate    # the probes (imported under another name: `eval` is a Python builtin)
import simfle
from simfle import SimFLE, SimFLEConfig

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 72, "axes.titlesize": 9, "axes.labelsize": 9, "font.size": 8})

cfg = SimFLEConfig.preset("tiny")   # the paper's geometry, shrunk to train on a CPU
model = SimFLE(cfg).eval()          # eval mode for the pictures: BatchNorm statistics move only while training
paper = SimFLEConfig.preset("paper")
print("tiny differs from the paper in:", {k: v for k, v in cfg.to_dict().items() if getattr(paper, k) != v})
print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; "
      f"{cfg.groups} groups of {cfg.backbone_channels // cfg.groups} channels; "
      f"{cfg.num_visible} of {cfg.num_patches} patches visible")
''')

code(r'''
# plotting helpers (pictures only; the model and the data come from the project's files)
MEAN, STD = torch.tensor(data.MEAN)[:, None, None], torch.tensor(data.STD)[:, None, None]


def to_image(x):
    """A normalised image (3,H,W) back to an (H,W,3) array in [0,1] for imshow."""
    return (x.float() * STD + MEAN).clamp(0, 1).permute(1, 2, 0).numpy()


def panels(rows, cols, size=1.5):
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    return fig, axes


def overlay(ax, image, heat, alpha=0.55):
    """A face with a small map (h,w) stretched over it, each map scaled to its own range."""
    ax.imshow(to_image(image))
    h = heat.float()
    ax.imshow(((h - h.min()) / (h.max() - h.min() + 1e-12)).numpy(), cmap="jet", alpha=alpha,
              interpolation="bilinear", extent=(0, image.shape[2], image.shape[1], 0))
''')

# ----------------------------------------------------------------------------- 1. data

md(r"""
## 1. The data: faces, landmarks, the two GFL views and the origin

The paper pretrains on face crops (RAF-DB, AffectNet, ...) without their labels. Those datasets need a
licence, so this notebook uses `data.py`'s **synthetic faces**: procedural faces drawn on the fly, with the
7 expressions of RAF-DB (made of facial action units: brows raised, lip corners pulled, ...) and 15
landmarks (brows, eyes, nose, mouth). By default they look like RAF-DB's *aligned* faces: the face fills
the frame and the eyes sit at a fixed height (`synthetic_look="scene"` gives head-and-shoulders pictures with
clutter instead). Identity (face shape, skin, hair, glasses, beard), a little pose and the lighting vary, so
only local cues tell the expressions apart. Each item is a uint8 image, a label and the landmarks in pixels.
""")

code(r'''
train_faces = data.get_dataset("synthetic", split="train", synthetic_count=500)
test_faces = data.get_dataset("synthetic", split="test", synthetic_count=300)   # a disjoint stream
img, label, marks = train_faces[0]
print(f"image {tuple(img.shape)} {img.dtype}, label {label} = {train_faces.classes[label]}, "
      f"landmarks {tuple(marks.shape)} in pixels")

fig, axes = panels(1, 7, 1.6)
for i, ax in enumerate(axes[0]):   # labels cycle through the 7 classes
    img, label, marks = train_faces[i]
    ax.imshow(img.permute(1, 2, 0))
    ax.scatter(*marks.T, s=7, c="lime", edgecolors="black", linewidths=0.3)
    ax.set_title(train_faces.classes[label])
plt.show()
''')

md(r"""
One face feeds both branches. **GFL** gets two strongly augmented **views** (random resized crop, flip,
colour jitter, grayscale, Gaussian blur: BYOL's recipe); **FFL** gets the **origin**, the same face only
resized to 112 px, with no augmentation, because FaceMAE has to rebuild the face itself. `PretrainView`
draws the per-image part of that augmentation; `pretrain_batch` blurs and normalises a whole batch. The
`tiny` preset makes its views 64 px (the paper: 224).
""")

code(r'''
views = data.PretrainView(train_faces, cfg.view_size, cfg.origin_size, seed=0)
batch, _ = data.collate([views[i] for i in range(8)])
origin, view1, view2 = data.pretrain_batch(batch, "cpu")   # normalised floats, views blurred
print("origin", tuple(origin.shape), "| view 1", tuple(view1.shape), "| view 2", tuple(view2.shape))

rows = {"origin (FFL)": origin, "view 1 (GFL)": view1, "view 2 (GFL)": view2}
fig, axes = panels(3, 7, 1.4)
for row, (name, x) in enumerate(rows.items()):
    for j in range(7):
        axes[row, j].imshow(to_image(x[j]))
    axes[row, 0].set_ylabel(name)
for j in range(7):
    axes[0, j].set_title(train_faces.classes[train_faces[j][1]])
plt.show()
''')

# ----------------------------------------------------------------------------- 2. backbone

md(r"""
## 2. The backbone and its feature map

Both branches share one ResNet (`simfle.Backbone`, ResNet-50 in the paper, ResNet-18 in `tiny`, random
initialisation). GFL uses its **pooled** feature, one vector of C numbers per view. Semantic masking uses
its last **feature map** on the 112-px origin: C channels on a 4×4 grid, one cell per 28×28-px square
of the face. After pretraining, this trunk is the only part that is kept.
""")

code(r'''
with torch.no_grad():
    fmap = model.backbone.feature_map(origin)   # (B, C, h, w)
    pooled = model.backbone(view1)              # (B, C)
print("origin", tuple(origin.shape), "-> feature map", tuple(fmap.shape))
print("view  ", tuple(view1.shape), "-> pooled feature", tuple(pooled.shape))

fig, axes = panels(3, 5, 1.6)
for r in range(3):
    axes[r, 0].imshow(to_image(origin[r]))
    overlay(axes[r, 1], origin[r], fmap[r].mean(0))
    for k, c in enumerate((0, 1, 2)):
        axes[r, 2 + k].imshow(fmap[r, c], cmap="viridis")
for ax, title in zip(axes[0], ["origin", "mean of all channels", "channel 0", "channel 1", "channel 2"]):
    ax.set_title(title)
plt.show()
''')

# ----------------------------------------------------------------------------- 3. channel grouping

md(r"""
## 3. Channel grouping

Semantic masking starts from the feature map F, taken with no gradient. A 1×1 convolution, BatchNorm and
ReLU give attention channels A = ReLU(BN(Conv(F))) (`simfle.ChannelGrouping`, from DBTNet). The C channels
are split into G = 32 contiguous **groups**; the sum of a group's channels is its **group attention map**
(`simfle.group_maps`). The **grouping loss** (`simfle.grouping_loss`) compares S, the channels' cosine
similarity matrix, with T, a block-diagonal matrix of G blocks of ones: channels of one group should
fire on the same face region, channels of different groups on different ones. Each group should end up
attending to one part of the face.

The reference code initialises the convolution's weights to 1.0: **every channel starts identical**, so
before training all 32 group maps are nearly the same map and S is nearly all ones. Identical channels get identical
gradients, so here the weights carry a 10⁻³ perturbation that lets them drift apart (without it, under
bf16 they never do). Section 7 shows the maps after some training.
""")

code(r'''
def show_groups(out, title, faces=3, groups=(0, 5, 10, 15, 20, 25, 31)):
    fig, axes = panels(faces, len(groups) + 1, 1.3)
    for r in range(faces):
        axes[r, 0].imshow(to_image(origin[r]))
        for k, g in enumerate(groups):
            overlay(axes[r, k + 1], origin[r], out["maps"][r, g])
            axes[0, k + 1].set_title(f"group {g}")
    fig.suptitle(title, fontsize=10)
    plt.show()


def show_similarity(model, title):
    """S, the channels' cosine-similarity matrix (what the grouping loss shapes), next to its target T."""
    with torch.no_grad():
        S = simfle.channel_similarity(model.grouping(model.backbone.feature_map(origin)))   # (C, C)
        loss = simfle.grouping_loss(S, cfg.groups).item()
    M = cfg.backbone_channels // cfg.groups
    T = torch.block_diag(*[torch.ones(M, M)] * cfg.groups)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2))
    for ax, m, name in ((axes[0], S, f"S ({title}), l_g = {loss:.1f}"), (axes[1], T, "target T: G blocks of ones")):
        ax.imshow(m[:128, :128], cmap="magma", vmin=0, vmax=1)
        ax.set_title(name + "\n(first 128 channels)")
        ax.set_xlabel("channel"), ax.set_ylabel("channel")
    plt.tight_layout()
    plt.show()


torch.manual_seed(0)
before = model.inspect(origin)   # the FFL branch's intermediate results, computed by the training code path
print("group maps", tuple(before["maps"].shape), "| group drawn for each face:", before["chosen"].tolist())
print(f"largest difference between two groups' maps: {(before['maps'] - before['maps'][:, :1]).abs().max().item():.3g}")
show_groups(before, "group attention maps before training: all groups identical")
show_similarity(model, "before training")
''')

# ----------------------------------------------------------------------------- 4. semantic masking

md(r"""
## 4. Semantic masking next to random masking

For each face, one group is drawn at random (fresh at every step). Its map is upsampled to the image,
every 16×16 patch is scored by its mean attention (`simfle.semantic_patch_scores`), and the **12 most
activated patches stay visible**; the other 37 are masked (`simfle.keep_top_patches`). FaceMAE's encoder
then sees the regions the ResNet finds salient (eyes, brows, mouth: the landmarks) and must reconstruct
the rest of the face from them. MAE's **random masking**, the paper's ablation, keeps 12 patches at
random: the same model with `masking="random"`.
""")

code(r'''
random_model = SimFLE(SimFLEConfig.preset("tiny", masking="random")).eval()
random_model.load_state_dict(model.state_dict())   # the same weights: only the choice of patches differs


def show_masks(semantic, random, title, faces=6):
    fig, axes = panels(3, faces, 1.5)
    for j in range(faces):
        overlay(axes[0, j], origin[j], semantic["maps"][j, semantic["chosen"][j]])
        axes[0, j].set_title(f"group {semantic['chosen'][j].item()}")
        axes[1, j].imshow(to_image(semantic["visible"][j]))
        axes[2, j].imshow(to_image(random["visible"][j]))
    for row, name in enumerate(("drawn group's map", "semantic: visible", "random: visible")):
        axes[row, 0].set_ylabel(name)
    fig.suptitle(title, fontsize=10)
    plt.show()


torch.manual_seed(0)
before_random = random_model.inspect(origin)
visible = (1 - before["mask"]).sum(1).int()   # mask: 1 = masked
print(f"visible patches per face: {visible.tolist()} of {cfg.num_patches}")
show_masks(before, before_random, "12 visible patches of 49, before training")
''')

md(r"""
Does semantic masking keep the landmarks visible? The **landmark hit rate** (`eval.landmark_hit_rate`)
counts the share of a face's landmarks that fall in visible patches, averaged over all 32 groups (training
draws one at random). Random masking keeps 12 of 49 patches wherever the landmarks are: 24.5 % in expectation.
""")

code(r'''
hits_before = evaluate.landmark_hit_rate(model, test_faces, "cpu")
print(f"landmarks in visible patches, untrained model: semantic masking {100 * hits_before['semantic']:.1f} %, "
      f"random masking {100 * hits_before['random']:.1f} %")
''')

# ----------------------------------------------------------------------------- 5. FaceMAE

md(r"""
## 5. FaceMAE: masked input, reconstruction, original

FaceMAE (`simfle.FaceMAE`) is a masked autoencoder: a ViT encoder runs on the 12 visible patches only (plus
a CLS token), a light decoder gets the encoded patches back in place, with a learned mask token for each of
the 37 masked ones, and predicts every patch's pixels. The loss (`simfle.reconstruction_loss`) is the mean
squared error on the **masked patches only**, against per-patch normalised pixels (MAE's "norm-pix" loss).

As in MAE's figures, `inspect` de-normalises each predicted patch with the true patch's mean and spread, so
the colours are right even before training: what FaceMAE has to learn is the structure *inside* each
patch. Untrained, that structure is noise.
""")

code(r'''
def show_reconstruction(out, title, faces=6):
    fig, axes = panels(3, faces, 1.5)
    for j in range(faces):
        axes[0, j].imshow(to_image(out["visible"][j]))
        axes[1, j].imshow(to_image(out["reconstruction"][j]))
        axes[2, j].imshow(to_image(origin[j]))
    for row, name in enumerate(("masked input", "reconstruction", "original")):
        axes[row, 0].set_ylabel(name)
    fig.suptitle(f"{title}: masked-patch loss {out['loss'].item():.3f}", fontsize=10)
    plt.show()


print(f"encoder: {cfg.num_visible} visible patches + CLS -> {cfg.enc_dim}-wide tokens; "
      f"decoder: {cfg.num_patches} patches of {cfg.patch_size}x{cfg.patch_size}x3 pixels")
show_reconstruction(before, "FaceMAE before training")
''')

# ----------------------------------------------------------------------------- 6. GFL, EMA, distillation

md(r"""
## 6. The GFL loss (BYOL), the EMA target, and the distillation

**GFL** is BYOL: the *online* network (backbone → projector → predictor) predicts, from view 1, the
*target* network's projection of view 2, and the other way round. The loss is `simfle.byol_loss`,
2 − 2·cos(p, z'), which is 0 when the two point the same way. Below, the loss for every pair (face i's
view 1, face j's view 2): the diagonal pairs are two views of the same face. BYOL only ever pulls the
diagonal down; nothing pushes the other pairs apart. The asymmetry (a predictor on one side, a slowly
moving target on the other) is what keeps it from collapsing to a constant.
""")

code(r'''
@torch.no_grad()
def byol_pairs(model):
    """sim(p_i, z'_j) for face i's view-1 prediction and face j's view-2 target projection: (B, B)."""
    views = torch.cat([view1, view2])
    z1, z2 = model.projector(model.backbone(views)).chunk(2)
    p1, _ = model.predictor(torch.cat([z1, z2])).chunk(2)
    _, t2 = model.target_projector(model.target_backbone(views)).chunk(2)
    return simfle.byol_loss(p1[:, None], t2[None])   # broadcast to (B, B)


def show_pairs(pairs, title):
    fig, ax = plt.subplots(figsize=(3.4, 3))
    im = ax.imshow(pairs, cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("face j, view 2 (target)"), ax.set_ylabel("face i, view 1 (online)")
    diagonal = pairs.diag().mean().item()
    others = (pairs.sum() - pairs.diag().sum()).item() / (pairs.numel() - len(pairs))
    ax.set_title(f"{title}\nsame face {diagonal:.2f}, other faces {others:.2f}")
    plt.show()


pairs = byol_pairs(model)
with torch.no_grad():
    L_s = model.gfl_loss(torch.cat([view1, view2]), model.backbone(torch.cat([view1, view2]))).item()
print(f"L_s = model.gfl_loss = {L_s:.4f}: sim(p1, z2') + sim(p2, z1'), averaged over the faces; "
      f"the diagonal below is its first term, mean {pairs.diag().mean().item():.4f}")
show_pairs(pairs, "BYOL loss before training")
''')

md(r"""
The **target** is never trained by gradients. After every optimizer step, `model.update_target()` moves it
a little towards the online network: target ← m·target + (1 − m)·online, with m = 0.99. One step on a copy
of the model shows both facts:
""")

code(r'''
demo = copy.deepcopy(model).train()
loss, parts = demo(origin, view1, view2)
loss.backward()
print("gradient reaching the target backbone:", any(p.grad is not None for p in demo.target_backbone.parameters()))
torch.optim.SGD(demo.parameters(), lr=0.05).step()
online = torch.nn.utils.parameters_to_vector(demo.backbone.parameters())
target_before = torch.nn.utils.parameters_to_vector(demo.target_backbone.parameters())
demo.update_target()
target_after = torch.nn.utils.parameters_to_vector(demo.target_backbone.parameters())
moved = (target_after - target_before).norm() / (online - target_before).norm()
print(f"the target moved {moved:.4f} of the way to the online network (1 - m = {1 - cfg.ema:.2f})")
del demo
''')

md(r"""
**Distillation** ties the branches together. A D-projector maps the ResNet's pooled features of each view
to u1 and u2; another maps the mean of FaceMAE's encoder tokens to v. Their average t = (u1 + u2 + v)/3,
with no gradient, is the teacher, and each of the three is pulled towards it with a temperature-softened
KL divergence (`simfle.distillation_loss`, T = 4). Because argsort is not differentiable and the FFL
branch sees the backbone's map without gradient, this is the **only path** by which what FaceMAE learns
about fine facial detail reaches the ResNet.
""")

code(r'''
with torch.no_grad():
    u1, u2 = model.distill_gfl(model.backbone(torch.cat([view1, view2]))).chunk(2)
    torch.manual_seed(0)
    v = model.distill_ffl(model.ffl(origin)["latent"][:, 1:].mean(1))   # encoder tokens, CLS left out
    t = (u1 + u2 + v) / 3
    L_d = sum(simfle.distillation_loss(w, t, cfg.kd_temperature) for w in (u1, u2, v))
    torch.manual_seed(0)
    _, parts = model(origin, view1, view2)   # the model's own forward, same random group draw
print(f"L_d = {L_d.item():.5f}; the model's forward reports {parts['distillation'].item():.5f}")
print("total loss L = L_s + L_r + 0.3 L_d + 0.03 L_g:", {k: round(x.item(), 4) for k, x in parts.items()})

fig, ax = plt.subplots(figsize=(7, 2.4))
for w, name in ((u1, "u1 (view 1)"), (u2, "u2 (view 2)"), (v, "v (FaceMAE)"), (t, "t (teacher)")):
    ax.plot(torch.softmax(w[0] / cfg.kd_temperature, 0), label=name, lw=1.6 if name[0] == "t" else 0.9)
ax.set_xlabel("output dimension"), ax.set_ylabel("softmax(· / T)")
ax.set_title("the three distributions distillation pulls together (face 0, before training)")
ax.legend(ncol=4, fontsize=7)
plt.show()
''')

# ----------------------------------------------------------------------------- 7. pretraining

md(r"""
## 7. A short pretraining run

The training loop is the one of `train.py`, in a few lines: SGD with momentum 0.9, weight decay 1e-4 and
the paper's learning rate 0.05 × batch / 256, the model returns its own loss, and the EMA target follows
after every step. Here: 60 steps of 16 faces (about a minute on a laptop CPU), constant learning rate.
A real run (`python train.py`) is longer and adds the cosine schedule, checkpoints and a k-NN monitor.
""")

code(r'''
STEPS, BATCH = 60, 16


def pretrain(model, steps, batch_size=BATCH, seed=0):
    """A short version of train.py's loop. Returns the loss parts of every step."""
    torch.manual_seed(seed)
    views = data.PretrainView(train_faces, model.config.view_size, model.config.origin_size, seed=seed)
    loader = DataLoader(views, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=data.collate,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05 * batch_size / 256, momentum=0.9, weight_decay=1e-4)
    model.train()
    history, epoch = [], 0
    while len(history) < steps:
        views.set_epoch(epoch)   # fresh augmentations every pass
        for batch, _ in loader:
            origin_b, view1_b, view2_b = data.pretrain_batch(batch, "cpu")
            loss, parts = model(origin_b, view1_b, view2_b)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.update_target()   # EMA after every optimizer step
            record = {k: x.item() for k, x in parts.items()}
            if model.target_backbone is not None:   # how far the EMA target lags behind
                record["online - target"] = (torch.nn.utils.parameters_to_vector(model.backbone.parameters())
                                             - torch.nn.utils.parameters_to_vector(model.target_backbone.parameters())).norm().item()
            history.append(record)
            if len(history) % 20 == 0:
                print(f"step {len(history):3d}: " + ", ".join(f"{k} {x:.3f}" for k, x in record.items()))
            if len(history) == steps:
                break
        epoch += 1
    return model.eval(), history


model, history = pretrain(model, STEPS)
''')

code(r'''
names = [k for k in history[0]]
fig, axes = plt.subplots(1, len(names), figsize=(2.3 * len(names), 2.3))
for ax, name in zip(axes, names):
    ax.plot([h[name] for h in history])
    ax.set_title(name), ax.set_xlabel("step")
    if name in ("grouping", "total"):
        ax.set_yscale("log")
plt.tight_layout()
plt.show()
''')

md(r"""
How to read the curves: the BYOL **similarity** drops within the first steps and then levels off;
**reconstruction** and **distillation** fall slowly. The **grouping** loss starts at its largest value
(every channel identical, S all ones) and dominates the total: it is the paper's l_g squared, as the
reference code minimises it, times β = 0.03. It falls once training breaks the symmetry between the
channels, and jumps about while the groups sort themselves out. **Online − target** is the distance between
the online backbone and its EMA copy: it grows while the online network moves and the target trails 1 % per
step behind, and shrinks as the online network slows down.

### What changed after 60 steps

The same faces, the same random group draws, the trained model:
""")

code(r'''
torch.manual_seed(0)
after = model.inspect(origin)
random_model.load_state_dict(model.state_dict())
torch.manual_seed(0)
after_random = random_model.inspect(origin)
print(f"largest difference between two groups' maps: {(after['maps'] - after['maps'][:, :1]).abs().max().item():.3g}")
show_groups(after, f"group attention maps after {STEPS} steps")
show_similarity(model, f"after {STEPS} steps")
hits_after = evaluate.landmark_hit_rate(model, test_faces, "cpu")
print(f"landmarks in visible patches: {100 * hits_before['semantic']:.1f} % before training, "
      f"{100 * hits_after['semantic']:.1f} % after {STEPS} steps (random masking {100 * hits_after['random']:.1f} %)")
''')

code(r'''
show_masks(after, after_random, f"visible patches after {STEPS} steps")
show_reconstruction(after, f"FaceMAE after {STEPS} steps")
show_pairs(byol_pairs(model), f"BYOL loss after {STEPS} steps")
''')

md(r"""
Sixty steps are a glimpse, not a result. The channels have begun to split into blocks that fire
differently (S is no longer all ones) and the group maps now differ, but nothing yet ties a group to a
landmark, and the landmark hit rate has hardly moved. Over the quick start's longer run it *falls* (from
46 % towards 33 %): the trained backbone's maps lose their focus on the landmarks, and many groups settle off
them (the README's *Evidence* section measures why). Fifteen times longer (30 epochs) it climbs back, to
the untrained level on average (45 %, three seeds) and 54 % in the best group. The reconstructions are still blurry. The paper trains for 100
epochs; `python train.py` runs the `tiny` preset for 2 epochs on 4000 synthetic faces (the README gives its
time and numbers, and `benchmarks/README.md` follows the hit rate over both runs).
""")

# ----------------------------------------------------------------------------- 8. probes

md(r"""
## 8. Probing the trunk: linear probe and landmark probe

Only the trunk is kept. The paper's test is a **linear probe**: the trunk is frozen and a linear
classifier is trained on its pooled features (`eval.linear_probe`). To keep the notebook quick, the probe
trains on cached features of un-augmented faces for 20 epochs (`features="cached"`, not the paper's
protocol), on 500 training and 300 test faces. The baseline is the same ResNet at random initialisation.
""")

code(r'''
torch.manual_seed(0)
trunks = {"random": simfle.Backbone(cfg.backbone, cfg.stem),
          "pretrained": copy.deepcopy(model.trunk())}   # a copy: the probe freezes what it is given
reports = {}
for name, trunk in trunks.items():
    reports[name], _ = evaluate.linear_probe(trunk, train_faces, test_faces, cfg.view_size, "cpu", epochs=20,
                                             batch_size=128, features="cached", seed=0)
    print(f"{name:10s} trunk: accuracy {100 * reports[name]['accuracy']:.1f} %, mean class accuracy "
          f"{100 * reports[name]['mean_class_accuracy']:.1f} % (chance {100 / len(test_faces.classes):.1f} %)")

classes = test_faces.classes
fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.8))
for ax, (name, report) in zip(axes, reports.items()):
    m = torch.tensor(report["confusion"], dtype=torch.float)
    m = m / m.sum(1, keepdim=True).clamp(min=1)   # rows: true class, as fractions
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if m[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    ax.set_title(f"{name} trunk: {100 * report['accuracy']:.1f} %")
plt.tight_layout()
plt.show()
''')

md(r"""
The paper claims that SimFLE's features **localise facial landmarks** better. The **landmark probe**
(`eval.landmark_probe`) measures it: a ridge regression from the frozen trunk's last feature map to the
landmark coordinates, its strength chosen on a tenth of the training faces, scored by the normalised mean
error (NME: mean landmark error over the distance between the outer eye corners) on the test faces, next
to the error of always guessing the mean face shape. To draw the predictions, the same regression is fitted
again with `eval.feature_maps` and `eval.ridge`.
""")

code(r'''
landmark_reports, predicted = {}, {}
for name, trunk in trunks.items():
    landmark_reports[name] = r = evaluate.landmark_probe(trunk, train_faces, test_faces, cfg.origin_size, "cpu", seed=0)
    print(f"{name:10s} trunk: NME {100 * r['nme']:.1f} % (mean shape: {100 * r['nme_mean_shape']:.1f} %)")
    x, y = evaluate.feature_maps(trunk, train_faces, cfg.origin_size, "cpu")      # (n, C*h*w), (n, L, 2) in [0, 1]
    test_x, test_y = evaluate.feature_maps(trunk, test_faces, cfg.origin_size, "cpu")
    fit = evaluate.ridge(x, y.flatten(1), r["ridge_lambda"] * x.pow(2).sum(1).mean().item())
    predicted[name] = fit(test_x).view_as(test_y)

fig, axes = panels(2, 6, 1.6)
for row, name in enumerate(trunks):
    for j in range(6):
        ax = axes[row, j]
        ax.imshow(test_faces[j][0].permute(1, 2, 0))
        size = cfg.origin_size
        ax.scatter(*(test_y[j] * size).T, s=8, c="lime", edgecolors="black", linewidths=0.3)
        ax.scatter(*(predicted[name][j] * size).T, s=9, c="red", marker="x", linewidths=0.8)
    axes[row, 0].set_ylabel(f"{name} trunk")
fig.suptitle("landmarks on test faces: true (green dots), predicted by the landmark probe (red crosses)", fontsize=9)
plt.show()
''')

md(r"""
After one minute of pretraining, do not expect the pretrained trunk to beat the random one on either
probe. A freshly initialised ResNet is a strong baseline here: its BatchNorm layers still hold mean 0 and
variance 1, so it is an unnormalised random network, and on aligned faces its pooled features and its
feature map already carry much of the expression and the landmark positions. A trained trunk has BatchNorm
statistics of real faces and must learn its way back above that (the README's quick start and evidence
sections measure both). The comparison becomes meaningful after a real run:
`python train.py` ends with the same linear probe of its trunk against a random one, and
`python eval.py --ckpt runs/synthetic-tiny/last.pt --mode landmarks` runs the landmark probe.
""")

# ----------------------------------------------------------------------------- 9. exercises

md(r"""
## 9. Exercises

Each one is a change to the configuration (`SimFLEConfig.preset("tiny", ...)`), a new `SimFLE`, and the
`pretrain` function of section 7. Compare the loss curves and the pictures with the ones above; for numbers
you can trust, use `train.py` with the same option (every field of the config is a command-line option:
`python train.py --help`) and `eval.py`.

1. **The mask ratio.** `SimFLEConfig.preset("tiny", mask_ratio=0.5)` keeps 24 patches visible instead of 12,
   `0.9` keeps 4. Look at the reconstructions and at the reconstruction loss: how much of the face does
   FaceMAE need? Why should the task stay hard for the encoder to learn landmark features?
2. **Semantic or random masking.** Train a `masking="random"` model next to the default for the same number
   of steps (`python train.py --masking random`). Which patches does each keep visible, and does the linear
   probe tell them apart after a real run? This is the paper's ablation.
3. **The number of groups.** `groups=8` or `groups=128` (it must divide the 512 channels of ResNet-18).
   Fewer groups mean broader group maps; look at `show_groups` and at the S matrix after training. How long
   does the grouping loss take to leave its starting value?
4. **Another GFL method.** `gfl="simclr"` (or `"barlow"`): the paper says GFL is modular. SimCLR has no
   predictor and no target network (`model.target_backbone is None`): its loss needs negatives, the other
   faces of the batch. How does its similarity curve compare with BYOL's, and what happens with a batch of 4?
5. **FaceMAE off.** `use_facemae=False` leaves the GFL method alone, the baseline SimFLE is meant to beat:
   no grouping, no masking, no distillation. Compare the linear and landmark probes of both after
   `python train.py --use-facemae false` and after the default run.
6. **The EMA momentum.** `ema=0.0` makes the target a copy of the online network at every step, `ema=1.0`
   freezes it. Watch the similarity and online − target curves: which one collapses, which one stalls?

```python
variant = SimFLE(SimFLEConfig.preset("tiny", mask_ratio=0.5))
variant, variant_history = pretrain(variant, STEPS)
torch.manual_seed(0)
show_reconstruction(variant.inspect(origin), "mask ratio 0.5")
```
""")


# ----------------------------------------------------------------------------- build / execute


def build():
    nb = new_notebook(cells=CELLS)
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    })
    return nb


def execute(nb, timeout=600):
    """Run the notebook top to bottom on CPU in a scratch folder, the project importable from ROOT."""
    from nbclient import NotebookClient
    env = {"PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # pictures become outputs
           "CUDA_VISIBLE_DEVICES": ""}  # the committed outputs come from a CPU run
    env_before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits it
    try:
        with tempfile.TemporaryDirectory() as scratch:
            NotebookClient(nb, kernel_name="python3", timeout=timeout, record_timing=False,
                           resources={"metadata": {"path": scratch}}).execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--execute", action="store_true", help="run the notebook and keep its outputs")
    p.add_argument("--out", default=NOTEBOOK, help="where to write the notebook")
    args = p.parse_args(argv)
    nb = build()
    if args.execute:
        t0 = time.time()
        execute(nb)
        print(f"executed in {time.time() - t0:.0f} s")
    nbformat.validate(nb)
    nbformat.write(nb, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
