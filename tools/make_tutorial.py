"""
Build tutorial.ipynb from the cells below, and (with --execute) run it once so its pictures are saved in it.

    python tools/make_tutorial.py             # cells only, no outputs
    python tools/make_tutorial.py --execute   # run top to bottom on CPU and keep the outputs (a few minutes)
    python tools/make_tutorial.py --keep-outputs   # prose edits only: the committed outputs, code cells unchanged
    python tools/make_tutorial.py --solutions --out tutorial_solutions.ipynb   # the exercises filled in

Edit the notebook here, not in Jupyter: the cells stay reviewable as plain text and the committed outputs
always come from one clean top-to-bottom run. The notebook only calls simfle.py, data.py and eval.py; the
code in it is set-up, plotting and a few-line training loop. Its exercises (section 9) are stubs that the
student fills in; exercises.py checks them and tutorial_solutions.py holds the answers (--solutions puts them
in the stubs' place: the notebook test runs that copy).
"""
import argparse
import ast
import copy
import os
import sys
import tempfile
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "tutorial.ipynb")
SOLUTIONS = os.path.join(ROOT, "tutorial_solutions.py")
# The GitHub repository (owner/name) the "Open in Colab" badge and the first cell's REPO_URL point at. Set it here and
# rebuild with --execute; until then a reader sets REPO_URL in the first code cell.
REPO = "<owner>/simfle"

sys.path.insert(0, ROOT)
from exercises import EXPECTED  # noqa: E402  (the measurement questions' ranges, stated in the notebook)

CELLS = []


def md(text):
    CELLS.append(new_markdown_cell(text.strip("\n")))


def code(text):
    CELLS.append(new_code_cell(text.strip("\n")))


def exercise(name, stub):
    """A cell the student fills in: the stub of tutorial_solutions.<name>, then the cell that checks it."""
    CELLS.append(new_code_cell(stub.strip("\n"), metadata={"exercise": name}))


def expected(name):
    low, high = EXPECTED[name]
    return f"{low:g} to {high:g}"


# ----------------------------------------------------------------------------- set-up

md(rf"""
# SimFLE, one box at a time

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{REPO}/blob/main/tutorial.ipynb)

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
(`simfle.py`, `data.py`, `eval.py`); nothing of the model is re-written here, except in section 9, where
**you** write five of its pieces and a checker grades each one.

**Run it** top to bottom, on a CPU, in three to five minutes. **On Colab** (the badge above): the first code
cell fetches the repository from `REPO_URL`; if it still says `<owner>`, set it there, the one place to edit.
**Locally**: `pip install -r requirements.txt jupyterlab`, then open the notebook from the repository's folder
(or in VS Code); `REPO_URL` is not needed.
""")

code(r'''
# ▶▶ THE ONE PLACE TO EDIT, on Colab only: the GitHub address of the repository that holds simfle.py, e.g.
#    REPO_URL = "https://github.com/your-name/simfle". Not needed when Jupyter runs in the repository's folder.
REPO_URL = "https://github.com/<owner>/simfle"

import importlib.util
import os
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
if importlib.util.find_spec("simfle") is None:  # not started from the repository's folder: fetch it
    if "<owner>" in REPO_URL:
        print("WHAT TO DO: this notebook needs the repository's files (simfle.py, data.py, eval.py, exercises.py).\n"
              "  * On Colab: set REPO_URL at the top of this cell to the repository's GitHub address, run this cell again.\n"
              "  * On your own machine: start Jupyter in the repository's folder and reopen the notebook.")
        raise RuntimeError("REPO_URL is not set: see WHAT TO DO above")
    if not os.path.isdir("simfle-repo"):
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "simfle-repo"], check=True)
    sys.path.insert(0, os.path.abspath("simfle-repo"))
# Colab already has torch, torchvision, tqdm and matplotlib: install only what is missing, never torch itself
missing = [name for name in ("tqdm", "matplotlib") if importlib.util.find_spec(name) is None]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
os.environ.setdefault("TQDM_DISABLE", "1")  # short cell outputs: no progress bars from the probes
print("running on", "Colab" if IN_COLAB else "a local kernel")
'''.replace('"https://github.com/<owner>/simfle"', f'"https://github.com/{REPO}"', 1))  # REPO, set at the top

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
# legible pictures: 100 dpi, no text under 8 pt
plt.rcParams.update({"figure.dpi": 100, "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 9,
                     "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8})

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


def panels(rows, cols, size=1.3):
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


def weighted_terms(parts, c=cfg):
    """The four terms of the paper's total loss L = L_s + L_r + α·L_d + β·L_g as they enter it, and l_g itself.

    The model's parts are unweighted; its "grouping" part is l_g², the square the reference code minimises
    (MSE(l_g, 0)), so the fourth term is β·l_g². The four terms add up to the model's total.
    """
    p = {k: float(v) for k, v in parts.items()}
    return {"L_s": c.sim_weight * p["similarity"], "L_r": c.recon_weight * p["reconstruction"],
            "alpha*L_d": c.alpha * p["distillation"], "beta*l_g^2": c.beta * p["grouping"],
            "l_g": p["grouping"] ** 0.5, "total": p["total"]}
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

fig, axes = panels(1, 7, 1.5)
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

fig, axes = panels(3, 5, 1.5)
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
(`simfle.group_maps`). The **grouping loss** l_g (`simfle.grouping_loss`) compares S, the channels' cosine
similarity matrix, with T, a block-diagonal matrix of G blocks of ones: channels of one group should
fire on the same face region, channels of different groups on different ones. Each group should end up
attending to one part of the face.

The reference code initialises the convolution's weights to 1.0: **every channel starts identical**, so
before training the 32 group maps are the same map and S is all ones, which gives l_g = 0.001 · (512² − 32·16²)
= 254. Identical channels get identical gradients, so here the weights carry a 10⁻³ perturbation that lets
them drift apart (without it, under bf16 they never do). Two numbers say how alike the groups are: the
correlation between two groups' maps, and how many *different* sets of 12 visible patches the 32 groups
would give a face (1: whichever group is drawn, the mask is the same). Section 7 shows both after training.
""")

code(r'''
def group_spread(out):
    """How alike the G group maps of each face are -> (smallest over the faces of the mean correlation between
    two groups' maps, [number of different visible-patch sets the G groups give each face])."""
    maps = out["maps"].float()                                           # (B,G,h,w)
    B, G = maps.shape[:2]
    z = torch.nn.functional.normalize((maps - maps.mean((2, 3), keepdim=True)).flatten(2), dim=2)
    corr = (torch.einsum("bgi,bhi->b", z, z) - G) / (G * (G - 1))         # (B,) mean over the pairs of groups
    distinct = []
    for b in range(B):
        scores = simfle.semantic_patch_scores(maps[b:b + 1].expand(G, -1, -1, -1), torch.arange(G),
                                              cfg.origin_size, cfg.patch_size)   # (G,N): face b, every group
        ids_keep, _, _ = simfle.keep_top_patches(scores, cfg.num_visible)
        distinct.append(len({tuple(sorted(ids)) for ids in ids_keep.tolist()}))
    return corr.min().item(), distinct


def show_groups(out, title, faces=3, groups=(0, 5, 10, 15, 20, 25, 31)):
    fig, axes = panels(faces, len(groups) + 1, 1.2)
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
        l_g = simfle.grouping_loss(S, cfg.groups).item()
    M = cfg.backbone_channels // cfg.groups
    T = torch.block_diag(*[torch.ones(M, M)] * cfg.groups)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2))
    for ax, m, name in ((axes[0], S, f"S ({title}): l_g = {l_g:.1f}"), (axes[1], T, "target T: G blocks of ones")):
        ax.imshow(m[:128, :128], cmap="magma", vmin=0, vmax=1)
        ax.set_title(name + "\n(first 128 channels)")
        ax.set_xlabel("channel"), ax.set_ylabel("channel")
    plt.tight_layout()
    plt.show()
    return l_g


torch.manual_seed(0)
before = model.inspect(origin)   # the FFL branch's intermediate results, computed by the training code path
corr_before, distinct_before = group_spread(before)
print("group maps", tuple(before["maps"].shape), "| group drawn for each face:", before["chosen"].tolist())
print(f"correlation between two groups' maps: {corr_before:.4f} or more; "
      f"different masks among the 32 groups, per face: {distinct_before}")
show_groups(before, f"group attention maps before training: one map 32 times (correlation {corr_before:.4f})")
l_g_before = show_similarity(model, "before training")
print(f"l_g = {l_g_before:.1f} (what the model's loss logs is its square, l_g² = {l_g_before ** 2:.0f})")
''')

# ----------------------------------------------------------------------------- 4. semantic masking

md(r"""
## 4. Semantic masking next to random masking and a fixed central mask

For each face, one group is drawn at random (fresh at every step). Its map is upsampled to the image,
every 16×16 patch is scored by its mean attention (`simfle.semantic_patch_scores`), and the **12 most
activated patches stay visible**; the other 37 are masked (`simfle.keep_top_patches`). FaceMAE's encoder
then sees the regions the ResNet finds salient (eyes, brows, mouth: the landmarks) and must reconstruct
the rest of the face from them. Two controls: MAE's **random masking**, the paper's ablation, keeps 12
patches at random (the same model with `masking="random"`); a **fixed central mask** keeps the 12 patches
nearest the image centre for every face (`eval.central_patches`). The faces are aligned, so the landmarks
crowd the centre: a mask has learned something about faces only if it beats the central one.
""")

code(r'''
random_model = SimFLE(SimFLEConfig.preset("tiny", masking="random")).eval()
random_model.load_state_dict(model.state_dict())   # the same weights: only the choice of patches differs
central = torch.ones(cfg.num_patches)
central[evaluate.central_patches(cfg.origin_size // cfg.patch_size, cfg.num_visible)] = 0   # 1 = masked


def show_masks(semantic, random, title, faces=6):
    central_visible = simfle.unpatchify(simfle.patchify(origin, cfg.patch_size) * (1 - central)[:, None],
                                        cfg.patch_size)
    fig, axes = panels(4, faces, 1.3)
    for j in range(faces):
        overlay(axes[0, j], origin[j], semantic["maps"][j, semantic["chosen"][j]])
        axes[0, j].set_title(f"group {semantic['chosen'][j].item()}")
        axes[1, j].imshow(to_image(semantic["visible"][j]))
        axes[2, j].imshow(to_image(random["visible"][j]))
        axes[3, j].imshow(to_image(central_visible[j]))
    for row, name in enumerate(("drawn group", "semantic", "random", "central")):
        axes[row, 0].set_ylabel(name)
    fig.suptitle(title, fontsize=10)
    plt.show()


torch.manual_seed(0)
before_random = random_model.inspect(origin)
visible = (1 - before["mask"]).sum(1).int()   # mask: 1 = masked
print(f"visible patches per face: {visible.tolist()} of {cfg.num_patches}")
show_masks(before, before_random, "the 12 visible patches of 49, before training")
''')

md(r"""
Does semantic masking keep the landmarks visible? The **landmark hit rate** (`eval.landmark_hit_rate`)
counts the share of a face's landmarks that fall in visible patches, averaged over all 32 groups (training
draws one at random), on the 300 test faces. Random masking keeps 12 of 49 patches wherever the landmarks
are: 24.5 % in expectation. The fixed central mask gets whatever share of the landmarks lies in the centre.
""")

code(r'''
def hit_rates(hits, when):
    print(f"landmarks in visible patches, {when}: semantic masking {100 * hits['semantic']:.1f} % "
          f"(best group {100 * hits['best_group']:.1f} %) | fixed central mask {100 * hits['central']:.1f} % "
          f"| random masking {100 * hits['random']:.1f} %")


hits_before = evaluate.landmark_hit_rate(model, test_faces, "cpu")
hit_rates(hits_before, "untrained model")
''')

md(r"""
Semantic masking of the *untrained* model is far above random masking, but only a little above the fixed
central mask: a random ResNet's map is brightest on the face's middle, where the landmarks are, and that
alone is most of the effect. What training adds has to be measured against the central mask.
""")

# ----------------------------------------------------------------------------- 5. FaceMAE

md(r"""
## 5. FaceMAE: masked input, reconstruction, original

FaceMAE (`simfle.FaceMAE`) is a masked autoencoder: a ViT encoder runs on the 12 visible patches only (plus
a CLS token), a light decoder gets the encoded patches back in place, with a learned mask token for each of
the 37 masked ones, and predicts every patch's pixels. The loss (`simfle.reconstruction_loss`) is the mean
squared error on the **masked patches only**, against **norm-pix targets**: each patch's pixels minus the
patch's mean, over its standard deviation (`simfle.norm_pix_targets`, MAE's "norm-pix" loss).

So FaceMAE never predicts a patch's colour or brightness, only its structure. To draw a prediction as an
image, `inspect` un-normalises each predicted patch with the **true** patch's mean and standard deviation,
as MAE's own demo does: the colours in the reconstruction row are the original's, even before training,
and only the structure inside each masked patch is FaceMAE's. Untrained, that structure is noise.
""")

code(r'''
def show_reconstruction(out, title, faces=6):
    fig, axes = panels(3, faces, 1.3)
    for j in range(faces):
        axes[0, j].imshow(to_image(out["visible"][j]))
        axes[1, j].imshow(to_image(out["reconstruction"][j]))
        axes[2, j].imshow(to_image(origin[j]))
    for row, name in enumerate(("masked input", "reconstruction", "original")):
        axes[row, 0].set_ylabel(name)
    fig.suptitle(f"{title}: masked-patch loss {out['loss'].item():.3f}\nmasked patches: prediction × true patch std "
                 "+ true patch mean (MAE's demo); visible patches: the original", fontsize=9)
    plt.show()


print(f"encoder: {cfg.num_visible} visible patches + CLS -> {cfg.enc_dim}-wide tokens; "
      f"decoder: {cfg.num_patches} patches of {cfg.patch_size}x{cfg.patch_size}x3 pixels")
show_reconstruction(before, "FaceMAE before training")
''')

# ----------------------------------------------------------------------------- 6. GFL, EMA, distillation

md(r"""
## 6. The GFL loss (BYOL), the EMA target, the distillation, and which loss trains what

**GFL** is BYOL: the *online* network (backbone → projector → predictor) predicts, from view 1, the
*target* network's projection of view 2, and the other way round. The loss is `simfle.byol_loss`,
2 − 2·cos(p, z'), which is 0 when the two point the same way. Below, the loss for every pair (face i's
view 1, face j's view 2): the diagonal pairs are two views of the same face. BYOL only ever pulls the
diagonal down; nothing pushes the other pairs apart. The asymmetry (a predictor on one side, a slowly
moving target on the other) is what keeps it from collapsing to a constant. Before training, every pair
scores about the same: the untrained networks give every face nearly the same output (the cosine between two
faces' predictions, and between their targets, is near 1), so nothing yet tells one face from another.
""")

code(r'''
@torch.no_grad()
def byol_pairs(model):
    """sim(p_i, z'_j) for face i's view-1 prediction and face j's view-2 target projection: (B, B); and how alike
    the faces' predictions are, and their targets (mean cosine between two different faces)."""
    views = torch.cat([view1, view2])
    z1, z2 = model.projector(model.backbone(views)).chunk(2)
    p1, _ = model.predictor(torch.cat([z1, z2])).chunk(2)
    _, t2 = model.target_projector(model.target_backbone(views)).chunk(2)

    def alike(x):
        x = torch.nn.functional.normalize(x, dim=1)
        return (((x @ x.T).sum() - len(x)) / (len(x) * (len(x) - 1))).item()
    return simfle.byol_loss(p1[:, None], t2[None]), alike(p1), alike(t2)   # broadcast to (B, B)


def show_pairs(pairs, title):
    fig, ax = plt.subplots(figsize=(3.6, 3.1))
    im = ax.imshow(pairs, cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("face j, view 2 (target)"), ax.set_ylabel("face i, view 1 (online)")
    diagonal = pairs.diag().mean().item()
    others = (pairs.sum() - pairs.diag().sum()).item() / (pairs.numel() - len(pairs))
    ax.set_title(f"{title}\nsame face {diagonal:.2f}, other faces {others:.2f}")
    plt.show()
    return diagonal, others


pairs, alike_p, alike_t = byol_pairs(model)
with torch.no_grad():
    L_s = model.gfl_loss(torch.cat([view1, view2]), model.backbone(torch.cat([view1, view2]))).item()
print(f"L_s = model.gfl_loss = {L_s:.4f}: sim(p1, z2') + sim(p2, z1'), averaged over the faces; "
      f"the diagonal below is its first term, mean {pairs.diag().mean().item():.4f}")
same, others = show_pairs(pairs, "BYOL loss before training")
print(f"same face {same:.3f} vs other faces {others:.3f}; cosine between two different faces' predictions "
      f"{alike_p:.3f}, between their targets {alike_t:.3f} (1 = the same vector for every face)")
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
KL divergence (`simfle.distillation_loss`, T = 4).

The total loss is **L = L_s + L_r + α·L_d + β·L_g** with α = 0.3 and β = 0.03; as in the reference code, the
grouping term is l_g² (the model's `grouping` part), so the fourth term is β·l_g². Which of the four terms
reach the ResNet? Read `SimFLE.ffl`: the feature map that feeds grouping and masking is taken under
`torch.no_grad()`, and argsort (which patches stay visible) has no gradient. The cell below measures it:
one term at a time (the other weights set to 0), one backward pass, and the size of the gradient that lands
in the backbone, the grouping layer and FaceMAE.
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

terms = weighted_terms(parts)
print("the weighted terms: " + ", ".join(f"{k} {x:.4g}" for k, x in terms.items()))
print(f"L_s + L_r + alpha*L_d + beta*l_g^2 = {sum(terms[k] for k in ('L_s', 'L_r', 'alpha*L_d', 'beta*l_g^2')):.4g}"
      f" = the model's total {terms['total']:.4g}; beta*l_g^2 is {100 * terms['beta*l_g^2'] / terms['total']:.2f} % of it")

WEIGHT = {"L_s": "sim_weight", "L_r": "recon_weight", "alpha*L_d": "alpha", "beta*l_g^2": "beta"}


def gradient_reach(term):
    """The gradient norm that one weighted term alone sends into the backbone, the grouping layer and FaceMAE."""
    weights = {w: 0.0 for w in WEIGHT.values()}
    weights[WEIGHT[term]] = getattr(cfg, WEIGHT[term])
    only = SimFLE(SimFLEConfig.preset("tiny", **weights))
    only.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    loss, _ = only.train()(origin, view1, view2)
    loss.backward()
    return {part: sum(p.grad.norm().item() ** 2 for p in getattr(only, part).parameters() if p.grad is not None) ** 0.5
            for part in ("backbone", "grouping", "facemae")}


reach = {term: gradient_reach(term) for term in WEIGHT}
reaches_backbone = {term: r["backbone"] > 0 for term, r in reach.items()}
for term, r in reach.items():
    print(f"{term:11s} {terms[term]:10.4g}   gradient norm into backbone {r['backbone']:.3g}, "
          f"grouping layer {r['grouping']:.3g}, FaceMAE {r['facemae']:.3g}")

fig, ax = plt.subplots(figsize=(6.4, 2.2))
names = list(WEIGHT)
ax.barh(names, [terms[k] for k in names], color=["tab:blue" if reaches_backbone[k] else "tab:gray" for k in names])
ax.set_xscale("log"), ax.invert_yaxis()
ax.set_xlabel("value at initialisation (log scale)")
ax.set_title("the four terms of the total loss: blue reaches the backbone, grey does not")
for y, k in enumerate(names):
    ax.text(terms[k], y, f" {terms[k]:.3g}", va="center")
plt.show()
''')

md(r"""
The grouping term is almost all of the total (l_g ≈ 254 at the start, squared and times β), yet it
trains **only the grouping layer**: its gradient reaches neither the backbone nor FaceMAE. The
reconstruction trains FaceMAE alone. The backbone learns from **L_s and α·L_d only**, two terms that are a
fraction of a percent of the total; distillation is the only path by which what FaceMAE learns about fine
facial detail reaches the ResNet. Because each term trains its own parameters, the size of the total says
little: watch each term on its own.
""")

# ----------------------------------------------------------------------------- 7. pretraining

md(r"""
## 7. A short pretraining run

The training loop is the one of `train.py`, in a few lines: SGD with momentum 0.9, weight decay 1e-4 and
the paper's learning rate 0.05 × batch / 256, the model returns its own loss, and the EMA target follows
after every step. Here: 60 steps of 16 faces (about a minute on a laptop CPU), constant learning rate.
A real run (`python train.py`) is longer and adds the cosine schedule, checkpoints and a k-NN monitor.
The log holds the four weighted terms of the total, l_g itself, and how far the EMA target lags behind.
""")

code(r'''
STEPS, BATCH = 60, 16


def pretrain(model, steps, batch_size=BATCH, seed=0):
    """A short version of train.py's loop. Returns the model and, for every step, the weighted loss terms."""
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
            record = weighted_terms(parts, model.config)
            if model.target_backbone is not None:   # how far the EMA target lags behind
                record["online - target"] = (torch.nn.utils.parameters_to_vector(model.backbone.parameters())
                                             - torch.nn.utils.parameters_to_vector(model.target_backbone.parameters())).norm().item()
            history.append(record)
            if len(history) in (1, 20, 40, steps):
                print(f"step {len(history):3d}: " + ", ".join(f"{k} {x:.4g}" for k, x in record.items()))
            if len(history) == steps:
                break
        epoch += 1
    return model.eval(), history


model, history = pretrain(model, STEPS)
''')

code(r'''
fig, axes = plt.subplots(1, 3, figsize=(10.5, 2.8))
for name in WEIGHT:
    axes[0].plot([h[name] for h in history], label=name, ls="-" if reaches_backbone[name] else "--")
axes[0].set_yscale("log"), axes[0].set_xlabel("step")
axes[0].set_title("the weighted terms (solid: reach the backbone)")
axes[0].legend(ncol=2)
axes[1].plot([h["l_g"] for h in history], color="tab:red")
axes[1].set_title("l_g, the paper's grouping loss"), axes[1].set_xlabel("step")
axes[2].plot([h["online - target"] for h in history], color="tab:purple")
axes[2].set_title("online − target (parameter distance)"), axes[2].set_xlabel("step")
plt.tight_layout()
plt.show()
first, last = history[0], history[-1]
print(f"step 1 -> {STEPS}: L_s {first['L_s']:.3f} -> {last['L_s']:.3f}, L_r {first['L_r']:.3f} -> {last['L_r']:.3f}, "
      f"l_g {first['l_g']:.1f} -> {last['l_g']:.1f}; beta*l_g^2 is {100 * last['beta*l_g^2'] / last['total']:.1f} % "
      f"of the total at step {STEPS}")
''')

md(r"""
How to read the curves. On the left, β·l_g² sits more than two orders of magnitude above the rest the
whole time: it *is* the total, and it trains only the grouping layer. The terms that reach the backbone are
L_s (BYOL), which drops within the first steps and then levels off, and α·L_d, the smallest of all;
L_r falls slowly and trains FaceMAE. In the middle, **l_g** itself: it stays at 254 (all channels alike)
until training breaks the symmetry between the channels, then falls and jumps about while the groups
sort themselves out. On the right, **online − target** is the distance between the online backbone and its
EMA copy: it grows while the online network moves and the target trails 1 % per step behind, and levels
off or shrinks as the online network slows down.

### What changed after 60 steps

The same faces, the same random group draws, the trained model:
""")

code(r'''
torch.manual_seed(0)
after = model.inspect(origin)
random_model.load_state_dict(model.state_dict())
torch.manual_seed(0)
after_random = random_model.inspect(origin)
corr_after, distinct_after = group_spread(after)
print(f"correlation between two groups' maps: {corr_after:.4f} or more; "
      f"different masks among the 32 groups, per face: {distinct_after}")
show_groups(after, f"group attention maps after {STEPS} steps: still one shape (correlation {corr_after:.2f})")
l_g_after = show_similarity(model, f"after {STEPS} steps")
print(f"l_g on these 8 faces: {l_g_before:.1f} before training, {l_g_after:.1f} after {STEPS} steps")
''')

md(r"""
S is no longer all ones and l_g has fallen: the channels have begun to differ from one another. But not
yet by group: S shows no blocks like T's, and the sum of a group's 16 channels, its map, still has the shape
of every other group's (each map above is scaled to its own range, so only its shape shows). The
correlation between two groups' maps is still near 1, and for each face the 32 groups give one or a few
different masks, not 32. Does the landmark hit rate move? Below, each group's hit rate before and after,
against the two controls:
""")

code(r'''
hits_after = evaluate.landmark_hit_rate(model, test_faces, "cpu")
hit_rates(hits_before, "before training")
hit_rates(hits_after, f"after {STEPS} steps")

fig, ax = plt.subplots(figsize=(8, 2.6))
x = torch.arange(cfg.groups)
ax.bar(x - 0.2, [100 * h for h in hits_before["per_group"]], 0.4, label="before training", color="tab:gray")
ax.bar(x + 0.2, [100 * h for h in hits_after["per_group"]], 0.4, label=f"after {STEPS} steps", color="tab:blue")
ax.axhline(100 * hits_before["central"], color="tab:green", ls="--", label="fixed central mask")
ax.axhline(100 * hits_before["random"], color="tab:red", ls=":", label="random masking")
ax.set_xlabel("group"), ax.set_ylabel("landmarks visible (%)"), ax.set_ylim(0, 80)
ax.set_title("landmark hit rate of each group's mask, test faces")
ax.legend(ncol=4, loc="upper center")
plt.show()
''')

code(r'''
show_masks(after, after_random, f"visible patches after {STEPS} steps")
show_reconstruction(after, f"FaceMAE after {STEPS} steps")
pairs, alike_p, alike_t = byol_pairs(model)
same, others = show_pairs(pairs, f"BYOL loss after {STEPS} steps")
print(f"same face {same:.3f} vs other faces {others:.3f}; cosine between two different faces' predictions "
      f"{alike_p:.3f}, between their targets {alike_t:.3f} (1 = the same vector for every face)")
''')

md(r"""
The BYOL matrix after 60 steps is **not** the picture section 6 explains (a dark diagonal: each face's
two views agree, other faces do not), and the printed cosines say why. The targets have spread apart (the
cosine between two faces' targets has fallen far from 1), but the predictions have not: the online network
still makes nearly one prediction for every face, the one that matches all the targets best on average.
So every row is nearly the same, and each column, one target, gets the same score from all the rows:
column stripes. The similarity loss fell by more than half by learning what all the targets share,
not what tells faces apart; the diagonal (same face) is only slightly below the rest. Pulling each face's
own pair down is what longer training does (and what the linear probe of section 8 measures).

Sixty steps are a glimpse, not a result. The channels have begun to separate, but nothing yet ties a group
to a landmark, and the landmark hit rate has hardly moved; it stays near the fixed central mask. Over the
quick start's longer run it *falls* (from 46 % towards 33 %): the trained backbone's maps lose their focus
on the landmarks, and many groups settle off them (`benchmarks/README.md`, *The mechanism*, measures why). Fifteen
times longer (30 epochs) it climbs back, to the untrained level on average (45 %, three seeds) and 54 % in
the best group. The reconstructions are still blurry. The paper trains for 100 epochs; `python train.py`
runs the `tiny` preset for 2 epochs on 4000 synthetic faces (the README gives its time and numbers, and
`benchmarks/README.md` follows the hit rate over both runs).
""")

# ----------------------------------------------------------------------------- 8. probes

md(r"""
## 8. Probing the trunk: linear probe and landmark probe

Only the trunk is kept. The paper's test is a **linear probe**: the trunk is frozen and a linear
classifier is trained on its pooled features (`eval.linear_probe`). To keep the notebook quick, the probe
trains on cached features of un-augmented faces for 20 epochs (`features="cached"`, not the paper's
protocol), on 500 training and 300 test faces. Two baselines, both the same ResNet at random
initialisation: **random** as it is built, its BatchNorm layers at mean 0 and variance 1 (in eval mode they
do nothing: an unnormalised random network), and **random + BN statistics**, the same weights with BatchNorm
statistics recomputed on the training faces (`eval.recompute_batchnorm`). A pretrained trunk has BatchNorm
statistics of faces, so the second is the fair baseline: it tells what training changed in the weights
from what it changed in the statistics alone.
""")

code(r'''
torch.manual_seed(0)
random_trunk = simfle.Backbone(cfg.backbone, cfg.stem, cfg.width)
trunks = {"random": random_trunk,
          "random + BN statistics": evaluate.recompute_batchnorm(copy.deepcopy(random_trunk), train_faces,
                                                                 cfg.view_size, "cpu"),
          "pretrained": copy.deepcopy(model.trunk())}   # a copy: the probe freezes what it is given
reports = {}
for name, trunk in trunks.items():
    reports[name], _ = evaluate.linear_probe(trunk, train_faces, test_faces, cfg.view_size, "cpu", epochs=20,
                                             batch_size=128, features="cached", seed=0)
    print(f"{name:22s} trunk: accuracy {100 * reports[name]['accuracy']:.1f} %, mean class accuracy "
          f"{100 * reports[name]['mean_class_accuracy']:.1f} % (chance {100 / len(test_faces.classes):.1f} %)")

classes = test_faces.classes
fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
for ax, (name, report) in zip(axes, reports.items()):
    m = torch.tensor(report["confusion"], dtype=torch.float)
    m = m / m.sum(1, keepdim=True).clamp(min=1)   # rows: true class, as fractions
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
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
to the error of always guessing the mean face shape (the dashed line: every trunk's map must beat it).
""")

code(r'''
landmark_reports = {}
for name, trunk in trunks.items():
    landmark_reports[name] = r = evaluate.landmark_probe(trunk, train_faces, test_faces, cfg.origin_size, "cpu", seed=0)
    print(f"{name:22s} trunk: NME {100 * r['nme']:.1f} % (mean shape: {100 * r['nme_mean_shape']:.1f} %)")

fig, ax = plt.subplots(figsize=(6.4, 1.9))
names = list(landmark_reports)
ax.barh(names, [100 * landmark_reports[n]["nme"] for n in names], color=["tab:gray", "tab:olive", "tab:blue"])
ax.axvline(100 * r["nme_mean_shape"], color="black", ls="--", label="always the mean face shape")
ax.invert_yaxis(), ax.legend(loc="lower right")
ax.set_xlabel("landmark error on the test faces, NME (%): lower is better")
ax.set_title("landmark probe of each trunk's last feature map")
plt.show()
''')

md(r"""
After one minute of pretraining, do not expect the pretrained trunk to beat the random one on either
probe. The plain random trunk is the strongest of the three here: on aligned faces, an unnormalised random
ResNet's pooled features and feature map already carry much of the expression and the landmark positions.
Giving the same random weights BatchNorm statistics of faces makes both probes *worse*: part of what looks
like a loss from training is the change of statistics alone. So the pretrained trunk has to be read against
the random trunk with BN statistics; after 60 steps the two are still close. The comparison becomes
meaningful after a real run: `python train.py` ends with the same linear probe of its trunk against the
random ones, and `python eval.py --ckpt runs/synthetic-tiny/last.pt --mode landmarks` runs the landmark
probe (`benchmarks/README.md`, *The synthetic faces at the quick start's budget*, gives both).
""")

# ----------------------------------------------------------------------------- 9. exercises

md(r"""
## 9. Exercises

**Implement it.** Five pieces of the paper, each a piece of `simfle.py` that you write yourself from the
paper's description. Fill in the stub (replace `raise NotImplementedError`), run its cell, then run the
checker below it: `exercises.check` runs cases modelled on the project's tests (`tests/test_simfle.py`:
exact mask counts, which patches stay visible, the EMA formula, the reference values of each loss) against
*your* function and prints **PASS**, or each failing case with what it expected and what it got. Until you
fill a stub in, its checker says **NOT DONE**; calling `simfle.py`'s own version is not an answer. The answers are in `tutorial_solutions.py`; peek only after
trying. The stars grade the difficulty.
""")

code(r'''
import torch.nn.functional as F   # for your solutions

import exercises                  # the checkers
''')

md(r"""
### Exercise 1 ★★ — keep the most activated patches (semantic masking)

Section 4's last step: given one score per patch, keep the `num_keep` best visible and mask the rest, with
MAE's bookkeeping. `ids_keep` are the kept patches (any order); `mask` is 1 for a masked patch, 0 for a
visible one, in the image's patch order; `ids_restore` is the permutation that puts the decoder's tokens
(the kept ones first, then the masked ones) back in image order. *Hint:* `torch.argsort` twice.
""")

exercise("keep_top_patches", r'''
def keep_top_patches(scores, num_keep):
    """scores (B,N) -> ids_keep (B,K), mask (B,N) with 1 = masked, ids_restore (B,N)."""
    raise NotImplementedError  # your code here
''')

code(r'''
exercises.check(keep_top_patches)
''')

md(r"""
### Exercise 2 ★ — the grouping loss

Section 3's l_g = 0.001 · Σ (S − T)² / (C/512)², where S is the (C, C) channel similarity matrix and T is
block-diagonal with `groups` blocks of ones (C/groups channels each). *Hint:* `torch.block_diag`. The
checker also asks for the value with every channel alike: the l_g = 254 of section 3.
""")

exercise("grouping_loss", r'''
def grouping_loss(sim, groups):
    """S (C,C), G groups -> the scalar l_g."""
    raise NotImplementedError  # your code here
''')

code(r'''
exercises.check(grouping_loss)
''')

md(r"""
### Exercise 3 ★ — the EMA target

Section 6's update after every optimizer step: every parameter of `target` becomes m·target + (1 − m)·online,
in place, without building an autograd graph, and without touching `online`. *Hint:* `torch.no_grad()` and
`zip(online.parameters(), target.parameters())`.
""")

exercise("ema_update", r'''
def ema_update(online, target, m):
    """Move every parameter of the module `target` towards the module `online`: target = m*target + (1-m)*online."""
    raise NotImplementedError  # your code here
''')

code(r'''
exercises.check(ema_update)
''')

md(r"""
### Exercise 4 ★★ — the distillation loss

Section 6's KD(w, t) = T² · KL(softmax(t/T) ‖ softmax(w/T)), averaged over the batch: the teacher t is the
first argument of the KL. *Hint:* `F.kl_div` takes the student's *log*-probabilities first; mind its
`reduction`. The T² keeps the gradient's size independent of T (Hinton et al.).
""")

exercise("distillation_loss", r'''
def distillation_loss(w, t, temperature):
    """Student logits w (B,d), teacher logits t (B,d), temperature T -> the scalar KD loss."""
    raise NotImplementedError  # your code here
''')

code(r'''
exercises.check(distillation_loss)
''')

md(r"""
### Exercise 5 ★★ — the norm-pix targets

Section 5's targets of FaceMAE: cut the images into p×p patches in MAE's order (`simfle.patchify`), then
normalise each patch by its own mean and variance: (t − mean) / (var + 1e-6)^½, with the variance of
`torch.var` (as MAE). Return the targets and each patch's mean and variance: section 5's reconstruction
figure un-normalises the predictions with them.
""")

exercise("norm_pix_targets", r'''
def norm_pix_targets(imgs, p):
    """(B,3,H,W) -> targets (B,N,p*p*3), mean (B,N,1), var (B,N,1)."""
    raise NotImplementedError  # your code here
''')

code(r'''
exercises.check(norm_pix_targets)
''')

md(rf"""
### Measurement questions

Answer each from section 7's log, `history` (one dict per step with the keys `L_s`, `L_r`, `alpha*L_d`,
`beta*l_g^2`, `l_g`, `total`), by writing the function that computes it; `exercises.check_measurement`
compares your number with what the log gives (and names the usual misreadings). The expected ranges are what
60 steps give (measured with the notebook's code for the training seeds 0, 1 and 2: the model's
initialisation and the batches).

**M1.** What share of the total loss at the last step is β·l_g²? Expected: **{expected("grouping_share")}**.
What does that say about reading the total loss as a progress bar?

**M2.** By what factor has l_g (not its square) fallen from the first step to the last, l_g(60) / l_g(1)?
Expected: **{expected("grouping_fall")}**. Is that the end of it? Look at the middle panel of section 7's curves.

**M3.** What share of the total loss at the last step sends a gradient into the backbone? Section 6 measured
which terms do. Expected: **{expected("backbone_share")}**.
""")

exercise("grouping_share", r'''
def grouping_share(history):
    """M1: beta*l_g^2 over the total, at the last step."""
    raise NotImplementedError  # your measurement here
''')

code(r'''
exercises.check_measurement(grouping_share, history)
''')

exercise("grouping_fall", r'''
def grouping_fall(history):
    """M2: l_g at the last step over l_g at the first."""
    raise NotImplementedError  # your measurement here
''')

code(r'''
exercises.check_measurement(grouping_fall, history)
''')

exercise("backbone_share", r'''
def backbone_share(history):
    """M3: the share of the last step's total loss whose gradient reaches the backbone."""
    raise NotImplementedError  # your measurement here
''')

code(r'''
exercises.check_measurement(backbone_share, history)
''')

md(r"""
### Going further: change the recipe

Each is a change to the configuration (`SimFLEConfig.preset("tiny", ...)`), a new `SimFLE` and the `pretrain`
function of section 7; for numbers you can trust, use `train.py` with the same option (`python train.py
--help` lists every field of the config) and `eval.py`.

* **The mask ratio.** `mask_ratio=0.5` keeps 24 patches visible, `0.9` keeps 4. How much of the face does
  FaceMAE need, and why should the task stay hard?
* **Semantic or random masking.** `masking="random"` is the paper's ablation: does the linear probe tell
  the two apart after a real run (`python train.py --masking random`)?
* **The number of groups.** `groups=8` or `groups=128`: does `group_spread` find more distinct masks?
* **Another GFL method.** `gfl="simclr"` has no predictor and no target: its loss needs the other faces of
  the batch as negatives. Does its matrix of pairs show the column stripes of BYOL's? (`byol_pairs` needs
  BYOL's predictor and target: for SimCLR, compare `F.normalize(z1) @ F.normalize(z2).T` of the projector's outputs.)
* **The EMA momentum.** `ema=0.0` copies the online network every step, `ema=1.0` freezes the target.
  Which one collapses (the cosine between two faces' predictions goes to 1), which one stalls?

```python
variant = SimFLE(SimFLEConfig.preset("tiny", mask_ratio=0.5))
variant, variant_history = pretrain(variant, STEPS)
torch.manual_seed(0)
show_reconstruction(variant.inspect(origin), "mask ratio 0.5")
```
""")
md(r"""
### What a longer run shows

A minute of pretraining on synthetic faces does not beat the random trunk (section 8), and neither do the
quick start's seven minutes. On real faces it does, from a few epochs on: on FER2013, SimFLE with SimCLR as
its GFL (`--gfl simclr`) passes the random trunk's linear probe on val from the second epoch (57,344 images)
for three seeds, and with 100 labels per class the pretrained trunk leads the random one by 6.5 points.
The credit goes to the GFL: SimCLR alone (`--use-facemae false`) does as well as SimFLE at the same
budget, random masking as well as semantic masking, and BYOL, the paper's GFL, stays below the random
trunk for 8 epochs (so does the lightly library's BYOL). The curve, the few-label table and the
commands are in the README's section *Does it learn?* (`benchmarks/results/fer2013_curve.png`).
""")

# ----------------------------------------------------------------------------- build / execute


def solution_source(name):
    """The source of the function `name` in tutorial_solutions.py, its decorators included."""
    with open(SOLUTIONS) as f:
        source = f.read()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            return "\n".join(source.splitlines()[start - 1:node.end_lineno])
    raise KeyError(f"tutorial_solutions.py has no function {name!r}")


def build(solutions=False):
    """The notebook; with solutions=True every exercise stub is replaced by its solution."""
    cells = copy.deepcopy(CELLS)
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # stable ids: a rebuild's diff shows only what changed
    if solutions:
        for cell in cells:
            if "exercise" in cell.metadata:
                cell.source = solution_source(cell.metadata["exercise"])
    nb = new_notebook(cells=cells)
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


def keep_outputs(nb, committed):
    """Give nb the outputs of the committed notebook, cell for cell: only when every code cell is unchanged, so that
    the outputs still come from one clean run of exactly this code (a changed code cell needs --execute)."""
    new = [c for c in nb.cells if c.cell_type == "code"]
    old = [c for c in committed.cells if c.cell_type == "code"]
    changed = [i for i, (a, b) in enumerate(zip(new, old), 1) if a.source != b.source]
    if len(new) != len(old) or changed:
        where = f"code cell {changed[0]}" if changed else f"{len(new)} code cells against {len(old)}"
        raise SystemExit(f"error: --keep-outputs needs the code cells unchanged ({where} differs): use --execute")
    for a, b in zip(new, old):
        a.outputs, a.execution_count = b.outputs, b.execution_count
    return nb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--execute", action="store_true", help="run the notebook and keep its outputs")
    p.add_argument("--keep-outputs", action="store_true",
                   help="keep tutorial.ipynb's outputs (allowed only when no code cell changed: a prose edit)")
    p.add_argument("--solutions", action="store_true",
                   help="put tutorial_solutions.py's answers in place of the exercise stubs (write it elsewhere: --out)")
    p.add_argument("--out", default=None, help="where to write the notebook (default: tutorial.ipynb)")
    args = p.parse_args(argv)
    out = args.out or NOTEBOOK
    if args.solutions and os.path.abspath(out) == NOTEBOOK:
        p.error("--solutions would overwrite the students' tutorial.ipynb: give --out")
    nb = build(solutions=args.solutions)
    if args.execute:
        t0 = time.time()
        execute(nb)
        print(f"executed in {time.time() - t0:.0f} s")
    elif args.keep_outputs:
        keep_outputs(nb, nbformat.read(NOTEBOOK, as_version=4))
    nbformat.validate(nb)
    nbformat.write(nb, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
