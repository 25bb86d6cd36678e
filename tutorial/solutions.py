"""
Solutions to the exercises of tutorial.ipynb (beside their sections), for instructors. Try them yourself first:
exercises.check(fn) tells you whether your version passes. Each solution is what simfle.py does, written out for
one piece. The notebook's test runs them in the notebook's kernel after the stubs; `python tutorial/make.py
--student DIR` builds a copy of the course without this file (tests that need it then skip).
"""
import torch
import torch.nn.functional as F

import simfle


def keep_top_patches(scores, num_keep):
    """scores (B,N) -> ids_keep (B,K) the K highest-scoring patches, mask (B,N) with 1 = masked, ids_restore (B,N)."""
    ids_shuffle = torch.argsort(scores, dim=1, descending=True)  # most activated first: the visible ones lead
    ids_restore = torch.argsort(ids_shuffle, dim=1)              # where each patch went: undoes the shuffle
    mask = torch.ones_like(scores)
    mask[:, :num_keep] = 0                                       # in shuffled order: the first K are visible
    return ids_shuffle[:, :num_keep], torch.gather(mask, 1, ids_restore), ids_restore   # mask back in image order


def grouping_loss(sim, groups):
    """S (C,C), G groups -> l_g = 0.001 * sum((S - T)^2) / (C/512)^2, T block-diagonal with G blocks of ones."""
    C = sim.shape[0]
    M = C // groups
    target = torch.block_diag(*[torch.ones(M, M, dtype=sim.dtype, device=sim.device)] * groups)
    return 0.001 * ((sim - target) ** 2).sum() / (C / 512) ** 2


@torch.no_grad()
def ema_update(online, target, m):
    """target <- m * target + (1 - m) * online, parameter by parameter, in place (BYOL's target)."""
    for po, pt in zip(online.parameters(), target.parameters()):
        pt.mul_(m).add_(po, alpha=1 - m)


def distillation_loss(w, t, temperature):
    """KD(w, t) = T^2 * KL(softmax(t/T) || softmax(w/T)), averaged over the batch."""
    log_student = F.log_softmax(w / temperature, dim=1)
    teacher = F.softmax(t / temperature, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature ** 2


def norm_pix_targets(imgs, p):
    """(B,3,H,W) -> per-patch normalised pixels (B,N,p*p*3), and each patch's mean and variance (B,N,1)."""
    t = simfle.patchify(imgs, p)
    mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
    return (t - mean) / (var + 1e-6) ** 0.5, mean, var


def simclr_loss(z1, z2, temperature):
    """NT-Xent: each of the 2B views must pick its partner (the other view of its face) among the 2B - 1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)                  # (2B,d) unit rows: dot products are cosines
    logits = z @ z.T / temperature                               # (2B,2B)
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))  # not itself
    B = len(z1)
    partner = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(z.device)   # view i <-> view i + B
    return F.cross_entropy(logits, partner)                      # mean over the 2B views


def grouping_share(history):
    """M1: beta*l_g^2 over the total, at the last step. About all of it: the total is the grouping term."""
    return history[-1]["beta*l_g^2"] / history[-1]["total"]


def grouping_fall(history):
    """M2: l_g at the last step over l_g at the first (the log holds l_g itself beside beta*l_g^2)."""
    return history[-1]["l_g"] / history[0]["l_g"]


def backbone_share(history):
    """M3: only L_s and alpha*L_d reach the backbone (section 6); their share of the last step's total."""
    last = history[-1]
    return (last["L_s"] + last["alpha*L_d"]) / last["total"]
