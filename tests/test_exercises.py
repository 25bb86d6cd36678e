"""The tutorial's graded exercises (tutorial.ipynb, beside the sections they belong to): every checker in
tutorial/exercises.py passes against tutorial/solutions.py, fails against the notebook's stubs, and fails against the
mistakes students make. In a student copy (python tutorial/make.py --student DIR) the solutions file is absent: the tests that need it skip."""
import importlib.util
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tutorial"))
import exercises  # noqa: E402
import simfle  # noqa: E402

SOLUTIONS = os.path.join(ROOT, "tutorial", "solutions.py")
solutions = None
if os.path.exists(SOLUTIONS):
    import solutions  # noqa: E402


def needs_solutions():
    if solutions is None:
        pytest.skip("tutorial/solutions.py is absent (a student copy): the checks against the answers are the "
                    "instructor's")


def builder():
    """tutorial/make.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("make_tutorial", os.path.join(ROOT, "tutorial", "make.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stubs():
    """name -> the stub function of each exercise cell of the notebook, as tutorial/make.py builds it."""
    found = {}
    for cell in builder().build().cells:
        if "exercise" in cell.metadata:
            scope = {}
            exec(cell.source, scope)
            found[cell.metadata["exercise"]] = scope[cell.metadata["exercise"]]
    return found


STUBS = stubs()
IMPLEMENT = list(exercises.CASES)   # the "implement it" exercises
MEASURE = list(exercises.EXPECTED)  # the measurement questions


def test_the_notebook_has_the_exercises():
    assert len(IMPLEMENT) == 6 and "simclr_loss" in IMPLEMENT and len(MEASURE) >= 2
    assert set(STUBS) == set(IMPLEMENT) | set(MEASURE)


def test_every_exercise_has_its_solution():
    needs_solutions()
    assert all(hasattr(solutions, name) for name in STUBS)


def test_the_notebook_states_the_expected_ranges_of_the_checker():
    """The measurement questions' ranges are written in the notebook's text: they must be exercises.EXPECTED's."""
    text = "\n".join(c.source for c in builder().build().cells if c.cell_type == "markdown")
    for name, (low, high) in exercises.EXPECTED.items():
        assert f"Expected: **{low:g} to {high:g}**" in text, f"{name}: the notebook does not state {low:g} to {high:g}"


@pytest.mark.parametrize("name", IMPLEMENT)
def test_checker_passes_against_the_solution(name, capsys):
    needs_solutions()
    assert exercises.failures(getattr(solutions, name)) == []
    exercises.check(getattr(solutions, name))
    assert capsys.readouterr().out.startswith(f"PASS {name}")


@pytest.mark.parametrize("name", IMPLEMENT)
def test_checker_fails_against_the_stub(name, capsys):
    assert exercises.failures(STUBS[name]) == [("not implemented yet", "the function still raises NotImplementedError")]
    exercises.check(STUBS[name])
    assert capsys.readouterr().out.startswith(f"NOT DONE {name}")


def nt_xent(z1, z2, temperature, mask_diagonal=True, partner_shift=True, normalise=True, both_ways=True,
            on_inputs_device=True):
    """NT-Xent with one of the usual mistakes switched on (all off: the right loss)."""
    z = torch.cat([z1, z2])
    z = torch.nn.functional.normalize(z, dim=1) if normalise else z
    logits = z @ z.T / temperature
    device = z.device if on_inputs_device else "cpu"
    if mask_diagonal:
        logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=device), float("-inf"))
    B = len(z1)
    partner = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]) if partner_shift else torch.arange(B).repeat(2)
    losses = torch.nn.functional.cross_entropy(logits, partner.to(device), reduction="none")
    return losses.mean() if both_ways else losses[:B].mean()


def simclr_right(z1, z2, temperature):  # the test's own NT-Xent: the checker passes it
    return nt_xent(z1, z2, temperature)


def simclr_cpu_only(z1, z2, temperature):  # right on the CPU; its mask and labels stay there on a GPU
    return nt_xent(z1, z2, temperature, on_inputs_device=False)


def simclr_diagonal_kept(z1, z2, temperature):  # each view competes with itself
    return nt_xent(z1, z2, temperature, mask_diagonal=False)


def simclr_diagonal_zeroed(z1, z2, temperature):  # the diagonal set to 0, not -inf: still in the softmax
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / temperature) * (1 - torch.eye(len(z)))
    B = len(z1)
    return torch.nn.functional.cross_entropy(logits, torch.cat([torch.arange(B, 2 * B), torch.arange(B)]))


def simclr_wrong_partner(z1, z2, temperature):  # partner index i instead of i + B
    return nt_xent(z1, z2, temperature, partner_shift=False)


def simclr_not_normalised(z1, z2, temperature):  # dot products, not cosines
    return nt_xent(z1, z2, temperature, normalise=False)


def simclr_one_way(z1, z2, temperature):  # only view 1 picks its partner
    return nt_xent(z1, z2, temperature, both_ways=False)


def simclr_times_temperature(z1, z2, temperature):  # multiplies by T instead of dividing
    return nt_xent(z1, z2, 1 / temperature)


def test_checker_passes_a_right_answer_written_another_way():
    assert exercises.failures(simclr_right, "simclr_loss") == []


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
    ("simclr_loss", simclr_diagonal_kept), ("simclr_loss", simclr_diagonal_zeroed),
    ("simclr_loss", simclr_wrong_partner), ("simclr_loss", simclr_not_normalised), ("simclr_loss", simclr_one_way),
    ("simclr_loss", simclr_times_temperature), ("simclr_loss", simclr_cpu_only),
])
def test_checker_fails_against_a_plausible_mistake(name, wrong, capsys):
    if wrong.__name__.startswith(("keep_", "grouping_", "ema_", "distill_")):  # built on the solutions
        needs_solutions()
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
    needs_solutions()
    h = fake_history()
    assert solutions.grouping_share(h) == pytest.approx(0.03 * 195 ** 2 / (3.02 + 0.03 * 195 ** 2))
    assert solutions.grouping_fall(h) == pytest.approx(195 / 254)
    assert solutions.backbone_share(h) == pytest.approx(2.02 / (3.02 + 0.03 * 195 ** 2))


@pytest.mark.parametrize("name", MEASURE)
def test_measurement_checker_grades_against_the_log_not_the_range(name, capsys):
    needs_solutions()
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
    needs_solutions()
    h = fake_history()
    h[-1]["l_g"] = h[0]["l_g"]  # l_g did not fall at all: a run unlike the notebook's
    exercises.check_measurement(solutions.grouping_fall, h)
    out = capsys.readouterr().out
    assert out.startswith("PASS grouping_fall") and "outside" in out


def module_from(path, source):
    """The module a student's file (or cell) with this source makes, imported from path."""
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [n for n in IMPLEMENT if hasattr(simfle, n)])  # ema_update is a method there
def test_calling_the_project_itself_is_not_an_answer(name, tmp_path):
    answer = [("your own code", f"it calls the project's own {name} (simfle.py): write the computation itself")]
    assert exercises.failures(getattr(simfle, name), name) == answer
    # a wrapper written in a cell or a file: the source is read, as Jupyter keeps each cell's
    module = module_from(tmp_path / f"wrapper_{name}.py",
                         f"import simfle\n\n\ndef {name}(*args):\n    return simfle.{name}(*args)\n")
    assert exercises.failures(getattr(module, name), name) == answer
    # under another name: from simfle import simclr_loss as f, called by the student's function
    module = module_from(tmp_path / f"alias_{name}.py",
                         f"from simfle import {name} as f\n\n\ndef {name}(*args):\n    return f(*args)\n")
    assert exercises.failures(getattr(module, name), name) == answer
    if solutions is not None:
        assert exercises.failures(getattr(solutions, name), name) == []  # the solutions call simfle's helpers, not it


def test_make_help_works_without_the_notebook_packages():
    """python tutorial/make.py --help prints its usage where nbformat and jupytext are not installed."""
    import subprocess
    code = ("import runpy, sys; sys.modules['nbformat'] = None; sys.modules['jupytext'] = None; "
            "sys.argv = ['make.py', '--help']; runpy.run_path('tutorial/make.py', run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "usage: make.py" in run.stdout, run.stderr[-2000:]
    code = code.replace("'--help'", "'--check'")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "needs nbformat" in run.stderr and "Traceback" not in run.stderr


def test_the_model_pieces_are_the_ones_make_stubs():
    """exercises.LIBRARY (what `use` swaps in simfle.py) and make.py's MODEL_EXERCISES (what --stub-model stubs) name
    the same functions of simfle.py."""
    assert set(exercises.LIBRARY) == set(builder().MODEL_EXERCISES) == {n for n in IMPLEMENT if hasattr(simfle, n)}


@pytest.mark.parametrize("name", [n for n in IMPLEMENT if hasattr(simfle, n)])
def test_use_puts_a_passing_answer_in_the_model_and_takes_anything_else_out(name, monkeypatch, capsys):
    """A passing answer becomes simfle.<name> (the model calls it); a stub or a wrong answer puts simfle.py's own back;
    and once an answer is in place, its checker still grades it, not the function it replaced."""
    needs_solutions()
    own = exercises.LIBRARY[name]
    monkeypatch.setattr(simfle, name, own)  # put back after the test, whatever `use` does
    answer = getattr(solutions, name)
    assert exercises.use(answer) is answer and getattr(simfle, name) is answer
    out = capsys.readouterr().out
    assert out.startswith(f"PASS {name}") and f"from here on the model runs your {name}" in out
    assert exercises.failures(answer) == []  # graded against simfle.py's own, not against itself
    assert exercises.failures(getattr(simfle, name), name) == []
    assert exercises.use(STUBS[name]) is None and getattr(simfle, name) is own
    out = capsys.readouterr().out
    assert out.startswith(f"NOT DONE {name}") and f"the model runs simfle.py's own {name}" in out
    assert out.count("NOT DONE") == 1  # the notebook's test counts one per exercise
    exercises.use(answer)
    assert getattr(simfle, name) is answer
    capsys.readouterr()

    def wrong(*args):
        raise RuntimeError("a bug")
    assert exercises.use(wrong, name) is None and getattr(simfle, name) is own
    assert capsys.readouterr().out.startswith(f"FAIL {name}")


def test_the_model_runs_the_answer_that_use_put_in_place(monkeypatch):
    """What the notebook relies on: after exercises.use, a SimFLE forward calls the student's functions."""
    needs_solutions()
    calls = []
    for name in exercises.LIBRARY:
        monkeypatch.setattr(simfle, name, exercises.LIBRARY[name])

        def spy(*args, _answer=getattr(solutions, name), _name=name):
            calls.append(_name)
            return _answer(*args)
        spy.__name__ = name
        monkeypatch.setattr(exercises, "failures", lambda fn, name=None: [])  # the spy is graded as passing
        exercises.use(spy)
    torch.manual_seed(0)
    for gfl in ("byol", "simclr"):
        model = simfle.SimFLE(simfle.SimFLEConfig.preset("tiny", gfl=gfl, width=0.25)).train()
        x = torch.rand(2, 3, 112, 112)
        loss, _ = model(x, torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
        assert torch.isfinite(loss)
    assert set(calls) == set(exercises.LIBRARY), sorted(set(calls))


def test_use_returns_ema_update_for_the_notebook_to_call(capsys):
    """ema_update is not a function of simfle.py: `use` grades it and hands it back (None until it passes)."""
    needs_solutions()
    assert exercises.use(solutions.ema_update) is solutions.ema_update
    assert "from here on the notebook runs your ema_update" in capsys.readouterr().out
    assert exercises.use(STUBS["ema_update"]) is None
    out = capsys.readouterr().out
    assert out.count("NOT DONE") == 1 and "from here on the notebook runs simfle.py's own code" in out


def test_use_says_when_simfle_py_holds_a_stub_too(tmp_path, monkeypatch, capsys):
    """In a copy built with --stub-model, simfle.py's piece is a stub: a stub or a failing answer leaves it there, and
    use says that the cells needing it stop until the checker passes."""
    stubbed = builder().stub_functions(open(os.path.join(ROOT, "simfle.py")).read(), ["grouping_loss"], "an exercise")
    module = module_from(tmp_path / "stubbed_simfle.py", stubbed)
    cell = module_from(tmp_path / "cell.py", 'def grouping_loss(sim, groups):\n    """S, G -> l_g."""\n'
                                              '    raise NotImplementedError  # your code here\n')
    assert exercises.is_stub(module.grouping_loss) and exercises.is_stub(cell.grouping_loss)
    assert not exercises.is_stub(exercises.LIBRARY["grouping_loss"])
    monkeypatch.setitem(exercises.LIBRARY, "grouping_loss", module.grouping_loss)
    monkeypatch.setattr(simfle, "grouping_loss", simfle.grouping_loss)
    assert exercises.use(STUBS["grouping_loss"]) is None and simfle.grouping_loss is module.grouping_loss
    assert "a stub too: the cells that need it stop until this checker passes" in capsys.readouterr().out
