"""The project's shape: imports go one way (simfle <- data <- eval <- train), and the scripts read
in short steps."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py")))


def imported_modules(path):
    """Every top-level project module that a file imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
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


def test_no_import_cycle_among_the_top_level_modules():
    graph = {m: imported_modules(os.path.join(ROOT, m + ".py")) - {m} for m in MODULES}
    assert {"simfle", "data", "eval", "train"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    # the intended layers, lowest first
    assert graph["simfle"] == set() and graph["data"] == set()
    assert graph["eval"] <= {"simfle", "data"} and "train" not in graph["eval"]


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


def test_support_modules_sit_below_the_scripts():
    """support/ holds what the four modules need and a reader can skip; nothing there imports train.
    """
    for path in glob.glob(os.path.join(ROOT, "support", "*.py")):
        assert "train" not in imported_modules(path), path
    for name in ("device_augment", "synthetic_faces"):  # below data.py: no project import at all
        assert imported_modules(os.path.join(ROOT, "support", name + ".py")) == set()
