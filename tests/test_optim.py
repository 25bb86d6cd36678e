"""Small-scale optimisation (train_support/optim.py) and the collapse monitor
(train_support/observe.py): LARS against a hand computation, what is excluded from weight decay, the
predictor's lr, the monitor's figures on embeddings whose answer is known, and a run that uses them
end to end."""
import math
import os

import torch
import torch.nn as nn

import train
from e2e import QUICK, metrics
from simfle import SimFLE, SimFLEConfig
from train_support.observe import collapse_figures
from train_support.optim import LARS, make_optimizer, param_groups
from eval_support.common import load_checkpoint


def lars_by_hand(w, g, v, lr, wd, eta, momentum=0.9):
    """One LARS step (clipped) in plain floats: -> (w, v)."""
    w_norm = math.sqrt(sum(x * x for x in w))
    g_norm = math.sqrt(sum(x * x for x in g))
    ratio = min(eta * w_norm / (g_norm + wd * w_norm) / lr, 1.0)
    step = [ratio * (gi + wd * wi) for gi, wi in zip(g, w)]
    v = step if v is None else [momentum * vi + si for vi, si in zip(v, step)]
    return [wi - lr * vi for wi, vi in zip(w, v)], v


def test_lars_step_matches_the_hand_computation():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = LARS([w], lr=0.5, weight_decay=0.1, eta=0.02)
    expected, v = [3.0, 4.0], None
    for _ in range(3):
        w.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
        opt.step()
        expected, v = lars_by_hand(expected, [0.6, 0.8], v, lr=0.5, wd=0.1, eta=0.02)
        assert torch.allclose(w.detach(), torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    # the first step by hand: r = 0.02·5 / (1 + 0.1·5) = 1/15, clipped r/lr = 2/15;
    # w − 0.5·(2/15)·([0.6, 0.8] + 0.1·[3, 4]) = [2.94, 3.92]
    w2 = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    w2.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    LARS([w2], lr=0.5, weight_decay=0.1, eta=0.02).step()
    assert torch.allclose(w2.detach(), torch.tensor([2.94, 3.92], dtype=torch.float64))


def test_lars_clip_makes_it_sgd_when_the_trust_ratio_is_large():
    """With eta·‖w‖/‖g‖ far above lr the clipped step is plain SGD with momentum."""
    torch.manual_seed(0)
    a, b = (torch.nn.Parameter(torch.ones(4, 3)) for _ in range(2))
    lars = LARS([a], lr=0.01, weight_decay=0.0, eta=1000.0)
    sgd = torch.optim.SGD([b], lr=0.01, momentum=0.9)
    for _ in range(3):
        grad = torch.randn(4, 3)
        a.grad, b.grad = grad.clone(), grad.clone()
        lars.step()
        sgd.step()
    assert torch.allclose(a, b, atol=1e-7)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)


def decayed_with_zero_gradients(name):
    """One step with every gradient 0 and weight decay 0.5: -> {parameter name: changed?}"""
    torch.manual_seed(0)
    model = Small()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # no parameter at 0, where decay could not show
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = make_optimizer(model, name, lr=0.1, weight_decay=0.5, exclude_norm_bias=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return {k: not torch.equal(p, before[k]) for k, p in model.named_parameters()}


def test_excluded_parameters_are_untouched_by_decay():
    for name in ("sgd", "lars"):
        changed = decayed_with_zero_gradients(name)
        assert changed == {"conv.weight": True, "conv.bias": False, "bn.weight": False,
                           "bn.bias": False, "fc.weight": True, "fc.bias": False}, name


def test_default_groups_are_the_papers_one_group():
    """Without the new options: one group, every parameter in model.parameters() order, as
    torch.optim.SGD(model.parameters()) had it (the optimizer state of earlier checkpoints still
    loads)."""
    model = SimFLE(SimFLEConfig.preset("tiny", gfl="byol", use_facemae=False))
    groups = param_groups(model, 1e-4)
    everything = list(model.parameters())
    assert len(groups) == 1 and len(groups[0]["params"]) == len(everything)
    assert all(a is b for a, b in zip(groups[0]["params"], everything))
    assert groups[0]["weight_decay"] == 1e-4 and groups[0]["lr_mult"] == 1.0


def test_the_predictor_gets_its_multiplier_and_nothing_else_does():
    model = SimFLE(SimFLEConfig.preset("tiny", gfl="byol", use_facemae=False))
    opt = make_optimizer(model, "lars", lr=0.2, weight_decay=1e-5, exclude_norm_bias=True,
                         predictor_lr_mult=10.0)
    predictor = {id(p) for p in model.predictor.parameters()}
    for group in opt.param_groups:
        in_predictor = {id(p) in predictor for p in group["params"]}
        assert len(in_predictor) == 1  # a group is all predictor or none of it
        assert group["lr"] == (2.0 if in_predictor.pop() else 0.2)
        assert group["lars"] == (group["weight_decay"] > 0)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_collapse_figures_on_known_embeddings():
    spread = collapse_figures(torch.eye(16) * 3.0)  # 16 faces on 16 orthogonal directions
    assert math.isclose(spread["embedding_std_sqrt_d"], 1.0, rel_tol=1e-6)
    assert math.isclose(spread["embedding_std"], 0.25, rel_tol=1e-6)
    assert abs(spread["embedding_cosine"]) < 1e-7
    collapsed = collapse_figures(torch.randn(1, 8).repeat(20, 1) * torch.rand(20, 1).add(0.5))
    assert collapsed["embedding_std"] < 1e-6 and math.isclose(collapsed["embedding_cosine"], 1.0,
                                                              rel_tol=1e-6)
    opposite = collapse_figures(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    assert math.isclose(opposite["embedding_cosine"], -1.0, rel_tol=1e-6)


def test_a_lars_run_logs_the_monitor_and_resumes(tmp_path):
    out = str(tmp_path / "run")
    options = ["--gfl", "byol", "--use-facemae", "false", "--optimizer", "lars", "--lr", "0.2",
               "--exclude-norm-bias", "true", "--predictor-lr-mult", "10", "--warmup-epochs", "1"]
    assert train.cli(QUICK + options + ["--epochs", "2", "--stop-after-steps", "2",
                                        "--out", out]) == 0
    assert train.cli(["--resume", os.path.join(out, "last.pt")]) == 0
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 < r["embedding_std_sqrt_d"] <= 1.5 and -1 <= r["embedding_cosine"] <= 1
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert ckpt["train"]["optimizer"] == "lars" and ckpt["train"]["predictor_lr_mult"] == 10
    # the rest and the predictor, each with and without decay
    assert len(ckpt["optimizer"]["param_groups"]) == 4
