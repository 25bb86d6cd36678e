"""The project's shape: floors that import downwards only (simfle <- data_support <- data <-
eval_support <- eval <- train_support <- train), one name in one place, and scripts that read in
short steps."""
import ast
import functools
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the floors, lowest first: a module imports from its own floor or below, never above
FLOORS = ["simfle", "data_support", "data", "eval_support", "eval", "train_support", "train"]
# every package at the top level (a folder with an __init__.py), found on disk
PACKAGES = sorted(os.path.basename(os.path.dirname(p))
                  for p in glob.glob(os.path.join(ROOT, "*", "__init__.py")))
MODULES = sorted([os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))]
                 + [f"{pkg}.{os.path.basename(p)[:-3]}" for pkg in PACKAGES
                    for p in glob.glob(os.path.join(ROOT, pkg, "*.py"))
                    if not p.endswith("__init__.py")])
OUTSIDE_THE_FLOORS = {"hubconf"}  # torch.hub's entry point: imports the model only
# modules the benchmarks and tests import by their bare name (their folder on sys.path)
SCRIPTS = {os.path.basename(p)[:-3]: p for folder in ("benchmarks", "tests")
           for p in glob.glob(os.path.join(ROOT, folder, "*.py"))}
KNOWN = set(MODULES) | set(SCRIPTS) | set(PACKAGES)  # what a file may import from the project
MODEL_FILE_LINES = 480  # simfle.py: the method, its losses and its config


def module_file(name):
    path = os.path.join(ROOT, *name.split(".")) + ".py"
    return path if os.path.exists(path) or name not in SCRIPTS else SCRIPTS[name]


def floor(name):
    return FLOORS.index(name.split(".")[0])


def imported_modules(path):
    """Every project module that a file imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from pkg import module
    return names & set(MODULES)


def find_cycle(graph):
    """A list of modules that import each other in a ring, or None."""
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n, path + [n])
                if found:
                    return found
        state[m] = "done"
        return None
    for m in sorted(graph):
        if m not in state:
            found = visit(m, [m])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_module_has_a_floor():
    """A new top-level file or package must be given its floor (or be named outside them)."""
    floorless = [m for m in MODULES
                 if m.split(".")[0] not in FLOORS and m not in OUTSIDE_THE_FLOORS]
    assert not floorless, f"modules without a floor in FLOORS: {floorless}"
    assert {"data_support", "eval_support", "train_support"} <= set(PACKAGES)


def test_no_import_cycle_and_every_import_goes_down_a_floor():
    graph = {m: imported_modules(module_file(m)) - {m} for m in MODULES}
    assert {"simfle", "data", "eval", "train", "data_support.layouts", "train_support.run"} <= set(
        graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    upward = [(m, n) for m in MODULES if m.split(".")[0] in FLOORS for n in graph[m]
              if floor(n) > floor(m)]
    assert not upward, f"imports from a higher floor: {upward}"
    assert graph["simfle"] == set(), "the model file imports no project module"


def test_the_floor_check_sees_a_module_of_a_package():
    """A package module imported as `from pkg import module` counts, so an upward import fails."""
    assert "train_support.run" in imported_modules(module_file("tests/test_run_folder"))
    assert floor("train_support.run") > floor("eval")


# the project's own Python files; the tutorial's files have their own owner and tests
TUTORIAL = {"tutorial/tutorial.py", "tutorial/exercises.py", "tutorial/solutions.py",
            "tutorial/make.py", "tests/test_notebook.py", "tests/test_exercises.py"}
ALL_PY = (os.path.relpath(f, ROOT)
          for f in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True))
OWN = sorted(p for p in ALL_PY
             if p not in TUTORIAL and not p.startswith((".", "runs", "data" + os.sep)))


def functions(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    return {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("path", OWN)
def test_no_function_longer_than_80_lines(path):
    long = {name: n for name, n in functions(path).items()
            if n > 80}
    assert not long, f"{path}: functions over 80 lines: {long}"


@pytest.mark.parametrize("path", OWN)
def test_no_module_over_600_lines(path):
    n = len(open(os.path.join(ROOT, path)).read().splitlines())
    assert n <= 600, f"{path}: {n} lines"


def test_train_py_reads_on_a_few_screens():
    assert len(open(os.path.join(ROOT, "train.py")).read().splitlines()) <= 350


@pytest.mark.parametrize("path", OWN)
def test_no_line_over_100_characters(path):
    long = [i for i, line in enumerate(open(os.path.join(ROOT, path)).read().splitlines(), 1)
            if len(line) > 100]
    assert not long, f"{path}: lines over 100 characters: {long}"


def test_the_model_file_holds_the_method_in_a_few_hundred_lines():
    n = len(open(os.path.join(ROOT, "simfle.py")).read().splitlines())
    assert n <= MODEL_FILE_LINES, f"simfle.py: {n} lines"


@functools.lru_cache(maxsize=None)  # read once per module, however many names are looked up in it
def project_imports(path):
    """The names a module binds by importing them from a project module (what it could pass on)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in KNOWN:
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name in KNOWN}
    return names


def borrowed_names(path):
    """Project names that a file reads through a module which only imports them: `from eval import
    load_checkpoint` or `evaluate.load_checkpoint` where eval_support.common defines it (a library
    module seen through a project module, such as `run.subprocess` to patch it, is not one)."""
    tree = ast.parse(open(path).read())
    stored = {n.id for n in ast.walk(tree)
              if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    alias, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            alias.update({a.asname or a.name: a.name for a in node.names
                          if a.name in KNOWN and a.name not in PACKAGES})
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in PACKAGES:
            alias.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in MODULES})  # from pkg import module [as x]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in KNOWN:
            passed_on = project_imports(module_file(node.module))
            found += [f"{node.module}.{a.name}" for a in node.names if a.name in passed_on]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in alias and node.value.id not in stored
                and node.attr in project_imports(module_file(alias[node.value.id]))):
            found.append(f"{alias[node.value.id]}.{node.attr}")
    return found


def test_the_name_check_finds_a_borrowed_name(tmp_path):
    f = tmp_path / "caller.py"
    f.write_text("import eval as evaluate\nfrom train import parse_args\nevaluate.load_checkpoint\n"
                 "evaluate.linear_probe\nimport learning_curve\nlearning_curve.read_rows\n"
                 "from train_support import options as o\no.build_parser\no.str2bool\no.sys\n")
    assert borrowed_names(str(f)) == ["train.parse_args", "eval.load_checkpoint",
                                      "learning_curve.read_rows",
                                      "train_support.options.str2bool"]


@pytest.mark.parametrize("path", OWN + sorted(TUTORIAL))
def test_one_name_one_place(path):
    """Callers import a name from the module that defines it: no re-exports to keep old call sites
    working, and no unused-import marker that would hide one)."""
    marker = re.compile(r"noqa:[^\n]*F" + "401")
    assert not marker.search(open(os.path.join(ROOT, path)).read()), f"{path}: a re-export"
    borrowed = borrowed_names(os.path.join(ROOT, path))
    assert not borrowed, f"{path} reads names where they are not defined: {borrowed}"
