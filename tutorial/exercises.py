"""
Checkers for the tutorial's exercises (tutorial.ipynb, beside the sections they belong to): you write a piece of
SimFLE, a checker runs cases modelled on the meaning tests of tests/test_simfle.py against your function and prints
PASS, or the cases it fails and why (calling simfle.py's own version is not an answer).

    import exercises
    exercises.check(keep_top_patches)                      # an "implement it" exercise, found by its name
    yours = exercises.use(keep_top_patches)                # the same, and once it passes the model runs yours
    exercises.check_measurement(grouping_share, history)   # a measurement question, against the log

Ask your instructor for the answers, or read the source of the piece in simfle.py, after your own attempt.
"""
import ast
import inspect
import math
import os
import sys
import textwrap

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: simfle.py
import simfle  # noqa: E402

CASES = {}  # exercise name -> [(what the case checks, function that raises AssertionError if it fails)]


def case(exercise, what):
    def register(test):
        CASES.setdefault(exercise, []).append((what, test))
        return test
    return register


def close(got, expected, what, atol=1e-5, rtol=1e-5):
    got, expected = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    off = ~torch.isclose(got, expected, atol=atol, rtol=rtol)
    if off.any() and got.numel() <= 8:
        raise AssertionError(f"{what}: got {got.tolist()}, expected {expected.tolist()}")
    if off.any():
        at = tuple(torch.nonzero(off)[0].tolist())
        raise AssertionError(f"{what}: {int(off.sum())} of {got.numel()} numbers are off; at {at} got {got[at]:.6g}, "
                             f"expected {expected[at]:.6g}")


# ----------------------------------------------------------------------------- 1. grouping_loss (channel grouping)


@case("grouping_loss", "zero when S is the block-diagonal target T (8 channels, 2 groups)")
def _(fn):
    ideal = torch.block_diag(torch.ones(4, 4), torch.ones(4, 4))
    close(fn(ideal, 2), 0.0, "grouping_loss(T, 2)")


@case("grouping_loss", "by hand: S = [[1, .5], [.5, 1]], 2 groups -> 0.001 * 0.5 / (2/512)^2 = 32.768")
def _(fn):
    close(fn(torch.tensor([[1.0, 0.5], [0.5, 1.0]]), 2), 32.768, "grouping_loss(S, 2)", rtol=1e-6)


@case("grouping_loss", "all channels identical (S all ones), 512 channels, 32 groups -> 253.952, the l_g before training")
def _(fn):
    close(fn(torch.ones(512, 512), 32), 0.001 * (512 ** 2 - 32 * 16 ** 2), "grouping_loss(ones(512, 512), 32)", rtol=1e-6)


@case("grouping_loss", "the same at 1024 channels: the (C/512)^2 divisor makes l_g independent of C")
def _(fn):
    close(fn(torch.ones(1024, 1024), 32), 253.952, "grouping_loss(ones(1024, 1024), 32)", rtol=1e-6)


@case("grouping_loss", "a gradient flows back to S (it trains the grouping layer)")
def _(fn):
    S = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    fn(S, 2).backward()
    assert S.grad is not None and S.grad.abs().sum() > 0, "no gradient reached S"


# ----------------------------------------------------------------------------- 2. keep_top_patches (semantic masking)


@case("keep_top_patches", "a 4-patch example: scores [.1, .9, .5, .7], keep 2 -> patches 1 and 3 visible")
def _(fn):
    ids_keep, mask, _ = fn(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), 2)
    assert sorted(ids_keep[0].tolist()) == [1, 3], f"ids_keep {ids_keep.tolist()}, expected patches 1 and 3"
    assert mask.tolist() == [[1, 0, 1, 0]], f"mask {mask.tolist()}, expected [[1, 0, 1, 0]] (1 = masked)"


@case("keep_top_patches", "exactly 12 of 49 patches visible per image, and they are the 12 highest scores")
def _(fn):
    scores = torch.rand(3, 49, generator=torch.Generator().manual_seed(0))
    ids_keep, mask, _ = fn(scores, 12)
    assert tuple(ids_keep.shape) == (3, 12), f"ids_keep has shape {tuple(ids_keep.shape)}, expected (3, 12)"
    assert tuple(mask.shape) == (3, 49), f"mask has shape {tuple(mask.shape)}, expected (3, 49)"
    assert mask.sum(1).tolist() == [37.0] * 3, f"masked per image {mask.sum(1).tolist()}, expected 37 of 49"
    top = scores.topk(12, dim=1).indices
    for b in range(3):
        assert set(ids_keep[b].tolist()) == set(top[b].tolist()), f"image {b}: kept {sorted(ids_keep[b].tolist())}, " \
            f"the 12 highest scores are at {sorted(top[b].tolist())}"
        assert (mask[b, ids_keep[b]] == 0).all(), f"image {b}: a kept patch is marked masked"


@case("keep_top_patches", "ids_restore undoes the shuffle, and the shuffle argsort(ids_restore) starts with ids_keep, "
                          "in ids_keep's order")
def _(fn):
    scores = torch.rand(2, 49, generator=torch.Generator().manual_seed(1))
    ids_keep, _, ids_restore = fn(scores, 12)
    assert sorted(ids_restore[0].tolist()) == list(range(49)), "ids_restore is not a permutation of the 49 patches"
    shuffle = ids_restore.argsort(1)  # the order FaceMAE's decoder lays its tokens out in: kept first, then masked
    assert torch.equal(shuffle[:, :12], ids_keep), \
        f"argsort(ids_restore)[:12] = {shuffle[0, :12].tolist()}, ids_keep = {ids_keep[0].tolist()} (image 0)"
    tokens = torch.gather(scores, 1, shuffle)  # scores laid out in shuffled order...
    close(torch.gather(tokens, 1, ids_restore), scores, "gathering the shuffled scores with ids_restore")


# ----------------------------------------------------------------------------- 3. norm_pix_targets (FaceMAE)


def images(seed, B=2, size=32):
    return torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))


@case("norm_pix_targets", "shapes: (2, 3, 32, 32), p = 16 -> targets (2, 4, 768), mean and var (2, 4, 1)")
def _(fn):
    targets, mean, var = fn(images(0), 16)
    for x, shape, name in ((targets, (2, 4, 768), "targets"), (mean, (2, 4, 1), "mean"), (var, (2, 4, 1), "var")):
        assert tuple(x.shape) == shape, f"{name} has shape {tuple(x.shape)}, expected {shape}"


@case("norm_pix_targets", "every patch's target has mean 0 and variance 1")
def _(fn):
    targets, _, _ = fn(images(1) * 3 + 2, 16)
    close(targets.mean(-1), torch.zeros(2, 4), "per-patch mean of the targets", atol=1e-4)
    close(targets.var(-1), torch.ones(2, 4), "per-patch variance of the targets", atol=1e-3)


@case("norm_pix_targets", "targets * sqrt(var + 1e-6) + mean gives back simfle.patchify(imgs, p): patches in MAE's order")
def _(fn):
    imgs = images(2)
    targets, mean, var = fn(imgs, 16)
    close(targets * (var + 1e-6) ** 0.5 + mean, simfle.patchify(imgs, 16), "un-normalised targets", atol=1e-4)


@case("norm_pix_targets", "a flat patch gives targets 0, not NaN (the 1e-6 inside the square root)")
def _(fn):
    targets, _, _ = fn(torch.full((1, 3, 16, 16), 0.5), 16)
    assert torch.isfinite(targets).all(), "a flat patch gives NaN or inf targets"
    close(targets, torch.zeros(1, 1, 768), "targets of a flat patch", atol=1e-6)


@case("norm_pix_targets", "the 1e-6 is added to the variance, MAE's (t - mean) / (var + 1e-6) ** .5")
def _(fn):
    imgs = torch.linspace(0, 1e-3, 16 * 16 * 3).reshape(1, 3, 16, 16)  # a patch of tiny spread: the 1e-6 matters
    targets, _, _ = fn(imgs, 16)
    t = simfle.patchify(imgs, 16)
    close(targets, (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5, "targets", atol=1e-4)


# ----------------------------------------------------------------------------- 4. ema_update (the BYOL target)


def ema_pair(seed):
    torch.manual_seed(seed)
    online, target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target.requires_grad_(False)
    return online, target


@case("ema_update", "target <- m*target + (1-m)*online, m = 0.99, for every parameter")
def _(fn):
    online, target = ema_pair(0)
    before = [p.clone() for p in target.parameters()]
    fn(online, target, 0.99)
    for (name, p), b, o in zip(target.named_parameters(), before, online.parameters()):
        close(p.detach(), 0.99 * b + 0.01 * o.detach(), f"target parameter {name}", atol=1e-6, rtol=0)


@case("ema_update", "the online network is not changed; m = 1 freezes the target, m = 0 copies the online network")
def _(fn):
    online, target = ema_pair(1)
    online_before, target_before = [p.clone() for p in online.parameters()], [p.clone() for p in target.parameters()]
    fn(online, target, 1.0)
    for p, o in zip(online.parameters(), online_before):
        assert torch.equal(p.detach(), o), "the online network changed"
    for p, b in zip(target.parameters(), target_before):
        assert torch.equal(p, b), "m = 1 moved the target"
    fn(online, target, 0.0)
    for p, o in zip(target.parameters(), online.parameters()):
        close(p, o.detach(), "m = 0: target", atol=1e-7, rtol=0)


@case("ema_update", "in place and outside autograd: the target's tensors stay leaves that need no gradient")
def _(fn):
    online, target = ema_pair(2)
    ids = [id(p) for p in target.parameters()]
    fn(online, target, 0.9)
    assert [id(p) for p in target.parameters()] == ids, "the target's parameters were replaced, not updated in place"
    assert all(not p.requires_grad and p.grad_fn is None for p in target.parameters()), \
        "the target needs gradients after the update (use torch.no_grad())"


# ----------------------------------------------------------------------------- 5. distillation_loss


@case("distillation_loss", "zero when the student equals the teacher")
def _(fn):
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    close(fn(w, w.clone(), 4.0), 0.0, "distillation_loss(w, w, 4)")


@case("distillation_loss", "by hand: T = 1, w = [0, 0], t = [ln 3, 0] -> KL((.75, .25) || (.5, .5)) = 0.130812")
def _(fn):
    close(fn(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), 1.0), 0.130812,
          "distillation_loss at T = 1 (if you got 0.143841, the KL is the wrong way round)", atol=1e-6)


@case("distillation_loss", "the T^2 factor: the same distributions at T = 4 (logits x 4) -> 16 x 0.130812 = 2.09299")
def _(fn):
    close(fn(torch.tensor([[0.0, 0.0]]), torch.tensor([[4 * math.log(3.0), 0.0]]), 4.0), 16 * 0.130812,
          "distillation_loss at T = 4", atol=1e-5)


@case("distillation_loss", "a batch mean, not a sum: the same rows twice give the same loss")
def _(fn):
    g = torch.Generator().manual_seed(1)
    w, t = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    close(fn(torch.cat([w, w]), torch.cat([t, t]), 4.0), fn(w, t, 4.0), "loss of the doubled batch")


@case("distillation_loss", "its gradient: d loss / d w = T (softmax(w/T) - softmax(t/T)) / B, as tests/test_simfle.py checks")
def _(fn):
    g = torch.Generator().manual_seed(2)
    w, t, T = torch.randn(5, 8, generator=g).requires_grad_(), torch.randn(5, 8, generator=g), 4.0
    fn(w, t, T).backward()
    close(w.grad, T * (torch.softmax(w.detach() / T, 1) - torch.softmax(t / T, 1)) / 5, "the gradient w.r.t. w", atol=1e-6)


# ----------------------------------------------------------------------------- 6. simclr_loss (NT-Xent, the GFL that learns)


def nt_xent_by_the_formula(z1, z2, temperature):
    """NT-Xent written out view by view, with Python loops: the reference the cases compare with."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n, B = len(z), len(z1)
    total = 0.0
    for i in range(n):
        partner = (i + B) % n
        others = [math.exp(float(z[i] @ z[k]) / temperature) for k in range(n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[partner]) / temperature) / sum(others))
    return total / n


@case("simclr_loss", "by hand: views e1, e2 | e1, e2 at T = 1 -> log(1 + 2/e) = 0.551445 (self-pairs left out)")
def _(fn):
    e = torch.eye(2)
    got = fn(e, e.clone(), 1.0)
    hint = ""
    if math.isclose(float(got), math.log(2 + 2 / math.e), rel_tol=1e-4):
        hint = " (you got log(2 + 2/e): each view counted itself among the candidates; mask the diagonal with -inf)"
    close(got, math.log(1 + 2 / math.e), "simclr_loss(e, e, 1)" + hint, atol=1e-5)


@case("simclr_loss", "random views, T = 0.5: the mean over all 2B views of -log(exp(s_i,partner / T) / sum_k!=i exp(s_ik / T))")
def _(fn):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    close(fn(z1, z2, 0.5), nt_xent_by_the_formula(z1, z2, 0.5), "simclr_loss(z1, z2, 0.5)", atol=1e-5)


@case("simclr_loss", "view i of z1 has view i of z2 as its partner, and the other way round: swapping z1 and z2 "
                     "changes nothing, shuffling z2 alone does")
def _(fn):
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(5, 8, generator=g)
    z2 = z1 + 0.1 * torch.randn(5, 8, generator=g)  # each view close to its partner: the loss is small
    close(fn(z2, z1, 0.2), fn(z1, z2, 0.2), "simclr_loss(z2, z1) against simclr_loss(z1, z2)", atol=1e-5)
    close(fn(z1, z2, 0.2), nt_xent_by_the_formula(z1, z2, 0.2), "simclr_loss of matched pairs", atol=1e-5)
    close(fn(z1, z2.roll(1, 0), 0.2), nt_xent_by_the_formula(z1, z2.roll(1, 0), 0.2),
          "simclr_loss with z2 shuffled (partners no longer close)", atol=1e-5)


@case("simclr_loss", "cosine similarities: the loss does not change when a view is scaled (normalise each row)")
def _(fn):
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    scale = torch.tensor([[0.1], [1.0], [3.0], [10.0]])
    close(fn(z1 * scale, z2 * scale.flip(0), 0.5), nt_xent_by_the_formula(z1, z2, 0.5), "simclr_loss of scaled views",
          atol=1e-5)


@case("simclr_loss", "a gradient flows back to both views")
def _(fn):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(4, 8, generator=g).requires_grad_(), torch.randn(4, 8, generator=g).requires_grad_()
    fn(z1, z2, 0.5).backward()
    assert z1.grad is not None and z2.grad is not None, "no gradient reached one of the views"
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0, \
        "the gradient is zero or not finite"


# ----------------------------------------------------------------------------- the model's pieces, on any device

# inputs on PyTorch's "meta" device (shapes without data): a tensor made without device=... lands on the CPU and
# mixing it in fails at once, as it would on Colab's GPU once the notebook's model runs your function
ON_ANOTHER_DEVICE = {
    "keep_top_patches": lambda: (torch.rand(2, 49, device="meta"), 12),
    "grouping_loss": lambda: (torch.rand(64, 64, device="meta"), 4),
    "distillation_loss": lambda: (torch.rand(3, 8, device="meta"), torch.rand(3, 8, device="meta"), 4.0),
    "norm_pix_targets": lambda: (torch.rand(2, 3, 32, 32, device="meta"), 16),
    "simclr_loss": lambda: (torch.rand(4, 8, device="meta"), torch.rand(4, 8, device="meta"), 0.1),
}


def on_another_device(inputs):
    def test(fn):
        out = fn(*inputs())
        for t in out if isinstance(out, tuple) else (out,):
            assert t.device.type == "meta", f"an output is on {t.device}, not on the inputs' device"
    return test


for _name, _inputs in ON_ANOTHER_DEVICE.items():
    case(_name, "runs where its inputs are (a GPU on Colab): every tensor it makes needs device=<an input>.device")(
        on_another_device(_inputs))


# ----------------------------------------------------------------------------- running the cases

# simfle.py's own versions of the pieces the exercises ask for, as imported: `use` puts a student's function in their
# place and back, and a student's function is compared with these, never with what `use` put there
LIBRARY = {name: getattr(simfle, name) for name in CASES if hasattr(simfle, name)}


def failures(fn, name=None):
    """Run the cases of the exercise `name` (default: fn's name) on fn -> [(case, why it failed)]; [] = all pass."""
    name = name or fn.__name__
    if name not in CASES:
        raise KeyError(f"no exercise named {name!r}; the exercises are {', '.join(CASES)}")
    if uses_the_library(fn, name):
        return [("your own code", f"it calls the project's own {name} (simfle.py): write the computation itself")]
    failed = []
    for what, test in CASES[name]:
        try:
            test(fn)
        except NotImplementedError:
            return [("not implemented yet", "the function still raises NotImplementedError")]
        except AssertionError as e:
            failed.append((what, str(e)))
        except Exception as e:  # a crash is a failure too, shown with its type
            failed.append((what, f"{type(e).__name__}: {e}"))
    return failed


def uses_the_library(fn, name):
    """Whether fn is simfle.py's own `name`, or its body calls it (simfle.name(...), x.name(...)): a checker that
    compares with the project would pass it without the student writing anything."""
    library = LIBRARY.get(name)  # None for ema_update, which simfle.py has no function of
    if fn is library:
        return True
    # a name of fn's module bound to the library function (from simfle import simclr_loss as f), in fn or in a
    # function defined inside it
    codes, names = [getattr(fn, "__code__", None)], set()
    while codes:
        code = codes.pop()
        if code is not None:
            names |= set(code.co_names)
            codes += [c for c in code.co_consts if inspect.iscode(c)]
    if library is not None and any(getattr(fn, "__globals__", {}).get(n) is library for n in names):
        return True
    tree = source_tree(fn)
    if tree is None:  # no source to read: run the cases
        return False
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == name
               for n in ast.walk(tree))


def source_tree(fn):
    """fn's source, parsed; None where there is none to read (a built-in, a lambda typed at a prompt)."""
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None


def check(fn, name=None):
    """Print PASS, or each failing case and why, for the exercise `name` (default: fn's name). -> whether it passed"""
    name = name or fn.__name__
    failed = failures(fn, name)
    if not failed:
        print(f"PASS {name}: all {len(CASES[name])} cases")
    elif failed[0][0] == "not implemented yet":
        print(f"NOT DONE {name}: not implemented yet. Fill in the cell above, run it, then run this cell again.")
    else:
        print(f"FAIL {name}: {len(failed)} of {len(CASES[name])} cases")
        for what, why in failed:
            print(f"  case: {what}\n    {why}")
    return not failed


def is_stub(fn):
    """Whether fn's body (its docstring aside) only raises NotImplementedError."""
    tree = source_tree(fn)
    if tree is None or len(tree.body) != 1:
        return False
    body = [n for n in tree.body[0].body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Raise) and "NotImplementedError" in ast.unparse(body[0])


def use(fn, name=None):
    """check(fn), then: when it passes, fn takes the place of simfle.py's piece of the same name (simfle.<name>,
    which the model calls), so that the cells below run yours; when it does not, simfle.py's own goes back there.
    -> fn when it passed, else None (ema_update is not a function of simfle.py: the notebook calls what this returns)
    """
    name = name or fn.__name__
    passed = check(fn, name)
    if name in LIBRARY:
        setattr(simfle, name, fn if passed else LIBRARY[name])
        whose = f"your {name}" if passed else f"simfle.py's own {name} (yours once this checker passes)"
        if not passed and is_stub(LIBRARY[name]):  # a copy built with --stub-model: simfle.py's is yours to write
            whose = f"simfle.py's {name}, a stub too: the cells that need it stop until this checker passes"
        print(f"  from here on the model runs {whose}")
    else:
        whose = f"your {name}" if passed else "simfle.py's own code in its place (yours once this checker passes)"
        print(f"  from here on the notebook runs {whose}")
    return fn if passed else None


# ----------------------------------------------------------------------------- measurement questions

# Expected answers after the notebook's 30 steps of 16 faces, from section 7's log. Measured once with the notebook's
# code for the training seeds 0, 1 and 2 (model initialisation and batches; the notebook's own run is seed 0; fp32,
# one CPU thread): grouping_share 0.9965 / 0.9970 / 0.9966, grouping_fall 0.658 / 0.708 / 0.680, backbone_share
# 0.0022 / 0.0018 / 0.0021. Each range holds all three with a margin: it says what to expect, the grade compares
# with REFERENCE.
EXPECTED = {
    "grouping_share": (0.99, 1.0),     # beta*l_g^2 / total at step 30
    "grouping_fall": (0.6, 0.85),      # l_g(30) / l_g(1)
    "backbone_share": (0.0005, 0.005), # (L_s + alpha*L_d) / total at step 30
}

# What the log itself gives for each question, and the answers of its usual misreadings, each with a hint. A number
# graded only against its range would pass a misreading that happens to fall inside it, or any number typed in.
REFERENCE = {
    "grouping_share": lambda h: h[-1]["beta*l_g^2"] / h[-1]["total"],
    "grouping_fall": lambda h: h[-1]["l_g"] / h[0]["l_g"],
    "backbone_share": lambda h: (h[-1]["L_s"] + h[-1]["alpha*L_d"]) / h[-1]["total"],
}
MISREADINGS = {
    "grouping_share": [(lambda h: h[0]["beta*l_g^2"] / h[0]["total"], "that is the first step's share: the last one")],
    "grouping_fall": [(lambda h: h[-1]["beta*l_g^2"] / h[0]["beta*l_g^2"], "that is the fall of beta*l_g^2, the square:"
                       " l_g itself"),
                      (lambda h: h[0]["l_g"] / h[-1]["l_g"], "upside down: l_g(last) / l_g(first)")],
    "backbone_share": [(lambda h: (h[-1]["L_s"] + h[-1]["L_r"] + h[-1]["alpha*L_d"]) / h[-1]["total"],
                        "L_r is counted: it trains FaceMAE, and section 6 measured that it does not reach the backbone"),
                       (lambda h: (h[-1]["L_s"] + h[-1]["alpha*L_d"] + h[-1]["beta*l_g^2"]) / h[-1]["total"],
                        "beta*l_g^2 is counted: it trains only the grouping layer (section 6)"),
                       (lambda h: h[-1]["L_s"] / h[-1]["total"], "alpha*L_d is left out: distillation reaches it too")],
}


def agrees(a, b):
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def check_measurement(fn, history):
    """Call your measurement fn(history): PASS when it is what the log gives, else FAIL (with a hint when the number
    is a usual misreading). The expected range says what 30 steps of the notebook's recipe give."""
    name = fn.__name__
    low, high = EXPECTED[name]
    try:
        value = fn(history)
    except NotImplementedError:
        print(f"NOT DONE {name}: not measured yet. Fill in the cell above, run it, then run this cell again.")
        return
    value, reference = float(value), REFERENCE[name](history)
    if agrees(value, reference):
        where = "inside" if low <= value <= high else "outside (your run differs from the notebook's recipe)"
        print(f"PASS {name}: {value:.4g}, {where} the expected range [{low:g}, {high:g}]")
        return
    hint = next((why for misreading, why in MISREADINGS[name] if agrees(value, misreading(history))),
                "not what the log gives: read the question again")
    print(f"FAIL {name}: {value:.4g}; {hint}")
