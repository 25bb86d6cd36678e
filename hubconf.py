"""torch.hub entry point: a pretrained SimFLE trunk in your own code.

    import torch
    resnet = torch.hub.load("path/to/simfle", "simfle_trunk", source="local", checkpoint="trunk.pt")
    features = resnet(images)  # (B,3,H,W) normalised as data.normalize does -> (B,C) features

The checkpoint is an `eval.py --export` file (the trunk alone) or a whole train.py last.pt. Only
torch, torchvision and simfle.py are imported (not the data or evaluation code).


"""
import json
import os

import torch
import torch.nn as nn
import torchvision

from simfle import Backbone, SimFLEConfig

dependencies = ["torch", "torchvision"]

# the markers of eval.py's two file formats (eval.CHECKPOINT_FORMAT, eval.TRUNK_FORMAT), repeated
# here so that
# torch.hub needs neither eval.py nor its data code
CHECKPOINT_FORMAT = "simfle-checkpoint-v1"  # a train.py last.pt: the whole model, config as a dict
TRUNK_FORMAT = "simfle-trunk-v1"  # an eval.py --export file: the trunk's state_dict, config as JSON
WANTED = ("simfle_trunk needs an `eval.py --ckpt last.pt --export trunk.pt` file or a train.py "
          "last.pt")


def read_trunk(checkpoint):
    """-> (state_dict under torchvision's key names, SimFLEConfig) of an exported trunk or a
    train.py last.pt. Anything else raises one ValueError that says what the file is and what to
    give instead."""
    if not os.path.isfile(checkpoint):
        raise ValueError(f"{checkpoint}: not found. {WANTED}")
    try:  # weights_only: a checkpoint file can never run code
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusing code, a truncated zip, a text file, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{checkpoint}: unreadable (truncated, corrupt, or it contains code, "
                         "which is never run): "
                         f"{first}. {WANTED}") from None
    kind = state.get("format") if isinstance(state, dict) else None
    try:
        if kind == TRUNK_FORMAT:
            return state["state_dict"], SimFLEConfig(**json.loads(state["config"])).validate()
        if kind == CHECKPOINT_FORMAT:
            weights = {k[len("backbone."):]: v for k, v in state["model"].items()
                       if k.startswith("backbone.")}
            return weights, SimFLEConfig(**state["config"]).validate()
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # the marker, the rest broken
        raise ValueError(f"{checkpoint}: a damaged '{kind}' file, or of another version "
                         f"({type(e).__name__}: {e}). "
                         f"{WANTED}") from None
    raise ValueError(f"{checkpoint}: neither a '{TRUNK_FORMAT}' nor a '{CHECKPOINT_FORMAT}' file. "
                     f"{WANTED}")


def simfle_trunk(checkpoint):
    """The pretrained ResNet trunk of a SimFLE run as a torchvision ResNet
    (torchvision.models.ResNet, the class of torchvision.models.resnet18/34/50), fc replaced by
    nn.Identity: model(x) -> (B,C) globally pooled features, the features eval.py probes. Its narrow
    width or small stem, if the run used them, come from the checkpoint's config. Returned in eval
    mode (BatchNorm with the running statistics of pretraining); .train() to fine-tune.

    checkpoint: an `eval.py --export` file or a train.py last.pt (read with weights_only=True)."""
    weights, cfg = read_trunk(checkpoint)
    trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)  # the project's construction: stem, width
    try:
        trunk.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{checkpoint}: its weights do not fit its own config ({cfg.backbone}, "
                         f"width {cfg.width}): "
                         f"{str(e).splitlines()[0]}") from None
    net = getattr(torchvision.models, cfg.backbone)(weights=None)
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        setattr(net, name, getattr(trunk, name))  # same names: torchvision's state_dict keys
    net.fc = nn.Identity()
    return net.eval()
