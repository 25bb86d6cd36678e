"""tutorial.ipynb: it runs top to bottom in a real Jupyter kernel, as the student copy without the answers (every
checker says NOT DONE) and then with the answers (every checker passes); its committed outputs hold every section's
picture in legible type; its text agrees with the numbers its cells print; it calls the project's code instead of
copying it; its source is tutorial/tutorial.py (jupytext's percent format)."""
import ast
import importlib.util
import os
import re
import subprocess
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("jupytext")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "tutorial.ipynb")
SOLUTIONS = os.path.join(ROOT, "tutorial", "solutions.py")
# the components the tutorial walks through, one section each, each with a picture; the exercises have none
SECTIONS = ["1. The data", "2. The backbone", "3. Channel grouping", "4. Semantic masking", "5. FaceMAE",
            "6. The GFL loss", "7. A short pretraining run", "8. BYOL or SimCLR", "9. Probing the trunk",
            "10. The quick start", "11. Exercises", "12. Which loss trains the ResNet", "13. What a longer run shows",
            "14. Train it yourself on real faces"]


def read():
    return nbformat.read(NOTEBOOK, as_version=4)


def builder(root=ROOT):
    """tutorial/make.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("make_tutorial", os.path.join(root, "tutorial", "make.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stdout(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")


def python_of(source):
    """A code cell's source as plain Python: IPython's `!command` lines become `pass`."""
    return "\n".join(re.sub(r"^(\s*)!.*", r"\1pass", line) for line in source.splitlines())


def sections(nb):
    """Heading ("1. The data: ...") -> the code cells under it, up to the next '## ' heading."""
    out, current = {}, None
    for cell in nb.cells:
        heading = re.match(r"## (.+)", cell.source) if cell.cell_type == "markdown" else None
        if heading:
            current = heading.group(1)
            out[current] = []
        elif current is not None and cell.cell_type == "code":
            out[current].append(cell)
    return out


def pictures(cells):
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


def check_outputs(nb):
    """Every section but the exercises draws a picture; no cell failed; one run, top to bottom."""
    found = sections(nb)
    assert [t.split(" ")[0] for t in found] == [name.split(" ")[0] for name in SECTIONS], list(found)
    for name in SECTIONS:
        title = next((t for t in found if t.startswith(name)), None)
        assert title is not None, f"no section '## {name}...' in the notebook"
        if name.startswith("11."):
            continue
        assert pictures(found[title]) > 0, f"section '{title}' has no picture (image/png output)"
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{errors[0].ename}: {errors[0].evalue}"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "outputs are not from one clean run"
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert "Traceback" not in text
    assert max(len(o.get("text", "")) for c in code for o in c.outputs) < 3000, "a cell prints a long log"


def test_committed_notebook_shows_every_picture_without_running():
    nb = read()
    check_outputs(nb)
    assert pictures(nb.cells) >= 18
    # as shipped, the exercises are stubs: every checker says so, none passes or fails
    stubs = sum("exercise" in c.metadata for c in nb.cells)
    text = stdout(nb)
    assert text.count("NOT DONE") == stubs == 6 + 3 and not re.search(r"^(PASS|FAIL|OUTSIDE) ", text, re.M)
    check_claims(text)  # and its text agrees with the numbers its cells printed
    if not os.path.exists(SOLUTIONS):
        return  # a student copy's tests read its own run (a generated csv in section 14), not the shipped one
    # section 14 ran on FER2013 for the shipped outputs: its prose quotes that run
    assert "verdict on fer2013 val (3589 images)" in text, "the shipped notebook ran section 14 on FER2013"
    rows = re.findall(r"^  (pretrained|random    ) trunk: linear ([\d.]+) % \(lr [\d.]+\), k-NN +([\d.]+) %", text,
                      re.M)
    printed = {name: (float(lin), float(knn)) for name, lin, knn in rows}  # only section 14 prints this verdict
    (minutes,) = re.findall(r"^4 epochs and the verdict in ([\d.]+) min", text, re.M)
    prose = " ".join(" ".join(c.source for c in nb.cells if c.cell_type == "markdown").split())
    (p_lin, p_knn), (r_lin, r_knn) = printed["pretrained"], printed["random    "]
    assert f"{p_lin:.1f} % against {r_lin:.1f} % on the linear probe, {p_knn:.1f} % against {r_knn:.1f} % by k-NN" in prose
    assert p_lin > r_lin and p_knn > r_knn, "the prose says the trunk is above the random one"
    assert f"**{minutes} minutes on 2 CPU cores**" in prose and f"{minutes} of them section 14's" in prose


def test_committed_notebook_is_what_its_source_builds():
    """tutorial/tutorial.py is the source: the committed cells must match it (python tutorial/make.py --execute)."""
    make = builder()
    assert make.differences(make.build(), read()) == [], "tutorial.ipynb differs from tutorial/tutorial.py: " \
        "python tutorial/make.py (prose) or python tutorial/make.py --execute (code)"
    assert read().metadata["jupytext"]["formats"] == "ipynb,tutorial//py:percent", "not paired with its source"
    assert not os.path.exists(os.path.join(ROOT, "tools", "make_tutorial.py")), "the old builder is back"


def test_keep_outputs_is_for_prose_edits_only():
    """The committed outputs carry over only while every code cell is unchanged; cell ids are stable."""
    make = builder()
    nb, committed = make.build(), read()
    assert [c.id for c in nb.cells] == [c.id for c in make.build().cells] == [c.id for c in committed.cells]
    md = next(c for c in nb.cells if c.cell_type == "markdown")
    md.source += "\n\nA new sentence."
    make.keep_outputs(nb, committed)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.outputs for c in code] == [c.outputs for c in committed.cells if c.cell_type == "code"]
    changed = make.build()
    next(c for c in changed.cells if c.cell_type == "code").source += "\nx = 1"
    with pytest.raises(SystemExit, match="code cell 1 differs"):
        make.keep_outputs(changed, committed)


def test_notebook_calls_the_project_instead_of_copying_it():
    nb = read()
    # the exercise cells are stubs the student fills in (the same names as simfle.py's pieces): only a stub there
    stubs = [c for c in nb.cells if "exercise" in c.metadata]
    assert len(stubs) == 6 + 3
    for cell in stubs:
        (function,) = ast.parse(cell.source).body
        assert function.name == cell.metadata["exercise"]
        assert ast.unparse(function.body[-1]) == "raise NotImplementedError", f"{function.name}: not a stub"
    code = "\n".join(python_of(c.source) for c in nb.cells if c.cell_type == "code" and "exercise" not in c.metadata)
    for line in ("import data", "import eval as evaluate", "import simfle", "from simfle import SimFLE, SimFLEConfig"):
        assert re.search(rf"^{re.escape(line)}\b", code, re.M), f"the notebook should `{line}`"
    tree = ast.parse(code)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)], "the notebook defines a class"
    # no layer is built by hand: every module comes from simfle.py (an nn.Linear, nn.Conv2d, ... would be model code)
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    layers = sorted(c for c in calls if re.match(r"(torch\.)?nn\.([A-Za-z_]+\.)*[A-Z]", c))
    assert not layers, f"the notebook builds layers itself: {', '.join(layers)}"
    assert "gradient_shares(variant, origin, view1, view2)" in code, "section 12 calls gradient_shares"
    # no function of the project's files is re-defined in it
    project = set()
    for name in ("simfle.py", "data.py", "eval.py", "train.py"):
        with open(os.path.join(ROOT, name)) as f:
            project |= {n.name for n in ast.walk(ast.parse(f.read())) if isinstance(n, ast.FunctionDef)}
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not defined & project, f"the notebook re-defines {sorted(defined & project)}"


def test_solutions_are_named_only_where_instructors_look():
    """The student-facing cells never name the answers' file; the instructor cells do, and the student copy drops them."""
    if not os.path.exists(SOLUTIONS):
        pytest.skip("a student copy: no instructor cells, no tutorial/solutions.py")
    make = builder()
    for cell in make.build(student=True).cells:
        assert not re.search(r"solutions\.py|tutorial_solutions", cell.source), \
            f"a student cell names the solutions' file: {cell.source[:80]!r}"
    instructor = [c for c in make.build().cells if "instructor" in c.metadata.get("tags", [])]
    assert instructor and all("tutorial/solutions.py" in c.source for c in instructor)


def test_first_cell_sets_the_repository_once_and_picks_the_device():
    nb = read()
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    first = code[0]
    assert len(re.findall(r'^REPO_URL = "[^"]*"', first, re.M)) == 1, "one place to set REPO_URL"
    assert "THE ONE PLACE TO EDIT" in first
    assert "google.colab" in first and "git\", \"clone" in first and 'find_spec("simfle")' in first
    assert "WHAT TO DO" in first, "when REPO_URL is not set, the first cell says plainly what to do"
    assert not any(re.search(r"pip\W+install[^\n]*\btorch", c) for c in code), "never (re)install torch or torchvision"
    assert not any("REPO_URL" in c for c in code[1:]), "REPO_URL is set and read in the first code cell only"
    # one device policy, train.py's: cuda, then mps, then the CPU; every later call passes DEVICE, none "cpu"
    assert 'DEVICE = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"' \
        in first
    later = [c for c in code[1:]]
    assert not any(re.search(r"[(,]\s*\"cpu\"", c) for c in later), "a call passes \"cpu\" instead of DEVICE"
    assert "T4 GPU" in nb.cells[0].source, "the first cell says which Colab runtime to choose"
    quick = next(c for c in code if "train.py" in c and c.lstrip().startswith("QUICK"))
    assert re.search(r"^!\{sys\.executable\} \{REPO\}/train\.py", quick, re.M) and "curves.png" in quick


def test_first_cell_says_what_to_do_when_the_project_is_missing(tmp_path):
    """Run outside the repository with REPO_URL unset, the first cell stops with plain instructions, not a clone."""
    first = next(c for c in read().cells if c.cell_type == "code").source
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", first], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "WHAT TO DO" in run.stdout and "set REPO_URL" in run.stdout, run.stdout + run.stderr
    assert "REPO_URL is not set" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not os.listdir(tmp_path), "it cloned something"


def test_student_copy_has_no_answers_and_can_stub_the_model(tmp_path):
    make = builder()
    make.student(str(tmp_path), stub_model=True)
    assert not os.path.exists(tmp_path / "tutorial" / "solutions.py")
    assert os.path.exists(tmp_path / "tutorial" / "exercises.py") and os.path.exists(tmp_path / "simfle.py")
    student_nb = nbformat.read(str(tmp_path / "tutorial.ipynb"), as_version=4)
    assert not any("instructor" in c.metadata.get("tags", []) for c in student_nb.cells)
    assert make.differences(make.build(student=True, source=str(tmp_path / "tutorial" / "tutorial.py")), student_nb) == []
    assert any(c.outputs for c in student_nb.cells if c.cell_type == "code"), "the committed outputs came along"
    # --stub-model: the exercises' functions raise in the copy's simfle.py, the rest of it is intact
    source = (tmp_path / "simfle.py").read_text()
    tree = ast.parse(source)
    bodies = {n.name: n.body for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in make.MODEL_EXERCISES:
        assert ast.unparse(bodies[name][-1]).startswith("raise NotImplementedError"), name
        assert ast.get_docstring(next(n for n in tree.body if getattr(n, "name", None) == name)), name
    assert "def patchify" in source and "class SimFLE" in source
    # --repo-url: REPO_URL and an Open-in-Colab badge written into the copy, the notebook still its source's
    badge = make.set_repository(str(tmp_path), "https://github.com/a-course/simfle.git", "spring")
    link = "https://colab.research.google.com/github/a-course/simfle/blob/spring/tutorial.ipynb"
    assert link in badge
    student_nb = nbformat.read(str(tmp_path / "tutorial.ipynb"), as_version=4)
    assert make.differences(make.build(student=True, source=str(tmp_path / "tutorial" / "tutorial.py")), student_nb) == []
    assert link in student_nb.cells[0].source and link in (tmp_path / "tutorial" / "README.md").read_text()
    assert 'REPO_URL = "https://github.com/a-course/simfle.git"' in student_nb.cells[1].source
    make.set_repository(str(tmp_path), "https://github.com/a-course/simfle", "main")  # again: replaced, not added
    assert (tmp_path / "tutorial" / "tutorial.py").read_text().count("Open in Colab") == 1
    with pytest.raises(SystemExit, match="GitHub address"):
        make.colab_badge("https://example.org/simfle", "main")


# run in the kernel after the answers: section 14's helpers with the student's simclr_loss, watched by a spy
SECTION_14_WITH_YOUR_LOSS = """
loss_fn, whose = nt_xent_for_training()
calls, own = [], simfle.simclr_loss
def spy(z1, z2, temperature):
    calls.append(len(z1))
    return loss_fn(z1, z2, temperature)
status = train_with_nt_xent(spy, ["--data", "fer2013", "--root", FER2013, "--preset", "tiny", "--width", "0.5",
                                  "--gfl", "simclr", "--use-facemae", "false", "--epochs", "1", "--workers", "0",
                                  "--out", real_run + "-yours", "--overwrite", "--probe", "false", "--knn-samples", "0"])
try:
    refused = train_with_nt_xent(spy, ["--epochs", "-1", "--out", real_run + "-refused"])
except SystemExit as stop:
    refused = stop.code
print(f"section 14: {whose} | called {len(calls)} times | status {status} | refused {refused} | "
      f"restored {simfle.simclr_loss is own}")
"""


def write_fer2013_csv(folder, per_class=(16, 3, 3)):
    """A fer2013.csv in FER2013's own format (emotion, 48x48 grey pixels, Usage), a few random faces of each of the 7
    classes per split -> the folder's path."""
    import numpy as np
    rng = np.random.default_rng(0)
    rows = ["emotion,pixels,Usage"]
    for usage, n in zip(("Training", "PublicTest", "PrivateTest"), per_class):
        rows += [f"{label},{' '.join(map(str, rng.integers(0, 256, 48 * 48)))},{usage}" for label in range(7)
                 for _ in range(n)]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "fer2013.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return str(folder)


def png_dpi(png):
    """The resolution a PNG was written at, from its pHYs chunk (matplotlib writes it), or None."""
    import base64
    import struct
    raw = base64.b64decode(png)
    at = raw.find(b"pHYs")
    if at < 0:
        return None
    per_metre = struct.unpack(">I", raw[at + 4:at + 8])[0]
    return per_metre * 0.0254


def test_figures_are_legible():
    """Every picture at 100 dpi or more, and no text under 8 pt (issue: the confusion matrices at 72 dpi, 6 pt)."""
    nb = read()
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    dpi = re.search(r'"figure\.dpi": (\d+)', code)
    assert dpi and int(dpi.group(1)) >= 100
    sizes = [float(x) for x in re.findall(r'fontsize=(\d+(?:\.\d+)?)', code)]
    sizes += [float(x) for x in re.findall(r'"(?:font\.size|[a-z]+\.(?:title|label)size|legend\.fontsize)": (\d+)', code)]
    assert sizes and min(sizes) >= 8, f"text under 8 pt: {sorted(sizes)[:3]}"
    dpis = [png_dpi(o["data"]["image/png"]) for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if "image/png" in o.get("data", {})]
    assert dpis and all(d is not None and d >= 99.5 for d in dpis), f"pictures under 100 dpi: {dpis}"
    # colour-bar labels short enough for their bars; a figure with a title lays itself out (title and panel titles
    # kept apart); no bar on a log axis (its length would start at an arbitrary edge)
    labels = re.findall(r'(?:colorbar\(.*\)\.set_label|bar\.set_label)\("([^"]*)"', code)
    assert len(labels) >= 5 and max(map(len, labels)) <= 30, f"colour-bar labels longer than their bars: {labels}"
    for cell in (c.source for c in nb.cells if c.cell_type == "code"):
        if "suptitle(" in cell:
            assert re.search(r'layout="constrained"|tight_layout|panels\(', cell), cell[:200]
        if re.search(r"set_[xy]scale\(\"log\"\)", cell):
            assert not re.search(r"\.barh?\(", cell), f"a bar chart on a log axis: {cell[:200]}"


def numbers(pattern, text):
    """Every match of a regex whose groups are numbers (or [lists]) -> list of tuples of floats / lists."""
    def value(x):
        return [float(v) for v in x.strip("[]").split(",")] if x.startswith("[") else float(x)
    return [tuple(value(g) for g in m.groups()) for m in re.finditer(pattern, text)]


def check_claims(text):
    """The sentences and titles of the notebook, held against the numbers its cells print (one run, seed 0)."""
    N = r"(-?[\d.]+(?:e-?\d+)?)"
    # section 3 and 7: "one map 32 times" before training, "still one shape", "one or a few masks" after it
    (corr0, masks0), (corr1, masks1) = numbers(rf"maps: {N} or more; .*per face: (\[[\d, ]+\])", text)
    assert corr0 > 0.999 and set(masks0) == {1}, (corr0, masks0)
    assert corr1 > 0.9 and max(masks1) <= 8, (corr1, masks1)
    # section 3: l_g = 254 and the log's part is its square
    ((l_g, squared),) = numbers(rf"l_g = {N} \(what the model's loss logs is its square, l_g² = {N}\)", text)
    assert abs(l_g - 253.95) < 0.1 and abs(squared / l_g ** 2 - 1) < 1e-3
    ((l_g0, l_g1),) = numbers(rf"l_g on these 8 faces: {N} before training, {N} after", text)
    assert l_g0 == l_g and l_g1 < l_g0 - 10, "section 7: S is no longer all ones, l_g has fallen"
    # section 4 and 7: far above random masking, a little above the central mask, hardly moved, near the central mask
    rates = numbers(rf"semantic masking {N} % \(best group {N} %\) \| fixed central mask {N} % \| random masking {N} %", text)
    (semantic0, _, central, random), (_, _, _, _), (semantic1, _, _, _) = rates  # untrained, before, after
    assert semantic0 - random > 10 and 0 < semantic0 - central < 8, rates[0]
    assert abs(semantic1 - semantic0) < 5 and abs(semantic1 - central) < 6, rates
    # section 6: BYOL before training: every pair alike, every face's output alike; the EMA step; the terms
    (same0, others0, p0, t0), (same1, others1, p1, t1) = numbers(
        rf"same face {N} vs other faces {N}; cosine between two different faces' predictions {N}, between their targets {N}", text)
    assert abs(same0 - others0) < 0.05 and p0 > 0.8 and t0 > 0.8
    assert t1 < 0.6 and p1 > 0.9 and abs(others1 - same1) < 0.05, (same1, others1, p1, t1)  # section 7: the stripes
    ((moved, _),) = numbers(rf"the target moved {N} of the way to the online network \(1 - m = {N}\)", text)
    assert abs(moved - 0.01) < 1e-3
    ((total_sum, total, share),) = numbers(rf"beta\*l_g\^2 = {N} = the model's total {N}; beta\*l_g\^2 is {N} %", text)
    assert abs(total_sum / total - 1) < 1e-3 and share > 99, "the grouping term is almost all of the total"
    reach = {m.group(1): tuple(float(x) for x in m.groups()[2:]) for m in re.finditer(
        rf"^(L_s|L_r|alpha\*L_d|beta\*l_g\^2) +{N} +gradient norm into backbone {N}, grouping layer {N}, FaceMAE {N}", text, re.M)}
    assert reach["L_s"][0] > 0 and reach["L_s"][1:] == (0, 0)
    assert reach["L_r"][:2] == (0, 0) and reach["L_r"][2] > 0
    assert reach["alpha*L_d"][0] > 0 and reach["alpha*L_d"][1] == 0 and reach["alpha*L_d"][2] > 0
    assert reach["beta*l_g^2"][0] == 0 and reach["beta*l_g^2"][1] > 0 and reach["beta*l_g^2"][2] == 0
    # section 7: the log and its reading
    steps = {int(m.group(1)): dict(re.findall(r"([\w*^ -]+?) (-?[\d.]+(?:e[-+]?\d+)?)(?:, |$)", m.group(2)))
             for m in re.finditer(r"^step +(\d+): (.*)$", text, re.M)}
    steps = {k: {name.strip(): float(x) for name, x in v.items()} for k, v in steps.items()}
    assert sorted(steps) == [1, 10, 20, 30], sorted(steps)
    for k, log in steps.items():
        rest = max(log["L_s"], log["L_r"], log["alpha*L_d"])
        assert log["beta*l_g^2"] > 100 * rest, f"step {k}: beta*l_g^2 is not two orders above the rest"
        assert log["alpha*L_d"] < min(log["L_s"], log["L_r"]), f"step {k}: alpha*L_d is not the smallest term"
        assert abs(log["l_g"] ** 2 * 0.03 / log["beta*l_g^2"] - 1) < 1e-3, f"step {k}: l_g is not sqrt(l_g^2)"
    assert abs(steps[1]["l_g"] - 253.95) < 0.1 and steps[30]["l_g"] < 250
    assert steps[30]["L_s"] < steps[1]["L_s"] / 2, "the similarity loss did not fall by more than half"
    assert max(steps[k]["online - target"] for k in (10, 20, 30)) > steps[1]["online - target"]
    # section 8: BN statistics make the random trunk worse on both probes; pretrained close to it, not above random
    acc = dict(re.findall(rf"^(random|random \+ BN statistics|pretrained) +trunk: accuracy {N} %", text, re.M))
    acc = {k: float(v) for k, v in acc.items()}
    assert acc["random"] > acc["random + BN statistics"], acc
    assert abs(acc["pretrained"] - acc["random + BN statistics"]) < 8 and acc["pretrained"] < acc["random"], acc
    # section 8: in 12 steps the trunks of BYOL and SimCLR cannot be told apart, both about the untrained one (a few
    # percent), both begin to spread the faces apart; BYOL's loss falls fast, SimCLR's hardly moves
    found = {m.group(1): (float(m.group(2)), float(m.group(3)), float(m.group(4))) for m in re.finditer(
        rf"^(untrained|BYOL|SimCLR) +trunk: partner found {N} % \(chance 0.8 %\); cosine same face {N}, other faces {N}",
        text, re.M)}
    assert sorted(found) == ["BYOL", "SimCLR", "untrained"], found
    assert max(v[0] for v in found.values()) - min(v[0] for v in found.values()) < 4, found
    assert 0.8 < min(v[0] for v in found.values()) and max(v[0] for v in found.values()) < 10, found
    assert found["untrained"][2] > 0.9 and max(found["BYOL"][2], found["SimCLR"][2]) < found["untrained"][2], found
    ((byol, simclr),) = numbers(rf"each GFL loss at step 12 over its first value: BYOL {N}, SimCLR {N}", text)
    assert byol < 0.75 and simclr > 0.85, (byol, simclr)
    # section 10: train.py ran and ended its second epoch
    assert re.search(r"^epoch=2 step=4 ", text, re.M) and "share of the ResNet's gradient" in text, "the quick start"
    # section 5: FaceMAE alone learns: its masked-patch loss falls from above 1 (flat patches) to well below it
    ((_, first, last),) = numbers(rf"200 steps in {N} s; masked-patch loss {N} -> {N}", text)
    assert first > 1.1 and last < 0.95, (first, last)
    # section 14: train.py on FER2013 with an NT-Xent named, then its verdict on val for the three trunks
    assert re.search(r"^training SimCLR on FER2013 with (your|simfle\.py's) NT-Xent", text, re.M), "section 14 ran"
    verdict = dict(re.findall(rf"^  (pretrained|random    |random, BN) trunk: linear {N} %", text, re.M))
    assert len(verdict) == 3 and "verdict on fer2013 val" in text, "section 14's verdict"
    # section 12: at the paper's weights L_s carries nearly all of the backbone's gradient, L_d a percent or less;
    # the opened channel a tenth or more at alpha 1, about a third at alpha 3; L_r and beta*l_g^2 exactly 0
    shares = {m.group(1): [float(x) for x in m.groups()[1:]] for m in re.finditer(
        rf"^(paper: BYOL, α = 0.3|paper: SimCLR, α = 0.3|opened: SimCLR, α = 1|opened: SimCLR, α = 3) +backbone's "
        rf"gradient: similarity {N} %, reconstruction {N} %, distillation {N} %, grouping {N} %", text, re.M)}
    assert len(shares) == 4, shares
    for name, (sim, rec, dist, grp) in shares.items():
        assert rec == 0 and grp == 0 and abs(sim + dist - 100) < 0.02, (name, shares[name])
    assert 0.4 <= shares["paper: BYOL, α = 0.3"][2] <= 3, shares
    assert shares["paper: SimCLR, α = 0.3"][2] < 1, shares
    assert shares["opened: SimCLR, α = 1"][2] >= 10 and shares["opened: SimCLR, α = 3"][2] >= 30, shares


@pytest.mark.slow
def test_student_copy_runs_then_the_answers_pass_in_one_kernel(tmp_path):
    """One run does it all (the slowest test of the suite, kept to one kernel): the student copy, written to tmp_path
    without tutorial/solutions.py, runs top to bottom with every checker saying NOT DONE; then, in the same kernel,
    each answer (read from this repository, never written to the copy) and its checker again: every one passes.
    Last, the copy's own tests of the tutorial pass there, with its notebook now this run and no solutions file."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    make = builder()
    make.student(str(tmp_path))
    assert not os.path.exists(tmp_path / "tutorial" / "solutions.py")
    nb = make.build(student=True, source=str(tmp_path / "tutorial" / "tutorial.py"))
    added = 0
    if os.path.exists(SOLUTIONS):
        nb, added = make.append_solutions(nb)
        nb.cells.append(nbformat.v4.new_code_cell(SECTION_14_WITH_YOUR_LOSS))  # after the answers: theirs is written
        added += 1
    t0 = time.time()
    # the kernel finds the copy's simfle.py from its folder; it is the only thing running: both cores of a 2-core runner;
    # section 14 trains on a tiny generated fer2013.csv, one epoch
    fer = write_fer2013_csv(tmp_path / "fer2013-tiny")
    make.execute(nb, tmp_path, env={"PYTHONPATH": "", "OMP_NUM_THREADS": "2", "FER2013_DIR": fer, "FER2013_EPOCHS": "1"})
    print(f"the student copy's notebook ran in {time.time() - t0:.0f} s")
    student_nb, answers = nbformat.from_dict(dict(nb)), nb.cells[len(nb.cells) - added:]
    student_nb.cells = nb.cells[:len(nb.cells) - added]
    check_outputs(student_nb)
    text = stdout(student_nb)
    exercises = [c.metadata["exercise"] for c in student_nb.cells if "exercise" in c.metadata]
    assert len(exercises) == 6 + 3 and text.count("NOT DONE") == len(exercises), "a checker did not say NOT DONE"
    assert not re.search(r"^(PASS|FAIL|OUTSIDE) ", text, re.M)
    check_claims(text)
    if added:
        answered = stdout(nbformat.v4.new_notebook(cells=answers))
        for name in exercises:  # every checker passes against the solutions; the measurements lie in their ranges
            assert re.search(rf"^PASS {name}: ", answered, re.M), f"the checker of {name} did not pass"
        assert not re.search(r"^(FAIL|OUTSIDE|NOT DONE) ", answered, re.M)
        assert not re.search(r"^PASS .*\boutside\b", answered, re.M), "a measurement left its expected range"
        # section 14 with the answer written: the student's NT-Xent is the one train.py calls, and simfle.py's is
        # put back after the run and after a run train.py refuses
        ((calls, status, refused, restored),) = re.findall(
            r"^section 14: your NT-Xent \(exercise 6\) \| called (\d+) times \| status (\d+) \| refused (\d+) \| "
            r"restored (True|False)$", answered, re.M)
        assert int(calls) > 0 and status == "0" and refused != "0" and restored == "True", answered[-800:]
    nbformat.write(student_nb, str(tmp_path / "tutorial.ipynb"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_exercises.py",
                          "tests/test_notebook.py", "-k", "not in_one_kernel and not can_stub"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "skipped" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
