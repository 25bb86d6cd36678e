"""The landmark evaluations of eval.py --mode landmarks: a linear probe from the frozen trunk's last
feature map to the landmarks (NME), and the landmark hit rate of semantic masking (the share of a
face's landmarks in the patches it keeps visible, paper §3), with random masking and a fixed central
mask as controls; and the pictures of semantic masking and FaceMAE (`inspect_ffl`)."""
import torch

import data
import simfle
from data_support.layouts import DatasetError
from simfle import SimFLE, patchify, reconstruction_loss
from eval_support.common import loader


@torch.no_grad()
def feature_maps(trunk, dataset, size, device, workers=0):
    """Flattened last feature maps and [0,1] landmarks: -> (n, C·h·w), (n, L, 2)."""
    feats, marks = [], []
    for b, _ in loader(data.ProbeView(dataset, size, train=False), 128, workers):
        if b is None:
            continue
        x, _, lm = data.probe_batch(b, device)
        feats.append(trunk.feature_map(x).flatten(1).float().cpu())
        marks.append(lm.float().cpu())
    return torch.cat(feats), torch.cat(marks)


def ridge(x, y, lam):
    """Closed-form ridge regression with a bias, in whichever of primal / dual form is smaller."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = (x - mx).double(), (y - my).double()
    if xc.shape[0] < xc.shape[1]:  # dual: W = Xᵀ (X Xᵀ + λI)⁻¹ Y
        w = xc.T @ torch.linalg.solve(xc @ xc.T + lam * torch.eye(len(xc), dtype=xc.dtype), yc)
    else:
        w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(xc.shape[1], dtype=xc.dtype), xc.T @ yc)
    w = w.float()
    return lambda z: (z - mx) @ w + my


def nme(pred, target, eye_idx):
    """Normalised mean error: mean landmark distance over the inter-ocular distance, per image,
    averaged."""
    err = (pred - target).norm(dim=-1).mean(-1)  # (n,)
    iod = (target[:, eye_idx[0]] - target[:, eye_idx[1]]).norm(dim=-1).clamp(min=1e-6)
    return (err / iod).mean().item()


def landmark_probe(trunk, train_base, test_base, size, device, workers=0, max_train=20000, seed=0):
    """Landmark probe: ridge regression from the frozen trunk's last feature map to landmark
    coordinates.

    The ridge strength is chosen on 10 % of the training split (never on the test split); NME on the
    test split.
    """
    if not train_base.num_landmarks:
        raise DatasetError("--mode landmarks needs a dataset with landmarks (synthetic, "
                                f"affectnet7/8); {train_base.name} has none")
    trunk = trunk.to(device).eval()
    if len(train_base) > max_train:
        pick = torch.randperm(len(train_base), generator=torch.Generator().manual_seed(seed))
        train_base = torch.utils.data.Subset(train_base, pick[:max_train].tolist())
    x, y = feature_maps(trunk, train_base, size, device, workers)
    tx, ty = feature_maps(trunk, test_base, size, device, workers)
    n_val = max(1, len(x) // 10)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, fit = perm[:n_val], perm[n_val:]
    scale = x.pow(2).sum(1).mean().item()  # λ relative to the feature energy
    scores = {}
    for lam in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        f = ridge(x[fit], y[fit].flatten(1), lam * scale)
        scores[lam] = nme(f(x[val]).view_as(y[val]), y[val], test_base.eye_idx)
    lam = min(scores, key=scores.get)
    f = ridge(x, y.flatten(1), lam * scale)
    mean_shape = y.mean(0, keepdim=True).expand_as(ty)
    return {"mode": "landmarks", "nme": nme(f(tx).view_as(ty), ty, test_base.eye_idx),
            "nme_mean_shape": nme(mean_shape, ty, test_base.eye_idx), "ridge_lambda": lam,
            "val_nme": scores,
            "num_landmarks": test_base.num_landmarks, "feature_dim": x.shape[1], "image_size": size}


def central_patches(grid, k):
    """Indices (row-major) of the k patches of a grid x grid layout nearest its centre; ties go to
    the lower index."""
    centre = (grid - 1) / 2
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    distance = ((rows - centre) ** 2 + (cols - centre) ** 2).flatten()
    return torch.sort(distance, stable=True).indices[:k]


RANDOM_DRAWS = 8  # random masks drawn per image to measure random masking's hit rate


def landmark_hits(mask, marks, grid):
    """Which landmarks a mask keeps visible: mask (B,N) with 1 = masked, marks (B,L,2) in [0, 1] of
    the image, grid patches a side -> (B,L) bool. A landmark outside the image is a miss, for every
    masking alike."""
    col, row = (marks * grid).floor().long().unbind(-1)  # (B,L) patch column and row
    inside = (col >= 0) & (col < grid) & (row >= 0) & (row < grid)
    patch = row.clamp(0, grid - 1) * grid + col.clamp(0, grid - 1)  # (B,L)
    return (mask.gather(1, patch) == 0) & inside


@torch.no_grad()
def landmark_hit_rate(model, dataset, device, batch_size=64, workers=0, seed=0):
    """Share of a face's landmarks that fall in *visible* patches under semantic masking (paper §3:
    the kept patches should be the facial landmarks), and the same share under random masking and a
    fixed mask of the K patches nearest the image centre (central_patches: on aligned faces the
    landmarks crowd there, so a hit rate means something only above it). All three are counted by
    landmark_hits, the same rule.

    Each image's semantic masking is scored for every one of the G groups (training draws one at
    random, so this is the expectation over that draw), with BatchNorm in train mode on batches of
    `batch_size` origin images, as the masks are made in training; random masking is drawn as
    training draws it (SimFLE.mask_patches, masking="random"), RANDOM_DRAWS times per image, from a
    generator seeded with `seed` (the global RNG is left as it was). The model is not changed.
    -> {"semantic": rate, "random": rate, "central": rate, "per_group": [rate per group],
    "best_group": rate of the best group}
    """
    c = model.config
    if not c.use_facemae:
        raise ValueError("the landmark hit rate needs a model with FaceMAE (use_facemae=True)")
    if not dataset.num_landmarks:
        raise DatasetError("the landmark hit rate needs a dataset with landmarks; "
                                f"{dataset.name} has none")
    # train-mode BN moves running statistics
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model = model.to(device).train()
    grid = c.origin_size // c.patch_size
    hits, total, central_hits, random_hits = torch.zeros(c.groups), 0, 0.0, 0.0
    central = torch.ones(1, grid * grid)
    central[0, central_patches(grid, c.num_visible)] = 0  # 1 = masked
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch, _ in loader(data.ProbeView(dataset, c.origin_size, train=False), batch_size,
                               workers):
            if batch is None:
                continue
            origin, _, marks = data.probe_batch(batch, device)  # marks in [0, 1] of the image
            # (B,C,h,w), as SimFLE.ffl
            attn = model.grouping(model.backbone.feature_map(origin).float())
            B = origin.shape[0]
            for g in range(c.groups):
                chosen = torch.full((B,), g, device=device)
                mask = model.mask_patches(attn, chosen, masking="semantic")[3]  # (B,N)
                hits[g] += landmark_hits(mask, marks, grid).float().sum().cpu()
            for _ in range(RANDOM_DRAWS):
                mask = model.mask_patches(attn, chosen, masking="random")[3]
                random_hits += landmark_hits(mask, marks, grid).float().sum().item()
            central_hits += landmark_hits(central.to(device).expand(B, -1), marks,
                                          grid).float().sum().item()
            total += marks.shape[0] * marks.shape[1]
    model.load_state_dict(snapshot)
    model.train(was_training)
    per_group = (hits / max(total, 1)).tolist()
    return {"semantic": sum(per_group) / len(per_group),
            "random": random_hits / max(total * RANDOM_DRAWS, 1),
            "central": central_hits / max(total, 1), "per_group": per_group,
            "best_group": max(per_group), "images": len(dataset)}


def hit_rate_trained_and_untrained(model, seed, dataset, device, workers=0):
    """landmark_hit_rate of a trained model, and of its configuration as `train.py --seed seed`
    initialised it (train.py seeds torch right before it builds the model): -> (trained, untrained),
    landmark_hit_rate's dicts."""
    trained = landmark_hit_rate(model, dataset, device, workers=workers)
    torch.manual_seed(seed)
    return trained, landmark_hit_rate(SimFLE(model.config), dataset, device, workers=workers)


def unpatchify(x, p):
    """MAE's unpatchify: (B,N,p·p·3) -> (B,3,H,W), square images."""
    B, N, _ = x.shape
    h = int(N ** 0.5)
    x = x.reshape(B, h, h, p, p, 3)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, 3, h * p, h * p)


def reconstruction_pictures(images, pred, mask, p):
    """MAE's pictures of a reconstruction: images (B,3,H,W), FaceMAE's norm-pix predictions
    (B,N,p·p·3), mask (B,N) (1 = masked) -> the visible patches and the reconstruction (B,3,H,W)
    with the visible ones pasted in (masked ones de-normalised with the true patch statistics, as
    MAE's figures do), in the images' normalised space; loss: L_r."""
    # looked up on the module, as SimFLE.ffl's is: the tutorial's exercise puts the student's there
    target, mean, var = simfle.norm_pix_targets(images.float(), p)
    patches, m = patchify(images.float(), p), mask[..., None]  # (B,N,p·p·3), (B,N,1)
    filled = patches * (1 - m) + (pred.float() * (var + 1e-6) ** 0.5 + mean) * m
    return dict(visible=unpatchify(patches * (1 - m), p), reconstruction=unpatchify(filled, p),
                loss=reconstruction_loss(pred, target, mask))


@torch.no_grad()
def inspect_ffl(model, origin):
    """For figures, by the training code path (SimFLE.ffl): group maps (B,G,h,w), chosen group (B,),
    scores (B,N), mask (B,N) (1 = masked), and reconstruction_pictures of FaceMAE's prediction."""
    if not model.config.use_facemae:
        raise ValueError("inspect_ffl needs a model with use_facemae=True")
    out = model.ffl(origin)
    return dict(maps=out["maps"], chosen=out["chosen"], scores=out["scores"], mask=out["mask"],
                **reconstruction_pictures(origin, out["pred"], out["mask"],
                                          model.config.patch_size))
