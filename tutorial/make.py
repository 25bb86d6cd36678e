"""
Build tutorial.ipynb from its source, tutorial/tutorial.py (jupytext's percent format, paired with the notebook),
and build a student copy of the course without the answers.

    python tutorial/make.py                    # the notebook's cells from the source; outputs kept (prose edits only)
    python tutorial/make.py --execute          # run it top to bottom on CPU and keep the outputs (a few minutes)
    python tutorial/make.py --check            # exit 1 when tutorial.ipynb's cells differ from the source
    python tutorial/make.py --solutions --out answers.ipynb          # the exercises filled in, for instructors
    python tutorial/make.py --student DIR [--stub-model] [--execute] # a copy of the course for students

Edit tutorial/tutorial.py (any editor; or open it in Jupyter with jupytext installed, which keeps the two files in
step), not the notebook's JSON: the cells stay reviewable as plain text, and the committed outputs always come from
one clean top-to-bottom run. Cells tagged "instructor" are left out of the student copy; cells with an "exercise"
field are stubs that the student fills in, graded by tutorial/exercises.py, answered in tutorial/solutions.py.

--student DIR writes the repository's files to DIR without tutorial/solutions.py and without the instructor cells
(in tutorial.ipynb and in its source); the tests that need the answers skip there. --stub-model also replaces, in
DIR's simfle.py, the functions the exercises ask for by stubs (for a course where students complete simfle.py
itself: the notebook's model runs again once they have; its section 3 already calls keep_top_patches and
norm_pix_targets, whose exercises come in sections 4 and 5).
"""
import argparse
import ast
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

try:  # the notebook packages: needed to build, not to read --help
    import nbformat
except ImportError:
    nbformat = None

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCE = os.path.join(HERE, "tutorial.py")
NOTEBOOK = os.path.join(ROOT, "tutorial.ipynb")
SOLUTIONS = os.path.join(HERE, "solutions.py")
# the pieces of simfle.py the "implement it" exercises ask for (ema_update is SimFLE.update_target's loop there)
MODEL_EXERCISES = ("keep_top_patches", "grouping_loss", "distillation_loss", "norm_pix_targets", "simclr_loss")


def jupytext():
    try:
        import jupytext as module
    except ImportError:
        raise SystemExit("tutorial/make.py needs jupytext: pip install 'jupytext>=1.16'") from None
    return module


def build(student=False, source=SOURCE):
    """The notebook of the source's cells, without outputs; student=True leaves out the instructor cells."""
    nb = jupytext().read(source, fmt="py:percent")
    if student:
        nb.cells = [c for c in nb.cells if "instructor" not in c.metadata.get("tags", [])]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: a rebuild's diff shows only what changed
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    })
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nb


def exercises_of(nb):
    """[(exercise name, the checker cell that follows its stub)] in notebook order."""
    out = []
    for i, cell in enumerate(nb.cells):
        if "exercise" in cell.metadata:
            checker = next(c for c in nb.cells[i + 1:] if c.cell_type == "code")
            out.append((cell.metadata["exercise"], checker))
    return out


def solution_source(name, path=SOLUTIONS):
    """The source of the function `name` in tutorial/solutions.py, its decorators included."""
    with open(path) as f:
        source = f.read()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            return "\n".join(source.splitlines()[start - 1:node.end_lineno])
    raise KeyError(f"tutorial/solutions.py has no function {name!r}")


def with_solutions(nb, path=SOLUTIONS):
    """A copy with every exercise stub replaced by its solution."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if "exercise" in cell.metadata:
            cell.source = solution_source(cell.metadata["exercise"], path)
    return nb


def append_solutions(nb, path=SOLUTIONS):
    """A copy with, after the last cell, each solution and its checker again: one run of the notebook then shows
    every checker on the stubs (NOT DONE) and on the answers (PASS). Returns (notebook, number of cells added)."""
    nb = copy.deepcopy(nb)
    added = []
    for name, checker in exercises_of(nb):
        added += [nbformat.v4.new_code_cell(solution_source(name, path)), nbformat.v4.new_code_cell(checker.source)]
    for i, cell in enumerate(added):
        cell.id = f"solution-{i:02d}"
    nb.cells += added
    return nb, len(added)


def execute(nb, cwd, timeout=1200, env=None):
    """Run the notebook top to bottom in a kernel started in `cwd` (its first cell finds the repository from
    there, or from PYTHONPATH), on the CPU, one thread (section 14 takes every core for its run), pictures
    inline; a cell may run for `timeout` seconds (section 14 trains for minutes)."""
    from nbclient import NotebookClient
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1", **(env or {})}  # the committed outputs come from a CPU run
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits it
    try:
        NotebookClient(nb, kernel_name="python3", timeout=timeout, record_timing=False,
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def keep_outputs(nb, committed):
    """Give nb the outputs of the committed notebook, cell for cell: only when every code cell is unchanged, so that
    the outputs still come from one clean run of exactly this code (a changed code cell needs --execute)."""
    new = [c for c in nb.cells if c.cell_type == "code"]
    old = [c for c in committed.cells if c.cell_type == "code"]
    changed = [i for i, (a, b) in enumerate(zip(new, old), 1) if a.source != b.source]
    if len(new) != len(old) or changed:
        where = f"code cell {changed[0]}" if changed else f"{len(new)} code cells against {len(old)}"
        raise SystemExit(f"error: the outputs can be kept only with the code cells unchanged ({where} differs): "
                         "use --execute")
    for a, b in zip(new, old):
        a.outputs, a.execution_count = b.outputs, b.execution_count
    return nb


def differences(nb, committed):
    """Where two notebooks' cells differ (type or source), [] when they agree."""
    a = [(c.cell_type, c.source) for c in nb.cells]
    b = [(c.cell_type, c.source) for c in committed.cells]
    if len(a) != len(b):
        return [f"{len(b)} cells against {len(a)} in the source"]
    return [f"cell {i}" for i, (x, y) in enumerate(zip(a, b)) if x != y]


def repository_files(root=ROOT):
    """The repository's files (tracked, and new ones git does not ignore), as paths relative to root."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git clone: every file but the usual clutter
        skip = {".git", "runs", "data", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
        out = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in skip]
            out += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    return sorted(p for p in set(out) if os.path.isfile(os.path.join(root, p)))


def stub_functions(source, names, note):
    """Python source with the bodies of the top-level functions `names` replaced by their docstring and a raise."""
    lines = source.splitlines()
    nodes = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name in names]
    for node in sorted(nodes, key=lambda n: n.lineno, reverse=True):
        first = node.body[0]
        keep = node.body[1:] if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else node.body
        start, end = keep[0].lineno, node.end_lineno
        indent = " " * keep[0].col_offset
        lines[start - 1:end] = [f"{indent}raise NotImplementedError({note!r})"]
    return "\n".join(lines) + "\n"


def student(out_dir, stub_model=False, root=ROOT):
    """Write the course for students to out_dir: the repository without tutorial/solutions.py, the notebook and
    its source without the instructor cells (the notebook keeps its committed outputs: a run of the stubs)."""
    os.makedirs(out_dir, exist_ok=True)
    solutions = os.path.relpath(SOLUTIONS, ROOT)
    for rel in repository_files(root):
        if rel == solutions:
            continue
        os.makedirs(os.path.dirname(os.path.join(out_dir, rel)) or out_dir, exist_ok=True)
        shutil.copy2(os.path.join(root, rel), os.path.join(out_dir, rel))
    source = os.path.join(root, os.path.relpath(SOURCE, ROOT))
    nb = build(student=True, source=source)
    committed = nbformat.read(os.path.join(root, "tutorial.ipynb"), as_version=4)
    committed.cells = [c for c in committed.cells if "instructor" not in c.metadata.get("tags", [])]
    try:
        keep_outputs(nb, committed)
    except SystemExit:  # the committed notebook is behind its source: the student gets the cells without outputs
        pass
    nbformat.write(nb, os.path.join(out_dir, "tutorial.ipynb"))
    jupytext().write(build(student=True, source=source), os.path.join(out_dir, os.path.relpath(SOURCE, ROOT)),
                     fmt="py:percent")
    if stub_model:
        path = os.path.join(out_dir, "simfle.py")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(stub_functions(text, MODEL_EXERCISES, "an exercise: write it in tutorial.ipynb (beside its section), "
                                                          "then here"))
    return os.path.join(out_dir, "tutorial.ipynb")


GITHUB = re.compile(r"^https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")
BADGE = re.compile(r"^(# )?\[!\[Open in Colab\]\(.*$", re.M)


def colab_badge(url, branch):
    """The Open-in-Colab link of tutorial.ipynb in the GitHub repository at url, as a markdown line."""
    match = GITHUB.match(url)
    if not match:
        raise SystemExit(f"--repo-url {url}: expected a GitHub address, https://github.com/<owner>/<repository>")
    owner, name = match.groups()
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/tutorial.ipynb)")


def with_repository(text, url, badge, markdown_prefix):
    """text (the notebook's source, a cell, or tutorial/README.md) with REPO_URL set to url and the Colab badge
    under its first title, replacing one already there."""
    text = re.sub(r'^REPO_URL = ".*"$', f'REPO_URL = "{url}"', text, count=1, flags=re.M)
    if BADGE.search(text):
        return BADGE.sub(markdown_prefix + badge, text, count=1)
    title = "^" + re.escape(markdown_prefix) + "# .*$"  # "# # Title" in the percent source, "# Title" in markdown
    return re.sub(title, lambda m: f"{m.group(0)}\n{markdown_prefix.rstrip()}\n{markdown_prefix}{badge}", text,
                  count=1, flags=re.M)


def set_repository(folder, url, branch="main"):
    """Write REPO_URL and the Open-in-Colab badge for url into folder's tutorial/tutorial.py, tutorial.ipynb (the
    same cells, outputs kept) and tutorial/README.md: what a course hands to students in one step."""
    badge = colab_badge(url, branch)
    source = os.path.join(folder, os.path.relpath(SOURCE, ROOT))
    readme = os.path.join(folder, "tutorial", "README.md")
    for path, prefix in ((source, "# "), (readme, "")):
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(with_repository(text, url, badge, prefix))
    path = os.path.join(folder, "tutorial.ipynb")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.source = with_repository(cell.source, url, badge, "") if cell.cell_type == "markdown" and \
            cell is nb.cells[0] else re.sub(r'^REPO_URL = ".*"$', f'REPO_URL = "{url}"', cell.source, count=1,
                                            flags=re.M)
    nbformat.write(nb, path)
    return badge


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--execute", action="store_true", help="run the notebook and keep its outputs")
    p.add_argument("--check", action="store_true", help="exit 1 when tutorial.ipynb's cells differ from the source")
    p.add_argument("--solutions", action="store_true",
                   help="put tutorial/solutions.py's answers in place of the exercise stubs (write it elsewhere: --out)")
    p.add_argument("--out", default=None, help="where to write the notebook (default: tutorial.ipynb)")
    p.add_argument("--student", metavar="DIR", default=None,
                   help="write a copy of the course without the answers and the instructor cells to DIR")
    p.add_argument("--stub-model", action="store_true", help="with --student: stub the exercises' functions in "
                                                             "DIR's simfle.py")
    p.add_argument("--repo-url", metavar="URL", default=None,
                   help="the course's GitHub address: set REPO_URL and add an Open-in-Colab badge for it to the "
                        "notebook, its source and tutorial/README.md (of DIR with --student, else of this copy)")
    p.add_argument("--branch", default="main", help="the branch the Colab badge opens (with --repo-url)")
    args = p.parse_args(argv)
    if nbformat is None:
        raise SystemExit("tutorial/make.py needs nbformat: pip install -r requirements.txt")
    if args.check:
        found = differences(build(), nbformat.read(NOTEBOOK, as_version=4))
        print("tutorial.ipynb matches tutorial/tutorial.py" if not found else
              f"tutorial.ipynb differs from tutorial/tutorial.py ({', '.join(found[:5])}): python tutorial/make.py")
        return 1 if found else 0
    if args.student:
        path = student(args.student, stub_model=args.stub_model)
        if args.repo_url:
            print(f"Open in Colab: {set_repository(args.student, args.repo_url, args.branch)}")
        if args.execute:
            nb = execute(nbformat.read(path, as_version=4), os.path.abspath(args.student))
            nbformat.write(nb, path)
        print(f"wrote the student copy to {args.student} (no tutorial/solutions.py)")
        return 0
    if args.repo_url:
        print(f"Open in Colab: {set_repository(ROOT, args.repo_url, args.branch)}")
        return 0
    out = args.out or NOTEBOOK
    if args.solutions and os.path.abspath(out) == NOTEBOOK:
        p.error("--solutions would overwrite the students' tutorial.ipynb: give --out")
    nb = build()
    if args.solutions:
        nb = with_solutions(nb)
    if args.execute:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as scratch:
            execute(nb, scratch, env={"PYTHONPATH": os.pathsep.join(
                p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)})
        print(f"executed in {time.time() - t0:.0f} s")
    elif not args.solutions:
        keep_outputs(nb, nbformat.read(NOTEBOOK, as_version=4))
    nbformat.validate(nb)
    nbformat.write(nb, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
