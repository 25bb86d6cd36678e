"""
SimFLE: Simple Facial Landmark Encoding (Moon & Park, arXiv 2303.07648), in one file.

Read it top to bottom: small pieces first, the full `SimFLE` model last.
  GFL  (global facial feature learning): a ResNet trained on two augmented views (BYOL by default).
  FFL  (fine-grained facial landmark learning): FaceMAE, a masked autoencoder that sees only the
       patches picked by *semantic masking* (channel grouping on the ResNet's feature map).
  Distillation ties the two branches together.
Every number comes from the paper and the authors' reference code; where they disagree, a comment
says which.

Shape legend
  B batch       C backbone channels (2048 for ResNet-50)   H, W image size   h, w feature-map size
  p patch size  N patches = (H/p)·(W/p)   K visible patches   D token width   G groups   M = C/G
"""
import copy
import math
from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision

# ----------------------------------------------------------------------------- small pieces


class MLPHead(nn.Sequential):
    """Projector / predictor / D-projector MLP: Linear → BN → ReLU → Linear (GFL, as in BYOL)."""

    def __init__(self, dim_in, hidden, dim_out):
        super().__init__(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))


def narrow(net, width):
    """A narrow ResNet: every convolution and BatchNorm of a torchvision ResNet with its channels ×
    width (the image's 3 input channels kept), initialised as torchvision does, under the same
    module names."""
    def scaled(n):
        return n if n == 3 else max(1, int(n * width))
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(scaled(m.in_channels), scaled(m.out_channels), m.kernel_size, m.stride,
                            m.padding, bias=m.bias is not None)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            new = nn.BatchNorm2d(scaled(m.num_features))
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent), leaf, new)
    net.fc = nn.Linear(scaled(net.fc.in_features), net.fc.out_features)


class Backbone(nn.Module):
    """The ResNet trunk shared by GFL and semantic masking; the only part kept for evaluation.

    Its submodules carry torchvision's names, so `state_dict()` loads into
    `torchvision.models.resnetXX()` with only `fc.*` missing.
    """

    def __init__(self, name="resnet50", stem="imagenet", width=1.0):
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)  # random init, as the paper
        # small images (SimCLR's / BYOL's CIFAR variant): 3×3 stride-1 conv, no max-pool
        if stem == "small":
            net.conv1, net.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
        if width != 1.0:
            narrow(net, width)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        self.dim = net.fc.in_features  # C

    def feature_map(self, x):
        """Last (layer-4) feature map: (B,3,H,W) -> (B,C,h,w), h = ⌈H/32⌉ (H/8, small stem)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        """Global-average-pooled feature: (B,3,H,W) -> (B,C)."""
        return self.feature_map(x).mean(dim=(2, 3))


INIT_PERTURBATION = 1e-3  # std of the noise added to the grouping layer's constant initial weights


class ChannelGrouping(nn.Module):
    """Channel grouping layer of semantic masking (from DBTNet): A = ReLU(BN(Conv1x1(F)))."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels)
        # Reference init: weight 1.0, bias 0.1, where every channel is identical and gets identical
        # gradients (a symmetric point). The reference relies on fp32 rounding noise to leave it; in
        # bf16, or with inputs of few mantissa bits, the channels never separate (measured). A small
        # perturbation breaks the tie.
        nn.init.constant_(self.conv.weight, 1.0)
        with torch.no_grad():
            self.conv.weight.add_(torch.randn_like(self.conv.weight), alpha=INIT_PERTURBATION)
        nn.init.constant_(self.conv.bias, 0.1)

    def forward(self, fmap):
        """(B,C,h,w) -> group attention channels A (B,C,h,w); channel c belongs to group c // M."""
        return F.relu(self.bn(self.conv(fmap)))


def channel_similarity(attn):
    """Batch-mean cosine similarity between channel maps, S (C,C), of A + 0.001 (DBTNet)."""
    a = F.normalize((attn.float() + 0.001).flatten(2), dim=2)  # (B,C,h·w), unit L2 norm per channel
    return torch.einsum("bci,bdi->cd", a, a) / a.shape[0]


def grouping_loss(sim, groups):
    """Semantic grouping loss l_g = 0.001·Σ(S − T)² / (C/512)², T: G diagonal blocks of ones."""
    C = sim.shape[0]
    M = C // groups
    target = torch.block_diag(*[sim.new_ones(M, M)] * groups)  # (C,C)
    return 0.001 * ((sim - target) ** 2).sum() / (C / 512) ** 2


def group_maps(attn, groups):
    """Sum the M channel maps of each group: (B,C,h,w) -> (B,G,h,w), one attention map per group."""
    B, C, h, w = attn.shape
    return attn.reshape(B, groups, C // groups, h, w).sum(2)


def semantic_patch_scores(maps, chosen, image_size, patch_size):
    """Score patches by one group's attention (semantic masking): upsample the map to the image,
    mean per patch. maps (B,G,h,w), chosen (B,) group index per image -> scores (B,N)."""
    m = maps[torch.arange(maps.shape[0], device=maps.device), chosen]  # (B,h,w)
    m = F.interpolate(m[:, None].float(), size=(image_size, image_size), mode="bilinear",
                      align_corners=False)
    return F.avg_pool2d(m, patch_size).flatten(1)  # (B,1,H/p,W/p) -> (B,N)


def keep_top_patches(scores, num_keep):
    """Keep the `num_keep` highest-scoring patches visible, mask the rest (MAE's bookkeeping).

    scores (B,N) -> ids_keep (B,K), mask (B,N) with 1 = masked, ids_restore (B,N).
    With random scores this is exactly MAE's random masking.
    """
    B, N = scores.shape
    ids_shuffle = torch.argsort(scores, dim=1, descending=True)  # most activated first; no gradient
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(B, N, device=scores.device)
    mask[:, :num_keep] = 0
    return ids_shuffle[:, :num_keep], torch.gather(mask, 1, ids_restore), ids_restore


def patchify(imgs, p):
    """MAE patchify: (B,3,H,W) -> (B,N,p·p·3)."""
    B, _, H, W = imgs.shape
    x = imgs.reshape(B, 3, H // p, p, W // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, (H // p) * (W // p), p * p * 3)


def unpatchify(x, p):
    """MAE unpatchify: (B,N,p·p·3) -> (B,3,H,W), square images."""
    B, N, _ = x.shape
    h = int(N ** 0.5)
    x = x.reshape(B, h, h, p, p, 3)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, 3, h * p, h * p)


def sincos_pos_embed(dim, grid, cls_token=True):
    """Fixed 2-D sine-cosine position embedding (MAE): -> (1 + grid², dim), a zero row for CLS."""
    def one_axis(d, pos):  # (L,) -> (L,d)
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.double()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    half = dim // 2
    emb = torch.cat([one_axis(half, xs.flatten()), one_axis(half, ys.flatten())], 1)  # (N,dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb])
    return emb.float()


def transformer(dim, depth, heads, mlp_ratio):
    """A stack of pre-norm ViT blocks (LayerNorm eps 1e-6, GELU), from torch's public layer."""
    return nn.Sequential(*[nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=int(dim * mlp_ratio), dropout=0.0, activation="gelu",
        layer_norm_eps=1e-6, batch_first=True, norm_first=True) for _ in range(depth)])


class FaceMAE(nn.Module):
    """FaceMAE (the FFL branch): a ViT masked autoencoder of the origin image's given patches."""

    def __init__(self, img_size, patch, dim, depth, heads, dec_dim, dec_depth, dec_heads,
                 mlp_ratio):
        super().__init__()
        self.patch, grid = patch, img_size // patch
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # (1,1+N,D)
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid)[None], persistent=False)
        self.encoder = transformer(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.register_buffer("dec_pos_embed", sincos_pos_embed(dec_dim, grid)[None],
                             persistent=False)
        self.decoder = transformer(dec_dim, dec_depth, dec_heads, mlp_ratio)
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dec_dim, patch * patch * 3)
        self._init_weights()

    def _init_weights(self):
        """MAE's initialisation: xavier-uniform linears and patch projection, N(0, .02) tokens."""
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, imgs, ids_keep):
        """Encoder on the visible patches only: (B,3,H,W), (B,K) -> tokens (B,1+K,D), CLS first."""
        x = self.patch_embed(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]  # (B,N,D)
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[2]))  # (B,K,D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return self.norm(self.encoder(torch.cat([cls, x], dim=1)))  # (B,1+K,D)

    def decode(self, latent, ids_restore):
        """Decoder: visible tokens + mask tokens, unshuffled -> pixel predictions (B,N,p·p·3)."""
        x = self.decoder_embed(latent)  # (B,1+K,Dd)
        B, N = ids_restore.shape
        masked = self.mask_token.expand(B, N + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], masked], dim=1)  # (B,N,Dd) in shuffled order
        # back to image order
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.dec_pos_embed  # (B,1+N,Dd)
        # drop CLS -> (B,N,p·p·3)
        return self.decoder_pred(self.decoder_norm(self.decoder(x)))[:, 1:]


def norm_pix_targets(imgs, p):
    """MAE's "norm-pix" targets: (B,3,H,W) -> (B,N,p·p·3) normalised per patch, mean, var."""
    t = patchify(imgs, p)
    mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
    return (t - mean) / (var + 1e-6) ** 0.5, mean, var


def reconstruction_loss(pred, target, mask):
    """MSE on masked patches only (MAE): pred, target (B,N,P), mask (B,N) with 1 = masked."""
    per_patch = ((pred.float() - target) ** 2).mean(-1)  # (B,N)
    return (per_patch * mask).sum() / mask.sum()


def byol_loss(p, z):
    """BYOL's similarity sim(a,b) = 2 − 2·cos(a,b), per sample: (B,d),(B,d) -> (B,)."""
    return 2 - 2 * F.cosine_similarity(p.float(), z.float(), dim=-1)


def gather_batch(z):
    """The global batch of embeddings under torch.distributed, as SimCLR and Barlow Twins need it:
    (B,d) -> (world·B,d), every process's rows in rank order; alone (world 1, or no process group) z
    itself.

    The other processes' rows come detached (all_gather has no gradient); this process's own rows
    stay live, their gradient multiplied by world: each process then holds world × ∂L/∂z of the
    global loss L for its rows, and DDP's mean over processes gives the gradient of one process
    training on the whole global batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    world, rank = dist.get_world_size(), dist.get_rank()
    rows = [torch.empty_like(z) for _ in range(world)]
    dist.all_gather(rows, z.detach().contiguous())
    # the value of z exactly; the gradient world × its own
    rows[rank] = z + (world - 1) * (z - z.detach())
    return torch.cat(rows)


def simclr_loss(z1, z2, temperature):
    """SimCLR's NT-Xent: each view must pick its partner among the 2B−1 others, over the global
    batch when several processes train (gather_batch): every process computes the same loss of all
    world·B pairs."""
    # (B,d) -> (world·B,d); the partners stay at the same offsets
    z1, z2 = gather_batch(z1), gather_batch(z2)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B,d)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    B = z1.shape[0]
    partner = torch.arange(2 * B, device=z.device).roll(B)  # i's positive: i + B, and i − B
    return F.cross_entropy(logits, partner)


def barlow_loss(z1, z2, lam):
    """Barlow Twins: the cross-correlation of the standardised embeddings should be the identity;
    its batch statistics and cross-correlation over the global batch when several processes train
    (gather_batch)."""
    z1, z2 = gather_batch(z1).float(), gather_batch(z2).float()  # (world·B,d)
    z1 = (z1 - z1.mean(0)) / (z1.std(0) + 1e-6)
    z2 = (z2 - z2.mean(0)) / (z2.std(0) + 1e-6)
    c = z1.T @ z2 / z1.shape[0]  # (d,d)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    return on_diag + lam * (c.pow(2).sum() - torch.diagonal(c).pow(2).sum())


def distillation_loss(w, t, temperature):
    """KD(w, t) = T²·KL(softmax(t/T) ‖ softmax(w/T)), batch mean."""
    T = temperature
    kl = F.kl_div(F.log_softmax(w.float() / T, dim=1), F.softmax(t.float() / T, dim=1),
                  reduction="batchmean")
    return kl * T ** 2


# ----------------------------------------------------------------------------- configuration


@dataclass
class SimFLEConfig:
    """Every knob of the model; the defaults are the paper's / reference code's numbers."""
    backbone: str = "resnet50"       # resnet18 | resnet34 | resnet50
    stem: str = "imagenet"           # imagenet (7×7 stride 2, max-pool) | small (3×3 stride 1)
    width: float = 1.0  # channels × width in every ResNet layer (0.5: a narrow ResNet); paper: 1
    gfl: str = "byol"  # GFL two-view method: byol | simclr | barlow (the paper: "modular")
    use_facemae: bool = True         # False: the GFL method alone, the baseline SimFLE beats
    masking: str = "semantic"        # semantic | random (the paper's ablation)
    view_size: int = 224             # GFL views
    origin_size: int = 112           # FFL input; ResNet-50 gives a 4×4 map at 112
    patch_size: int = 16             # 7×7 = 49 patches at 112
    mask_ratio: float = 0.75         # int(49·0.25) = 12 patches stay visible
    enc_dim: int = 768               # FaceMAE encoder: ViT-Base
    enc_depth: int = 12
    enc_heads: int = 12
    dec_dim: int = 512               # FaceMAE decoder
    dec_depth: int = 8
    dec_heads: int = 16
    mlp_ratio: float = 4.0
    groups: int = 32                 # channel groups G
    head_hidden: int = 4096          # projector / predictor / D-projector hidden width
    head_out: int = 256
    ema: float = 0.99                # BYOL target momentum (the authors': fixed)
    ema_schedule: str = "fixed"      # fixed | cosine: m rises from ema to 1 over the run (BYOL's)
    kd_temperature: float = 4.0      # distillation temperature T
    # L_d's path from FaceMAE into the ResNet (docs/departures.md; the paper's: mean, kd)
    # mean: t = sg((u1+u2+v)/3) | ffl: t = sg(v), FaceMAE's feature teaches
    distill_target: str = "mean"
    distill_loss: str = "kd"  # kd: T²·KL of softened outputs | cosine: 2 − 2·cos(w, t), scale-free
    sim_weight: float = 1.0          # weight of L_s
    recon_weight: float = 1.0        # weight of L_r
    alpha: float = 0.3               # weight of L_d
    beta: float = 0.03               # weight of L_g
    simclr_temperature: float = 0.1  # used when gfl = simclr
    barlow_lambda: float = 0.0051    # used when gfl = barlow

    @classmethod
    def preset(cls, name, **overrides):
        """Presets: "paper" (the defaults), "tiny" (ResNet-18, small FaceMAE: trains on a CPU)."""
        presets = {"paper": {},
            # tiny keeps the paper's masking geometry (origin 112 -> 4×4 map, 49 patches, 12
            # visible) and shrinks the rest: 64-px views, a 4-block ViT, narrower heads.
            "tiny": dict(backbone="resnet18", view_size=64, enc_dim=192, enc_depth=4, enc_heads=3,
                         dec_dim=128, dec_depth=2, dec_heads=4, head_hidden=512, head_out=128),}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
        return replace(cls(**presets[name]), **overrides).validate()

    def validate(self):
        """Reject impossible settings with a message that says which field and why."""
        checks = [(self.backbone in ("resnet18", "resnet34", "resnet50"),
             "backbone must be resnet18, resnet34 or resnet50"),
            (self.stem in ("imagenet", "small"), "stem must be imagenet or small"),
            (0 < self.width <= 4, "width must be in (0, 4]"),
            (self.gfl in ("byol", "simclr", "barlow"), "gfl must be byol, simclr or barlow"),
            (self.masking in ("semantic", "random"), "masking must be semantic or random"),
            (self.distill_target in ("mean", "ffl"), "distill_target must be mean or ffl"),
            (self.ema_schedule in ("fixed", "cosine"), "ema_schedule must be fixed or cosine"),
            (self.distill_loss in ("kd", "cosine"), "distill_loss must be kd or cosine"),
            (0 < self.mask_ratio < 1, "mask_ratio must be in (0, 1)"),
            (self.origin_size % self.patch_size == 0,
             "origin_size must be a multiple of patch_size"),
            (self.backbone_channels % self.groups == 0,
             f"groups must divide the backbone's {self.backbone_channels} channels"),
            (self.enc_dim % self.enc_heads == 0 and self.dec_dim % self.dec_heads == 0,
             "enc_dim / dec_dim must be multiples of their heads"),
            (self.enc_dim % 4 == 0 and self.dec_dim % 4 == 0,
             "enc_dim / dec_dim must be multiples of 4 (sin-cos)"),
            (0 <= self.ema <= 1, "ema must be in [0, 1]"),
            (int(self.num_patches * (1 - self.mask_ratio)) >= 1,
             "mask_ratio leaves no visible patch"),]
        for ok, why in checks:
            if not ok:
                raise ValueError(why)
        return self

    @property
    def backbone_channels(self):
        return int((2048 if self.backbone == "resnet50" else 512) * self.width)

    @property
    def num_patches(self):
        return (self.origin_size // self.patch_size) ** 2

    @property
    def num_visible(self):
        return int(self.num_patches * (1 - self.mask_ratio))  # reference: int(49·0.25) = 12

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------- the model


class SimFLE(nn.Module):
    """SimFLE (paper Fig. 2): GFL on two views + FaceMAE with semantic masking + distillation."""

    def __init__(self, config: SimFLEConfig):
        super().__init__()
        self.config = c = config.validate()
        C = c.backbone_channels
        # GFL, online network: backbone -> projector (-> predictor for BYOL)
        self.backbone = Backbone(c.backbone, c.stem, c.width)
        self.projector = MLPHead(C, c.head_hidden, c.head_out)
        self.predictor = MLPHead(c.head_out, c.head_hidden, c.head_out) if c.gfl == "byol" else None
        # GFL, target network (BYOL only): an EMA copy of backbone + projector, never trained by
        # gradients
        self.target_backbone = self.target_projector = None
        if c.gfl == "byol":
            self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        if c.use_facemae:
            # FFL: channel grouping -> semantic masking -> FaceMAE
            self.grouping = ChannelGrouping(C)
            self.facemae = FaceMAE(c.origin_size, c.patch_size, c.enc_dim, c.enc_depth, c.enc_heads,
                                   c.dec_dim, c.dec_depth, c.dec_heads, c.mlp_ratio)
            # distillation: D-projectors for each branch
            self.distill_gfl = MLPHead(C, c.head_hidden, c.head_out)
            self.distill_ffl = MLPHead(c.enc_dim, c.head_hidden, c.head_out)
            if c.distill_target == "ffl":  # sg(v): no gradient reaches it; frozen, as DDP wants
                self.distill_ffl.requires_grad_(False)

    def trunk(self):
        """The ResNet kept for downstream evaluation."""
        return self.backbone

    @torch.no_grad()
    def update_target(self, progress=0.0):
        """EMA after each optimizer step (BYOL): target = m·target + (1−m)·online."""
        if self.target_backbone is None:
            return
        m = self.config.ema
        if self.config.ema_schedule == "cosine":  # BYOL's: to 1, progress = share of the run done
            m = 1 - (1 - m) * (math.cos(math.pi * progress) + 1) / 2
        for online, target in ((self.backbone, self.target_backbone), (self.projector,
                                                                       self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.lerp_(po.detach(), 1 - m)  # pt + (1−m)(po − pt) = m·pt + (1−m)·po

    def gfl_loss(self, views, feats):
        """GFL similarity loss L_s of the stacked views (2B,3,V,V) and their features (2B,C)."""
        c = self.config
        z1, z2 = self.projector(feats).chunk(2)  # (B,d) each
        if c.gfl == "simclr":
            return simclr_loss(z1, z2, c.simclr_temperature)
        if c.gfl == "barlow":
            return barlow_loss(z1, z2, c.barlow_lambda)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        with torch.no_grad():  # the target sees the same stacked batch, in train mode as in BYOL
            t1, t2 = self.target_projector(self.target_backbone(views)).chunk(2)
        # symmetric: each view predicts the other
        return (byol_loss(p1, t2) + byol_loss(p2, t1)).mean()

    def ffl(self, origin):
        """FFL branch on the origin image (B,3,H,W): grouping, semantic masking, FaceMAE. -> dict"""
        c = self.config
        with torch.no_grad():
            # Reference quirk, kept: the backbone runs in train mode here, so this no-grad pass
            # still updates BatchNorm running statistics. No gradient reaches the backbone from FFL.
            fmap = self.backbone.feature_map(origin)  # (B,C,h,w)
        # fp32 even under autocast: the grouping layer's channels start ~1e-3 apart
        # (ChannelGrouping), below bf16's resolution at 1.0 (2^-7), and in bf16 they would round
        # alike and never separate. And l_g sums C² squares (4 M at C = 2048), far past fp16's
        # largest number (65504).
        with torch.autocast(origin.device.type, enabled=False):
            attn = self.grouping(fmap.float())  # (B,C,h,w); trained only by the grouping loss
            # l_g as in the paper; the reference loop minimises MSE(l_g, 0) = l_g², kept here
            l_g = grouping_loss(channel_similarity(attn), c.groups)
        chosen = torch.randint(c.groups, (origin.shape[0],),
                               device=origin.device)  # fresh group per image, per step
        maps, scores, ids_keep, mask, ids_restore = self.mask_patches(attn, chosen)
        latent = self.facemae.encode(origin, ids_keep)  # (B,1+K,D)
        pred = self.facemae.decode(latent, ids_restore)  # (B,N,p·p·3)
        target, mean, var = norm_pix_targets(origin.float(), c.patch_size)
        return dict(attn=attn, maps=maps, chosen=chosen, scores=scores, mask=mask, latent=latent,
                    pred=pred,
                    reconstruction=reconstruction_loss(pred, target, mask), grouping=l_g ** 2,
                    l_g=l_g, patch_mean=mean, patch_var=var)

    def mask_patches(self, attn, chosen, masking=None):
        """Semantic masking (paper §3): the attention A (B,C,h,w) summed per group, the chosen
        group's map (chosen (B,)) scores each patch, and the K best stay visible. masking: the
        config's unless given ("random": MAE's random masking, the paper's ablation). The hit-rate
        evaluation scores the same way.
        -> maps (B,G,h,w), scores (B,N), ids_keep (B,K), mask (B,N) with 1 = masked, ids_restore
        (B,N)."""
        c = self.config
        maps = group_maps(attn.detach(), c.groups)  # (B,G,h,w)
        if (masking or c.masking) == "semantic":
            scores = semantic_patch_scores(maps, chosen, c.origin_size, c.patch_size)  # (B,N)
        else:
            scores = torch.rand(attn.shape[0], c.num_patches, device=attn.device)
        return (maps, scores, *keep_top_patches(scores, c.num_visible))

    def distillation(self, feats, latent):
        """L_d between the branches (paper §4): u1, u2 from the pooled ResNet features of the views
        (2B,C), v from FaceMAE's encoder tokens (B,1+K,D), each through its D-projector to (B,d)."""
        c = self.config
        u1, u2 = self.distill_gfl(feats).chunk(2)  # (B,d) each
        v = self.distill_ffl(latent[:, 1:].mean(1))  # mean of encoder tokens, CLS excluded -> (B,d)
        # the paper: a shared target, stop-gradient, that every side moves to
        if c.distill_target == "mean":
            t, students = ((u1 + u2 + v) / 3).detach(), (u1, u2, v)
        else:  # "ffl": FaceMAE's feature is the teacher, and only the ResNet's side learns from L_d
            t, students = v.detach(), (u1, u2)
        if c.distill_loss == "kd":
            return sum(distillation_loss(w, t, c.kd_temperature) for w in students)
        # scale-free: the pull does not shrink when the D-projectors' outputs, or their differences,
        # get small
        return sum(byol_loss(w, t).mean() for w in students)

    def loss_terms(self, origin, view1, view2):
        """-> the weighted terms of the total loss, each with its graph (what gradient_shares
        differentiates), and the unweighted parts: similarity, reconstruction, distillation,
        grouping (= l_g²) and l_g."""
        c = self.config
        views = torch.cat([view1, view2])  # (2B,3,V,V): one backbone pass for both views
        feats = self.backbone(views)  # (2B,C)
        sim = self.gfl_loss(views, feats)
        zero = sim.new_zeros(())
        recon = group = l_g = dist = zero
        if c.use_facemae:
            out = self.ffl(origin)
            recon, group, l_g = out["reconstruction"], out["grouping"], out["l_g"]
            dist = self.distillation(feats, out["latent"])
        # the terms as they enter the total, so a log shows which one dominates: with the paper's
        # weights β·l_g² is most of the total, yet it trains only the grouping layer (ffl's feature
        # map has no gradient)
        weighted = dict(weighted_similarity=c.sim_weight * sim,
                        weighted_reconstruction=c.recon_weight * recon,
                        weighted_distillation=c.alpha * dist, weighted_grouping=c.beta * group)
        return weighted, dict(similarity=sim, reconstruction=recon, distillation=dist,
                              grouping=group, l_g=l_g)

    def forward(self, origin, view1, view2):
        """origin (B,3,H,W), view1/view2 (B,3,V,V) -> total loss, dict of its parts (detached): the
        losses similarity, reconstruction, distillation, grouping (= l_g², what the total weights)
        and l_g; the weighted_* terms, which sum to the total; and total."""
        weighted, parts = self.loss_terms(origin, view1, view2)
        loss = sum(weighted.values())  # L = L_s + L_r + α·L_d + β·l_g²
        parts = dict(parts, **weighted, total=loss)
        return loss, {k: v.detach() for k, v in parts.items()}

    def gradient_shares(self, origin, view1, view2, scale=1.0):
        """Which loss trains the ResNet: each weighted term's gradient norm at the backbone's
        weights, as a share of their sum -> {grad_share_<term>: float}, adding up to 1. A term with
        no path into the backbone reads exactly 0 (L_r and β·l_g² in the paper: argsort and the
        no-grad origin pass cut theirs). scale: multiplies every term (fp16's loss scale, so small
        gradients do not underflow; the shares do not change). One backward per term; the caller
        keeps the weights' .grad, BatchNorm statistics and RNG as they were."""
        weighted, _ = self.loss_terms(origin, view1, view2)
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        norms = {}
        for name, term in weighted.items():
            grads = (torch.autograd.grad(term * scale, params, retain_graph=True,
                                         allow_unused=True) if term.requires_grad else [])
            norms[name] = sum((g.float().pow(2).sum() for g in grads if g is not None),
                              origin.new_zeros((), dtype=torch.float32))
        norms = torch.stack(list(norms.values())).sqrt().tolist()  # one host sync
        total = sum(norms) or 1.0
        return {"grad_share_" + name[len("weighted_"):]: n / total for name, n in zip(weighted,
                                                                                      norms)}

    @torch.no_grad()
    def inspect(self, origin):
        """For figures, by the training code path: group maps (B,G,h,w), chosen group (B,), mask
        (B,N) (1 = masked), the visible patches and the reconstruction (B,3,H,W) with the visible
        ones pasted in (masked ones de-normalised with the true patch statistics, as MAE's figures
        do), in the normalised image space of `origin`."""
        if not self.config.use_facemae:
            raise ValueError("inspect() needs use_facemae=True")
        p = self.config.patch_size
        out = self.ffl(origin)
        m = out["mask"][..., None]  # (B,N,1)
        # (B,N,p·p·3)
        pred = out["pred"].float() * (out["patch_var"] + 1e-6) ** 0.5 + out["patch_mean"]
        orig = patchify(origin.float(), p)
        return dict(maps=out["maps"], chosen=out["chosen"], scores=out["scores"], mask=out["mask"],
                    visible=unpatchify(orig * (1 - m), p),
                    reconstruction=unpatchify(orig * (1 - m) + pred * m, p),
                    loss=out["reconstruction"])
