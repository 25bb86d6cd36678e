"""train.py's optimisers: the paper's SGD, and LARS for small-batch BYOL recipes, with the parameter
groups both share.

  param_groups   the model's trainable parameters in groups: weight decay (and LARS's trust ratio)
                 on or off, the predictor's lr multiplier
  LARS           SGD with momentum whose step is scaled per tensor by eta·‖w‖ / (‖g‖ + wd·‖w‖)
                 (You et al. 2017), as the BYOL paper and solo-learn's CIFAR recipes use it
  make_optimizer --optimizer sgd | lars over those groups

Each group carries "lr_mult"; Trainer.step sets group["lr"] = lr · lr_mult every step.
"""
import torch


def is_norm_or_bias(param):
    """BatchNorm / LayerNorm weights and every bias: the 1-D tensors. The BYOL paper and solo-learn
    exclude them from weight decay and from LARS's adaptation."""
    return param.ndim <= 1


def param_groups(model, weight_decay, exclude_norm_bias=False, predictor_lr_mult=1.0):
    """-> a list of optimizer groups over all of model's parameters (those that get no gradient, the
    EMA target's, are skipped by the step, as torch's SGD skips them):
    {"params", "weight_decay", "lars" (adapt this group's step), "lr_mult", "name"}. Empty groups
    are left out; with the defaults there is one group in model.parameters() order, the paper's (and
    the optimizer state of checkpoints written before these options)."""
    groups = {}
    for name, p in model.named_parameters():
        excluded = exclude_norm_bias and is_norm_or_bias(p)
        predictor = name.startswith("predictor.") and predictor_lr_mult != 1.0
        key = ("predictor" if predictor else "rest") + (", no decay" if excluded else "")
        group = groups.setdefault(key, {
            "params": [], "name": key, "weight_decay": 0.0 if excluded else weight_decay,
            "lars": not excluded, "lr_mult": predictor_lr_mult if predictor else 1.0})
        group["params"].append(p)
    return list(groups.values())


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise adapted step (You et al. 2017, "Large Batch Training of
    Convolutional Networks"), in the form solo-learn's CIFAR BYOL recipe runs it:

        g' = g + wd·w
        r  = eta · ‖w‖ / (‖g‖ + wd·‖w‖)       (1 when ‖w‖ or ‖g‖ is 0)
        r  = min(r / lr, 1)                    if clip: the adapted lr never exceeds lr
        v  = momentum · v + r · g'
        w  = w − lr · v

    A group with "lars": False (BatchNorm weights and biases when excluded) takes plain SGD with
    momentum: no r, and its weight_decay (0 when excluded) as given."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip=True, eps=1e-8):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError("LARS: lr, momentum and weight_decay must be >= 0 and eta > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, clip=clip, eps=eps, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    ratio = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    # where a norm is 0 (a fresh zero-initialised tensor) the step is not scaled
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio,
                                        torch.ones_like(ratio))
                    if group["clip"] and lr > 0:
                        ratio = torch.clamp(ratio / lr, max=1.0)
                    d_p.mul_(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d_p.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                p.add_(state["momentum_buffer"], alpha=-lr)
        return loss


def make_optimizer(model, name, lr, weight_decay, exclude_norm_bias=False, predictor_lr_mult=1.0,
                   lars_eta=0.02):
    """train.py's optimizer: "sgd" (the paper: momentum 0.9) or "lars" (momentum 0.9, trust
    coefficient lars_eta, clipped), over param_groups(model, ...)."""
    groups = param_groups(model, weight_decay, exclude_norm_bias, predictor_lr_mult)
    for group in groups:
        group["lr"] = lr * group["lr_mult"]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, eta=lars_eta)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: sgd or lars")
