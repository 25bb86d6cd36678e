"""Numbers pinned against independent computations: the losses of simfle.py at points whose value is
known by hand, the model's own forward against those functions (the right pairs, the right
patches, the right targets), and the evaluation's k-NN vote, probe, confusion matrix and
deduplicated accuracy on answers known in advance."""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import eval as evaluate
import simfle
from simfle import SimFLE, SimFLEConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tutorial"))
import exercises  # noqa: E402  (the tutorial's checkers: independent references, written apart)


def tiny(**kw):
    return SimFLEConfig.preset("tiny", **kw)


# ----------------------------------------------------------------------------- the loss functions


def test_byol_similarity_at_known_angles():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 3.0]])
    z = torch.tensor([[5.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 0.0]])
    expected = torch.tensor([0.0, 2.0, 4.0, 2 - 2 * math.cos(math.pi / 4)])  # cos 1, 0, −1, √½
    torch.testing.assert_close(simfle.byol_loss(p, z), expected, rtol=0, atol=1e-6)


def test_library_functions_pass_the_tutorials_independent_references():
    """The tutorial's checkers (NT-Xent written with loops, the KL direction at 0.130812, where
    norm-pix puts its 1e-6, the masking bookkeeping, the grouping loss) run on simfle.py's own
    functions, not only on the tutorial's solutions."""
    for name in ("simclr_loss", "distillation_loss", "norm_pix_targets", "keep_top_patches",
                 "grouping_loss"):
        fn = getattr(simfle, name)
        for what, case in exercises.CASES[name]:
            case(fn)  # raises AssertionError with the case's reason


def test_kd_value_by_hand():
    """T = 2, w = [0, 0], t = [2 ln 3, 0]: softmax(t/T) = (.75, .25), softmax(w/T) = (.5, .5);
    T²·KL = 4·(.75 ln 1.5 + .25 ln .5) = 4 × 0.130812. Swapped, KL(student ‖ teacher) would be
    4 × 0.143841."""
    w, t = torch.zeros(1, 2), torch.tensor([[2 * math.log(3.0), 0.0]])
    by_hand = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert math.isclose(simfle.distillation_loss(w, t, 2.0).item(), by_hand, rel_tol=1e-5)
    assert math.isclose(by_hand, 4 * 0.130812, rel_tol=1e-5)


def test_barlow_loss_by_hand():
    """Two dimensions, one perfectly correlated, one not: (3/4 − 1)² + (0 − 1)² on the
    diagonal, λ·0 off it."""
    z1 = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    # column 0 of both: identical; z2's column 1, (1, −1, −1, 1), is uncorrelated with both of
    # z1's; the std is the unbiased one (variance 4/3), so C = [[3/4, 0], [0, 0]]
    loss = simfle.barlow_loss(z1, z2, lam=0.5)
    c00, c11, c01, c10 = 0.75, 0.0, 0.0, 0.0
    expected = (c00 - 1) ** 2 + (c11 - 1) ** 2 + 0.5 * (c01 ** 2 + c10 ** 2)
    assert math.isclose(loss.item(), expected, rel_tol=1e-4)


def test_norm_pix_targets_are_standardised_per_patch():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 32, 32, generator=g) * 5 + torch.arange(2.0).view(2, 1, 1, 1)
    target, mean, var = simfle.norm_pix_targets(imgs, 16)  # (2, 4, 768)
    patches = simfle.patchify(imgs, 16)
    torch.testing.assert_close(mean, patches.mean(-1, keepdim=True))
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 4), rtol=0, atol=1e-5)
    # the unbiased variance of each patch's 768 numbers, over var + 1e-6
    torch.testing.assert_close(target.var(-1), var.squeeze(-1) / (var.squeeze(-1) + 1e-6),
                               rtol=1e-5, atol=1e-6)


def test_reconstruction_loss_counts_the_masked_patches_only():
    target = torch.zeros(1, 4, 3)
    pred = torch.tensor([[[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [100.0, 0, 0], [3.0, 3.0, 3.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # patches 0 and 1 masked
    assert simfle.reconstruction_loss(pred, target, mask).item() == (1 + 4) / 2


# ----------------------------------------------------------------------------- the model's forward


class Fixed(nn.Module):
    """A module that returns given rows, whatever its input (a stand-in projector / predictor)."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def forward(self, x):
        return self.rows


def test_byol_pairs_each_view_with_the_other_views_target():
    """gfl_loss = mean over the batch of sim(p1, t2) + sim(p2, t1): with p1 = t2 and p2 = t1 (and p1
    far from t1) it is exactly 0, and with the targets swapped it is 2 × 4 = 8 (cos −1 each)."""
    model = SimFLE(tiny(gfl="byol", use_facemae=False))
    t1, t2 = torch.tensor([[1.0, 0.0]] * 3), torch.tensor([[-1.0, 0.0]] * 3)
    model.projector = Fixed(torch.zeros(6, 2))
    model.target_projector = Fixed(torch.cat([t1, t2]))
    model.predictor = Fixed(torch.cat([t2, t1]))  # p1 = t2, p2 = t1
    views = torch.randn(6, 3, 64, 64)
    feats = model.backbone(views)
    assert model.gfl_loss(views, feats).item() == 0.0
    model.predictor = Fixed(torch.cat([t1, t2]))  # p1 = t1: the pairing of a view with itself
    assert model.gfl_loss(views, feats).item() == 8.0


def test_the_forwards_reconstruction_is_norm_pix_mse_on_the_masked_patches():
    """SimFLE.ffl's L_r against the functions computed apart from its own outputs: the targets are
    norm-pix targets of the origin image, and only the 37 masked patches of 49 count."""
    torch.manual_seed(0)
    model = SimFLE(tiny())
    origin = torch.randn(2, 3, 112, 112) * 3 + 1
    out = model.ffl(origin)
    patches = simfle.patchify(origin, 16)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True)
                                                           + 1e-6).sqrt()
    per_patch = ((out["pred"].float() - target) ** 2).mean(-1)  # (2, 49)
    assert out["mask"].sum().item() == 2 * 37
    expected = (per_patch * out["mask"]).sum() / out["mask"].sum()
    torch.testing.assert_close(out["reconstruction"], expected, rtol=1e-5, atol=1e-6)


def test_the_forwards_distillation_at_a_known_point():
    """distill_target mean, kd: L_d = Σ over u1, u2, v of KD(student, sg((u1 + u2 + v)/3))."""
    torch.manual_seed(0)
    model = SimFLE(tiny())
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # u1 = row 0, u2 = row 1 (B = 1)
    v = torch.tensor([[2.0, 2.0]])
    model.distill_gfl, model.distill_ffl = Fixed(u), Fixed(v)
    latent = torch.zeros(1, 13, model.config.enc_dim)
    got = model.distillation(torch.zeros(2, 256), latent).item()
    t = (u[0] + u[1] + v[0]) / 3

    def kd(w):  # T²·KL(softmax(t/T) ‖ softmax(w/T)) written out, T = 4
        p, q = F.softmax(t / 4, 0), F.softmax(w / 4, 0)
        return 16 * (p * (p / q).log()).sum().item()
    assert math.isclose(got, kd(u[0]) + kd(u[1]) + kd(v[0]), rel_tol=1e-5)


# ----------------------------------------------------------------------------- evaluation


def test_knn_vote_by_hand():
    """Test point (1, 0); training points at cosines 1 (class 0), 0.8 (class 1) and 0.6 (class 1),
    k = 3, temperature 0.1: class 0 gets e^10 = 22026, class 1 e^8 + e^6 = 3384 -> class 0, though
    two of the three neighbours are class 1. By count (or with the weights reversed) it would be
    class 1."""
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    train_y = torch.tensor([0, 1, 1, 1])
    pred = evaluate.knn_predict(train_x, train_y, torch.tensor([[2.0, 0.0]]), 2, k=3,
                                temperature=0.1)
    assert pred.tolist() == [0]
    # at a high temperature the weights are nearly equal: the majority, class 1, wins
    pred = evaluate.knn_predict(train_x, train_y, torch.tensor([[2.0, 0.0]]), 2, k=3,
                                temperature=100.0)
    assert pred.tolist() == [1]


def test_the_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 16, generator=g) * 0.1 + F.one_hot(y, 16).float() * 3
    report, _ = evaluate.probe_features((x[:240], y[:240]), (x[240:], y[240:]), ["a", "b", "c"],
                                        epochs=20)
    assert report["last_epoch_accuracy"] == 1.0 and report["accuracy"] == 1.0


def test_confusion_matrix_and_mean_class_accuracy_by_hand():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 2, 0])
    r = evaluate.classification_report(pred, target, ["a", "b", "c"])
    assert r["confusion"] == [[3, 1, 0], [0, 1, 1], [1, 0, 0]]
    assert math.isclose(r["accuracy"], 4 / 7, rel_tol=1e-6)
    assert math.isclose(r["mean_class_accuracy"], (3 / 4 + 1 / 2 + 0) / 3, rel_tol=1e-6)
    assert r["per_class_accuracy"] == {"a": 0.75, "b": 0.5, "c": 0.0}


def test_deduplicated_accuracy_is_the_accuracy_on_the_other_faces_alone():
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    pred = torch.tensor([0, 1, 2, 1, 1, 0])
    copies = torch.tensor([True, True, True, False, False, False])  # the copies are all right
    r = evaluate.classification_report(pred, target, ["a", "b", "c"], copies)
    alone = evaluate.classification_report(pred[~copies], target[~copies], ["a", "b", "c"])
    assert r["accuracy_deduplicated"] == alone["accuracy"]
    assert math.isclose(alone["accuracy"], 1 / 3, rel_tol=1e-6)
    assert r["held_out_duplicates"] == 3 and math.isclose(r["accuracy"], 4 / 6, rel_tol=1e-6)


# ----------------------------------------------------------------------------- masking, alike


def test_random_masking_shows_each_patch_twelve_times_in_49():
    """SimFLE.mask_patches(masking="random"), as training draws it: over 4,000 draws every one of
    the 49 patches is visible 12/49 of the time (binomial std 0.7 points; 4 std allowed)."""
    torch.manual_seed(0)
    model = SimFLE(tiny())
    attn = torch.zeros(4000, model.config.backbone_channels, 4, 4)
    chosen = torch.zeros(4000, dtype=torch.long)
    mask = model.mask_patches(attn, chosen, masking="random")[3]  # (4000, 49)
    assert (mask.sum(1) == 37).all()
    visible = 1 - mask.mean(0)
    assert (visible - 12 / 49).abs().max() < 4 * math.sqrt(12 / 49 * 37 / 49 / 4000)


def test_a_landmark_outside_the_image_is_a_miss_for_every_masking():
    from eval_support.landmarks import landmark_hits
    nothing_masked, all_masked = torch.zeros(1, 49), torch.ones(1, 49)
    marks = torch.tensor([[[0.5, 0.5], [1.2, 0.5], [0.5, -0.1], [0.99, 0.0]]])  # 2 outside
    assert landmark_hits(nothing_masked, marks, 7).tolist() == [[True, False, False, True]]
    assert landmark_hits(all_masked, marks, 7).tolist() == [[False] * 4]
    one_visible = torch.ones(1, 49)
    one_visible[0, 3 * 7 + 3] = 0  # the centre patch, where (0.5, 0.5) lies
    assert landmark_hits(one_visible, marks, 7).tolist() == [[True, False, False, False]]
