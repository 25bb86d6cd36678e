"""Sharing a trunk: eval.py --export writes it alone, and torch.hub (hubconf.py) gives it back as a
torchvision ResNet that computes the same features, from the exported file or from a whole train.py
last.pt."""
import ast
import dataclasses
import json
import os

import pytest
import torch
import torchvision

import eval as evaluate
import hubconf
from simfle import SimFLE, SimFLEConfig
from eval_support.common import CHECKPOINT_FORMAT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def a_checkpoint(path, **overrides):
    """A train.py last.pt of a tiny model whose trunk is unlike a fresh one (weights and BatchNorm
    statistics moved), written as train.py writes it: -> the model."""
    cfg = SimFLEConfig.preset("tiny", **overrides)
    torch.manual_seed(1)
    model = SimFLE(cfg)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p), alpha=0.01)
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                "config": dataclasses.asdict(cfg),
                "preset": "tiny", "data": "synthetic", "train": {}}, path)
    return model


@pytest.mark.parametrize("overrides", [{}, {"width": 0.5, "stem": "small"}],
                         ids=["resnet18", "narrow-small-stem"])
def test_export_then_hub_load_gives_the_same_features(tmp_path, overrides):
    model = a_checkpoint(tmp_path / "last.pt", **overrides)
    exported = tmp_path / "trunk.pt"
    assert evaluate.cli(["--ckpt", str(tmp_path / "last.pt"), "--export", str(exported)]) == 0
    # the file: tensors and strings only, torchvision's key names, the config as JSON
    state = torch.load(exported, weights_only=True)
    assert state["format"] == hubconf.TRUNK_FORMAT == evaluate.TRUNK_FORMAT
    assert json.loads(state["config"]) == dataclasses.asdict(model.config)
    resnet_keys = set(torchvision.models.resnet18().state_dict()) - {"fc.weight", "fc.bias"}
    assert set(state["state_dict"]) == resnet_keys
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model.backbone.eval()(x)  # (3,C) the trunk's pooled features
    for path in (exported, tmp_path / "last.pt"):  # the trunk alone, or the whole checkpoint
        net = torch.hub.load(ROOT, "simfle_trunk", source="local", checkpoint=str(path))
        assert type(net) is torchvision.models.ResNet and isinstance(net.fc, torch.nn.Identity)
        assert not net.training
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-6)
        assert set(net.state_dict()) == resnet_keys  # loads into any torchvision ResNet code path


def test_a_bad_file_is_one_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    a_checkpoint(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save(torchvision.models.resnet18().state_dict(), plain)
    alien = tmp_path / "alien.pt"
    torch.save({"format": hubconf.TRUNK_FORMAT, "config": json.dumps({"backbone": "vgg16"}),
                "state_dict": {}}, alien)
    for path, words in [(tmp_path / "missing.pt", "not found"), (truncated, "unreadable"),
                        (text, "unreadable"),
                        (plain, "neither"), (alien, "damaged")]:
        with pytest.raises(ValueError) as e:
            torch.hub.load(ROOT, "simfle_trunk", source="local", checkpoint=str(path))
        message = str(e.value)
        assert words in message and "--export" in message and "\n" not in message, message


def test_hubconf_needs_only_torch_torchvision_and_the_model_file():
    tree = ast.parse(open(os.path.join(ROOT, "hubconf.py")).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported - {"json", "os"} == {"torch", "torchvision", "simfle"}
    assert hubconf.dependencies == ["torch", "torchvision"]
    assert hubconf.CHECKPOINT_FORMAT == CHECKPOINT_FORMAT
