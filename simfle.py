"""SimFLE (Moon & Park, arXiv 2303.07648) in one file: small pieces first, the `SimFLE` model last.
GFL trains a ResNet on two augmented views (BYOL by default); FFL is FaceMAE, a masked autoencoder
that sees only the patches kept by *semantic masking* (channel grouping on the ResNet's feature
map); distillation ties the two. Numbers are the paper's and its code's (a comment says which).

Shapes: B batch, C backbone channels (2048 for ResNet-50), H, W image size, h, w feature-map size,
p patch size, N patches = (H/p)·(W/p), K visible patches, D token width, G groups, M = C/G.
"""
import copy
import math
from dataclasses import dataclass, replace

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
    """A torchvision ResNet's convolutions and BatchNorms with their channels × width (RGB kept)."""
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
    """The ResNet shared by GFL and semantic masking, the part kept for evaluation; torchvision's
    module names, so its state_dict loads into torchvision.models.resnetXX() (fc.* missing)."""

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


class ChannelGrouping(nn.Module):
    """Channel grouping layer of semantic masking (from DBTNet): A = ReLU(BN(Conv1x1(F)))."""

    def __init__(self, channels, noise=1e-3):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels)
        # the reference's weight 1, bias 0.1 leave channels equal but for fp32 rounding (not bf16's)
        nn.init.constant_(self.conv.weight, 1.0)
        with torch.no_grad():
            self.conv.weight.add_(torch.randn_like(self.conv.weight), alpha=noise)
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
    """One group's map per image, upsampled, mean per patch: (B,G,h,w), chosen (B,) -> (B,N)."""
    m = maps[torch.arange(maps.shape[0], device=maps.device), chosen]  # (B,h,w)
    m = F.interpolate(m[:, None].float(), size=(image_size, image_size), mode="bilinear",
                      align_corners=False)
    return F.avg_pool2d(m, patch_size).flatten(1)  # (B,1,H/p,W/p) -> (B,N)


def keep_top_patches(scores, num_keep):
    """The `num_keep` best-scoring patches stay visible (MAE's bookkeeping; random scores: MAE's
    random masking): scores (B,N) -> ids_keep (B,K), mask (B,N) (1 = masked), ids_restore (B,N)."""
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


def sincos_pos_embed(dim, grid):
    """MAE's fixed 2-D sin-cos position embedding: -> (1 + grid², dim), a zero row for CLS."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = [pos.flatten().double()[:, None] * omega for pos in (xs, ys)]  # (N,dim/4) each
    emb = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)  # (N,dim)
    return torch.cat([emb.new_zeros(1, dim), emb]).float()


def transformer(dim, depth, heads, mlp_ratio):
    """A stack of pre-norm ViT blocks (LayerNorm eps 1e-6, GELU), from torch's public layer."""
    return nn.Sequential(*[nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=int(dim * mlp_ratio), dropout=0.0, activation="gelu",
        layer_norm_eps=1e-6, batch_first=True, norm_first=True) for _ in range(depth)])


class FaceMAE(nn.Module):
    """FaceMAE (the FFL branch): a ViT masked autoencoder of the origin image's given patches."""

    def __init__(self, c):
        super().__init__()
        dim, dec_dim, p, grid = c.enc_dim, c.dec_dim, c.patch_size, c.origin_size // c.patch_size
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid)[None], persistent=False)
        self.encoder = transformer(dim, c.enc_depth, c.enc_heads, c.mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.register_buffer("dec_pos_embed", sincos_pos_embed(dec_dim, grid)[None], False)
        self.decoder = transformer(dec_dim, c.dec_depth, c.dec_heads, c.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dec_dim, p * p * 3)
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
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # image order
        x = torch.cat([x[:, :1], x_], dim=1) + self.dec_pos_embed  # (B,1+N,Dd)
        return self.decoder_pred(self.decoder_norm(self.decoder(x)))[:, 1:]  # CLS dropped


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
    """(B,d) -> (world·B,d): every process's rows in rank order (z itself without a process
    group). Other rows come detached; this process's keep a gradient × world, so that DDP's mean
    over processes is the gradient of one process training on the global batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    world, rank = dist.get_world_size(), dist.get_rank()
    rows = [torch.empty_like(z) for _ in range(world)]
    dist.all_gather(rows, z.detach().contiguous())
    rows[rank] = z + (world - 1) * (z - z.detach())  # the value of z; the gradient world × its own
    return torch.cat(rows)


def simclr_loss(z1, z2, temperature):
    """SimCLR's NT-Xent: each view picks its partner among the 2B−1 others (of the global batch)."""
    z1, z2 = gather_batch(z1), gather_batch(z2)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B,d)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    B = z1.shape[0]
    partner = torch.arange(2 * B, device=z.device).roll(B)  # i's positive: i + B, and i − B
    return F.cross_entropy(logits, partner)


def barlow_loss(z1, z2, lam):
    """Barlow Twins: the standardised embeddings' cross-correlation should be the identity."""
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

# the values each text field accepts: validate() and train.py's --help read them here
CHOICES = dict(backbone=("resnet18", "resnet34", "resnet50"), stem=("imagenet", "small"),
               gfl=("byol", "simclr", "barlow"), masking=("semantic", "random"),
               ema_schedule=("fixed", "cosine"), distill_target=("mean", "ffl"),
               distill_loss=("kd", "cosine"))
# "tiny" keeps the paper's masking geometry (origin 112 -> 4×4 map, 49 patches, 12 visible) and
# shrinks the rest (64-px views, a 4-block ViT, narrower heads): it trains on a CPU
PRESETS = {"paper": {},
           "tiny": dict(backbone="resnet18", view_size=64, enc_dim=192, enc_depth=4, enc_heads=3,
                        dec_dim=128, dec_depth=2, dec_heads=4, head_hidden=512, head_out=128)}


@dataclass
class SimFLEConfig:
    """Every knob of the model; the defaults are the paper's / reference code's numbers."""
    backbone: str = "resnet50"
    stem: str = "imagenet"           # imagenet (7×7 stride 2, max-pool) | small (3×3 stride 1)
    width: float = 1.0               # channels × width in every ResNet layer; the paper: 1
    gfl: str = "byol"                # the GFL two-view method (the paper: "modular")
    use_facemae: bool = True         # False: the GFL method alone, the baseline SimFLE beats
    masking: str = "semantic"        # random: MAE's, the paper's ablation
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
    ema_schedule: str = "fixed"      # cosine: m rises from ema to 1 over the run (BYOL's)
    kd_temperature: float = 4.0      # distillation temperature T
    # L_d's teacher: mean = sg((u1+u2+v)/3), the paper's | ffl = sg(v) (docs/departures.md)
    distill_target: str = "mean"
    distill_loss: str = "kd"         # kd: T²·KL of softened outputs | cosine: 2 − 2·cos(w, t)
    sim_weight: float = 1.0          # weight of L_s
    recon_weight: float = 1.0        # weight of L_r
    alpha: float = 0.3               # weight of L_d
    beta: float = 0.03               # weight of L_g
    simclr_temperature: float = 0.1  # used when gfl = simclr
    barlow_lambda: float = 0.0051    # used when gfl = barlow

    @classmethod
    def preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(cls(**PRESETS[name]), **overrides).validate()

    def validate(self):
        """Reject impossible settings with a message that says which field and why."""
        checks = [(getattr(self, k) in v, f"{k} must be {', '.join(v[:-1])} or {v[-1]}")
                  for k, v in CHOICES.items()]
        checks += [(0 < self.width <= 4, "width must be in (0, 4]"),
                   (0 < self.mask_ratio < 1, "mask_ratio must be in (0, 1)"),
                   (self.num_visible >= 1, "mask_ratio leaves no visible patch"),
                   (self.origin_size % self.patch_size == 0, "origin_size must be a multiple of "
                                                            "patch_size"),
                   (self.backbone_channels % self.groups == 0,
                    f"groups must divide the backbone's {self.backbone_channels} channels"),
                   (self.enc_dim % self.enc_heads == 0 and self.dec_dim % self.dec_heads == 0,
                    "enc_dim / dec_dim must be multiples of their heads"),
                   (self.enc_dim % 4 == 0 and self.dec_dim % 4 == 0,
                    "enc_dim / dec_dim must be multiples of 4 (sin-cos)"),
                   (0 <= self.ema <= 1, "ema must be in [0, 1]")]
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
        # GFL, target network (BYOL only): an EMA copy of backbone + projector, no gradient
        self.target_backbone = self.target_projector = None
        if c.gfl == "byol":
            self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        if c.use_facemae:
            # FFL: channel grouping -> semantic masking -> FaceMAE
            self.grouping = ChannelGrouping(C)
            self.facemae = FaceMAE(c)
            # distillation: D-projectors for each branch
            self.distill_gfl = MLPHead(C, c.head_hidden, c.head_out)
            self.distill_ffl = MLPHead(c.enc_dim, c.head_hidden, c.head_out)
            if c.distill_target == "ffl":  # sg(v): no gradient reaches it; frozen, as DDP wants
                self.distill_ffl.requires_grad_(False)

    @torch.no_grad()
    def update_target(self, progress=0.0):
        """EMA after each optimizer step (BYOL): target = m·target + (1−m)·online."""
        if self.target_backbone is None:
            return
        m = self.config.ema
        if self.config.ema_schedule == "cosine":  # BYOL's: to 1, progress = share of the run done
            m = 1 - (1 - m) * (math.cos(math.pi * progress) + 1) / 2
        pairs = ((self.backbone, self.target_backbone), (self.projector, self.target_projector))
        for online, target in pairs:
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
        return (byol_loss(p1, t2) + byol_loss(p2, t1)).mean()

    def ffl(self, origin):
        """FFL branch on the origin image (B,3,H,W): grouping, semantic masking, FaceMAE. -> dict"""
        c = self.config
        with torch.no_grad():  # no gradient to the ResNet; its BN statistics move (reference quirk)
            fmap = self.backbone.feature_map(origin)  # (B,C,h,w)
        # fp32: grouping channels start 1e-3 apart (bf16's step at 1: 2^-7); l_g sums C² squares
        # (4 M at C = 2048, past fp16's 65504)
        with torch.autocast(origin.device.type, enabled=False):
            attn = self.grouping(fmap.float())  # (B,C,h,w); trained only by the grouping loss
            # l_g as in the paper; the reference loop minimises MSE(l_g, 0) = l_g², kept here
            l_g = grouping_loss(channel_similarity(attn), c.groups)
        chosen = torch.randint(c.groups, (origin.shape[0],), device=origin.device)  # one per face
        maps, scores, ids_keep, mask, ids_restore = self.mask_patches(attn, chosen)
        latent = self.facemae.encode(origin, ids_keep)  # (B,1+K,D)
        pred = self.facemae.decode(latent, ids_restore)  # (B,N,p·p·3)
        target = norm_pix_targets(origin.float(), c.patch_size)[0]
        return dict(attn=attn, maps=maps, chosen=chosen, scores=scores, mask=mask, latent=latent,
                    pred=pred, reconstruction=reconstruction_loss(pred, target, mask),
                    grouping=l_g ** 2, l_g=l_g)

    def mask_patches(self, attn, chosen, masking=None):
        """Semantic masking (§3): A (B,C,h,w) summed per group, the chosen (B,) group's map scores
        patches -> maps (B,G,h,w), scores (B,N), then keep_top_patches. masking: the config's."""
        c = self.config
        maps = group_maps(attn.detach(), c.groups)  # (B,G,h,w)
        if (masking or c.masking) == "semantic":
            scores = semantic_patch_scores(maps, chosen, c.origin_size, c.patch_size)  # (B,N)
        else:
            scores = torch.rand(attn.shape[0], c.num_patches, device=attn.device)
        return (maps, scores, *keep_top_patches(scores, c.num_visible))

    def distillation(self, feats, latent):
        """L_d (paper §4): u1, u2 from the views' ResNet features (2B,C), v from FaceMAE's encoder
        tokens (B,1+K,D), each through its D-projector to (B,d)."""
        c = self.config
        u1, u2 = self.distill_gfl(feats).chunk(2)  # (B,d) each
        v = self.distill_ffl(latent[:, 1:].mean(1))  # mean of encoder tokens, CLS excluded -> (B,d)
        if c.distill_target == "mean":  # the paper's: a shared target that every side moves to
            t, students = ((u1 + u2 + v) / 3).detach(), (u1, u2, v)
        else:  # "ffl": FaceMAE's feature is the teacher, and only the ResNet's side learns from L_d
            t, students = v.detach(), (u1, u2)
        if c.distill_loss == "kd":
            return sum(distillation_loss(w, t, c.kd_temperature) for w in students)
        return sum(byol_loss(w, t).mean() for w in students)

    def loss_terms(self, origin, view1, view2):
        """-> the weighted terms of the total loss (with their graphs) and the unweighted parts."""
        c = self.config
        views = torch.cat([view1, view2])  # (2B,3,V,V): one backbone pass for both views
        feats = self.backbone(views)  # (2B,C)
        sim = self.gfl_loss(views, feats)
        recon = group = l_g = dist = sim.new_zeros(())
        if c.use_facemae:
            out = self.ffl(origin)
            recon, group, l_g = out["reconstruction"], out["grouping"], out["l_g"]
            dist = self.distillation(feats, out["latent"])
        # as they enter the total (the paper's weights: β·l_g² is most of it, trains only grouping)
        weighted = dict(weighted_similarity=c.sim_weight * sim,
                        weighted_reconstruction=c.recon_weight * recon,
                        weighted_distillation=c.alpha * dist, weighted_grouping=c.beta * group)
        return weighted, dict(similarity=sim, reconstruction=recon, distillation=dist,
                              grouping=group, l_g=l_g)

    def forward(self, origin, view1, view2):
        """origin (B,3,H,W), view1/view2 (B,3,V,V) -> total loss, its parts detached: similarity,
        reconstruction, distillation, grouping (= l_g²), l_g, the weighted_* terms and total."""
        weighted, parts = self.loss_terms(origin, view1, view2)
        loss = sum(weighted.values())  # L = L_s + L_r + α·L_d + β·l_g²
        parts = dict(parts, **weighted, total=loss)
        return loss, {k: v.detach() for k, v in parts.items()}
