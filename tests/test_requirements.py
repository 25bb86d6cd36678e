"""The requirements install what a newcomer needs and never downgrade what is there: floors, no
caps."""
import json
import os
import subprocess
import sys

import pytest
import torch
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    """-> (requirements, files it includes with -r) of one requirements file."""
    reqs, included = [], []
    for line in open(os.path.join(ROOT, name)):
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            included.append(line[2:].strip())
        elif line:
            reqs.append(Requirement(line))
    return reqs, included


def test_floors_only_so_a_newer_torch_is_kept():
    runtime, included = read("requirements.txt")
    dev, more = read("requirements-dev.txt")
    # one install line gives a newcomer everything
    assert included == ["requirements-dev.txt"] and more == []
    assert {r.name for r in runtime} == {"torch", "torchvision", "tqdm"}
    assert {r.name for r in dev} >= {"pytest", "nbclient", "nbformat", "ipykernel", "matplotlib"}
    for r in runtime + dev:
        # a cap (<, <=, ==, ~=) would make pip replace a newer release; a known-bad one is excluded
        # by name (!=)
        assert {s.operator for s in r.specifier} <= {">=", "!="}, r
        assert r.specifier.contains("99.0"), r
    torch_req = next(r for r in runtime if r.name == "torch")
    # the torch the tests run on
    assert torch_req.specifier.contains(torch.__version__.split("+")[0])


@pytest.mark.slow
def test_pip_keeps_a_newer_torch(tmp_path):
    """pip's resolver, offline, where torch and torchvision 99.0 are installed (their metadata,
    first on the path, with no pip configuration but ours): nothing to install, so nothing
    downgraded. With a cap it would have to install an older torchvision, and fail to find one."""
    newer = tmp_path / "site"
    for name in ("torch", "torchvision"):
        info = newer / f"{name}-99.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 99.0\n")
    env = {**os.environ, "PYTHONPATH": str(newer), "PIP_CONFIG_FILE": os.devnull}
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                        "--quiet", "--report", "-",
                        "-r", "requirements.txt"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=env)
    if r.returncode != 0 and "no such option: --report" in r.stderr:
        pytest.skip("pip older than 22.2 has no --report")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["install"] == []
