"""The tutorial's graded exercises (tutorial.ipynb, section 9): every checker in exercises.py passes against
tutorial_solutions.py, fails against the notebook's stubs, and fails against the mistakes students make."""
import importlib.util
import math
import os

import pytest
import torch

import exercises
import simfle
import tutorial_solutions as solutions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stubs():
    """name -> the stub function of each exercise cell of the notebook, as tools/make_tutorial.py builds it."""
    spec = importlib.util.spec_from_file_location("make_tutorial", os.path.join(ROOT, "tools", "make_tutorial.py"))
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    found = {}
    for cell in builder.build().cells:
        if "exercise" in cell.metadata:
            scope = {}
            exec(cell.source, scope)
            found[cell.metadata["exercise"]] = scope[cell.metadata["exercise"]]
    return found


STUBS = stubs()
IMPLEMENT = list(exercises.CASES)   # the "implement it" exercises
MEASURE = list(exercises.EXPECTED)  # the measurement questions


def test_the_notebook_has_the_exercises_and_their_solutions():
    assert len(IMPLEMENT) >= 5 and len(MEASURE) >= 2
    assert set(STUBS) == set(IMPLEMENT) | set(MEASURE)
    assert all(hasattr(solutions, name) for name in STUBS)


@pytest.mark.parametrize("name", IMPLEMENT)
def test_checker_passes_against_the_solution(name, capsys):
    assert exercises.failures(getattr(solutions, name)) == []
    exercises.check(getattr(solutions, name))
    assert capsys.readouterr().out.startswith(f"PASS {name}")


@pytest.mark.parametrize("name", IMPLEMENT)
def test_checker_fails_against_the_stub(name, capsys):
    assert exercises.failures(STUBS[name]) == [("not implemented yet", "the function still raises NotImplementedError")]
    exercises.check(STUBS[name])
    assert capsys.readouterr().out.startswith(f"NOT DONE {name}")


def keep_bottom_patches(scores, num_keep):  # sorts the wrong way
    return solutions.keep_top_patches(-scores, num_keep)


def keep_without_restore(scores, num_keep):  # ids_restore is the shuffle itself, not its inverse
    ids_keep, mask, _ = solutions.keep_top_patches(scores, num_keep)
    return ids_keep, mask, torch.argsort(scores, dim=1, descending=True)


def keep_mask_inverted(scores, num_keep):  # 1 = visible instead of 1 = masked
    ids_keep, mask, ids_restore = solutions.keep_top_patches(scores, num_keep)
    return ids_keep, 1 - mask, ids_restore


def grouping_without_scale(sim, groups):  # forgets the (C/512)^2
    return solutions.grouping_loss(sim, groups) * (sim.shape[0] / 512) ** 2


def grouping_identity_target(sim, groups):  # T = identity instead of G blocks of ones
    return 0.001 * ((sim - torch.eye(len(sim))) ** 2).sum() / (len(sim) / 512) ** 2


def ema_swapped(online, target, m):  # m and 1 - m swapped
    solutions.ema_update(online, target, 1 - m)


def ema_with_grad(online, target, m):  # in place, but outside torch.no_grad: autograd records the update
    for po, pt in zip(online.parameters(), target.parameters()):
        pt.mul_(m).add_(po, alpha=1 - m)


def distill_reversed(w, t, temperature):  # KL(student || teacher)
    return solutions.distillation_loss(t, w, temperature)


def distill_without_t2(w, t, temperature):
    return solutions.distillation_loss(w, t, temperature) / temperature ** 2


def distill_summed(w, t, temperature):  # a sum over the batch
    return solutions.distillation_loss(w, t, temperature) * len(w)


def norm_pix_std(imgs, p):  # divides by std + 1e-6: the 1e-6 outside the root
    patches = simfle.patchify(imgs, p)
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
    return (patches - mean) / (var.sqrt() + 1e-6), mean, var


def norm_pix_no_patchify(imgs, p):  # flattens channels first: not MAE's patch order
    B, C, H, W = imgs.shape
    t = imgs.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), -1)
    mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
    return (t - mean) / (var + 1e-6) ** 0.5, mean, var


@pytest.mark.parametrize("name, wrong", [
    ("keep_top_patches", keep_bottom_patches), ("keep_top_patches", keep_without_restore),
    ("keep_top_patches", keep_mask_inverted),
    ("grouping_loss", grouping_without_scale), ("grouping_loss", grouping_identity_target),
    ("ema_update", ema_swapped), ("ema_update", ema_with_grad),
    ("distillation_loss", distill_reversed), ("distillation_loss", distill_without_t2),
    ("distillation_loss", distill_summed),
    ("norm_pix_targets", norm_pix_std), ("norm_pix_targets", norm_pix_no_patchify),
])
def test_checker_fails_against_a_plausible_mistake(name, wrong, capsys):
    failed = exercises.failures(wrong, name)
    assert failed and failed[0][0] != "not implemented yet"
    exercises.check(wrong, name)
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL {name}") and "case: " in out  # the failing case is shown


def fake_history(steps=60):
    """A log shaped like section 7's: beta*l_g^2 = 0.03 * l_g^2, falling l_g."""
    log = []
    for k in range(steps):
        l_g = 254 - k
        terms = {"L_s": 2.0, "L_r": 1.0, "alpha*L_d": 0.02, "beta*l_g^2": 0.03 * l_g ** 2, "l_g": l_g}
        log.append({**terms, "total": sum(v for n, v in terms.items() if n != "l_g")})
    return log


def test_measurement_solutions_compute_what_they_ask():
    h = fake_history()
    assert solutions.grouping_share(h) == pytest.approx(0.03 * 195 ** 2 / (3.02 + 0.03 * 195 ** 2))
    assert solutions.grouping_fall(h) == pytest.approx(195 / 254)
    assert solutions.backbone_share(h) == pytest.approx(2.02 / (3.02 + 0.03 * 195 ** 2))


@pytest.mark.parametrize("name", MEASURE)
def test_measurement_checker_grades_against_the_log_not_the_range(name, capsys):
    exercises.check_measurement(STUBS[name], [])
    assert capsys.readouterr().out.startswith(f"NOT DONE {name}")
    h = fake_history()
    exercises.check_measurement(getattr(solutions, name), h)
    assert capsys.readouterr().out.startswith(f"PASS {name}")
    low, high = exercises.EXPECTED[name]
    assert math.isfinite(low) and low < high

    def typed_in(history):  # a number typed in, inside the range, is not an answer
        return (low + high) / 2
    typed_in.__name__ = name
    exercises.check_measurement(typed_in, h)
    assert capsys.readouterr().out.startswith(f"FAIL {name}")


def test_measurement_checker_names_the_usual_misreadings(capsys):
    h = fake_history()
    last = h[-1]

    def backbone_share(history):  # L_r counted: inside the range on the notebook's log, still wrong
        return (last["L_s"] + last["L_r"] + last["alpha*L_d"]) / last["total"]
    exercises.check_measurement(backbone_share, h)
    out = capsys.readouterr().out
    assert out.startswith("FAIL backbone_share") and "L_r" in out

    def grouping_share(history):  # the first step's share instead of the last
        return history[0]["beta*l_g^2"] / history[0]["total"]
    exercises.check_measurement(grouping_share, h)
    out = capsys.readouterr().out
    assert out.startswith("FAIL grouping_share") and "first step" in out


def test_measurement_pass_outside_the_range_says_the_run_differs(capsys):
    h = fake_history()
    h[-1]["l_g"] = h[0]["l_g"]  # l_g did not fall at all: a run unlike the notebook's
    exercises.check_measurement(solutions.grouping_fall, h)
    out = capsys.readouterr().out
    assert out.startswith("PASS grouping_fall") and "outside" in out


@pytest.mark.parametrize("name", [n for n in IMPLEMENT if hasattr(simfle, n)])  # ema_update is a method there
def test_calling_the_project_itself_is_not_an_answer(name, tmp_path):
    answer = [("your own code", f"it calls the project's own {name} (simfle.py): write the computation itself")]
    assert exercises.failures(getattr(simfle, name), name) == answer
    # a wrapper written in a cell or a file: the source is read, as Jupyter keeps each cell's
    path = tmp_path / f"wrapper_{name}.py"
    path.write_text(f"import simfle\n\n\ndef {name}(*args):\n    return simfle.{name}(*args)\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert exercises.failures(getattr(module, name), name) == answer
    assert exercises.failures(getattr(solutions, name), name) == []  # the solutions call simfle's helpers, not it
