"""tutorial.ipynb: it runs top to bottom in a real Jupyter kernel, its committed outputs hold every section's
picture, and it calls the project's code instead of copying it."""
import ast
import importlib.util
import os
import re
import time

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "tutorial.ipynb")
# the components the tutorial walks through (issue: one section each, each with a picture); exercises have none
SECTIONS = ["1. The data", "2. The backbone", "3. Channel grouping", "4. Semantic masking", "5. FaceMAE",
            "6. The GFL loss", "7. A short pretraining run", "8. Probing the trunk", "9. Exercises"]


def read():
    return nbformat.read(NOTEBOOK, as_version=4)


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
    """Every section up to the exercises draws a picture; no cell failed; one run, top to bottom."""
    found = sections(nb)
    for name in SECTIONS:
        title = next((t for t in found if t.startswith(name)), None)
        assert title is not None, f"no section '## {name}...' in the notebook"
        if name.startswith("9."):
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
    assert pictures(nb.cells) >= 15


def test_committed_notebook_is_what_the_builder_writes():
    """tools/make_tutorial.py is the source: the committed cells must match it (rebuild with --execute)."""
    spec = importlib.util.spec_from_file_location("make_tutorial", os.path.join(ROOT, "tools", "make_tutorial.py"))
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    built = [(c.cell_type, c.source) for c in builder.build().cells]
    committed = [(c.cell_type, c.source) for c in read().cells]
    assert committed == built, "tutorial.ipynb differs from tools/make_tutorial.py: python tools/make_tutorial.py --execute"


def test_notebook_calls_the_project_instead_of_copying_it():
    nb = read()
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for line in ("import data", "import eval as evaluate", "import simfle", "from simfle import SimFLE, SimFLEConfig"):
        assert re.search(rf"^{re.escape(line)}\b", code, re.M), f"the notebook should `{line}`"
    tree = ast.parse(code)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)], "the notebook defines a class"
    # no layer is built by hand: every module comes from simfle.py (an nn.Linear, nn.Conv2d, ... would be model code)
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    layers = sorted(c for c in calls if re.match(r"(torch\.)?nn\.([A-Za-z_]+\.)*[A-Z]", c))
    assert not layers, f"the notebook builds layers itself: {', '.join(layers)}"
    # no function of the project's files is re-defined in it
    project = set()
    for name in ("simfle.py", "data.py", "eval.py", "train.py"):
        with open(os.path.join(ROOT, name)) as f:
            project |= {n.name for n in ast.walk(ast.parse(f.read())) if isinstance(n, ast.FunctionDef)}
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not defined & project, f"the notebook re-defines {sorted(defined & project)}"


def test_first_cell_fetches_the_project_only_when_it_is_missing():
    first = next(c for c in read().cells if c.cell_type == "code").source
    assert re.search(r'^REPO_URL = "https://github\.com/<owner>/simfle"', first, re.M)
    assert "google.colab" in first and "git\", \"clone" in first and 'find_spec("simfle")' in first
    assert not re.search(r"pip\W+install[^\n]*\btorch", first), "never (re)install torch or torchvision"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_in_a_kernel(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = read()
    for cell in nb.cells:  # run a fresh copy; the committed notebook is never overwritten
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    # the kernel inherits this environment: the project importable from a scratch folder, pictures inline,
    # one CPU thread (steadier than two on a shared machine, as in test_train.py)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    t0 = time.time()
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error
    seconds = time.time() - t0
    nbformat.write(nb, str(tmp_path / "tutorial.ipynb"))
    check_outputs(nb)
    print(f"tutorial.ipynb ran in {seconds:.0f} s")
