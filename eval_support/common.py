"""What train.py and eval.py share: the device, the checkpoint file, the command line's manners.

A checkpoint is read with weights_only=True and carries its model config, so evaluation rebuilds the
model from the file alone; run_cli turns a user's mistake into one message and an exit code instead
of a traceback.
"""
import argparse
import copy
import os
import sys

import torch
from torch.utils.data import DataLoader

import data
from simfle import SimFLEConfig
from data_support.layouts import DatasetError

CHECKPOINT_FORMAT = "simfle-checkpoint-v1"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why and what to do."""


def pick_device(name):
    """cuda -> mps -> cpu unless told."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for, but no CUDA GPU is visible. Use "
                         "--device cpu.")
    return device


def load_checkpoint(path):
    """Load a SimFLE checkpoint with weights_only=True (a checkpoint file can never run code)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusing code, a truncated zip, a text file, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a loadable SimFLE checkpoint (truncated, corrupt, or "
                              f"it contains code, which is never executed): {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a SimFLE checkpoint (no '{CHECKPOINT_FORMAT}' "
                              f"marker); train one with train.py, or use eval.py --ckpt random")
    try:
        ckpt["config_obj"] = SimFLEConfig(**ckpt["config"]).validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an unknown model configuration: {e}") from None
    return ckpt


def run_cli(main, argv=None):
    """Run a script's main(); user mistakes become one message and a non-zero exit instead of a
    traceback."""
    try:
        return main(argv)
    except (DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        given = " ".join(sys.argv[1:] if argv is None else argv) or "the defaults"
        print(f"error: out of GPU memory with {given}. Try a smaller --batch-size, --preset tiny, "
              "--precision bf16/fp16, or (train.py) --activation-checkpointing true; the run "
              f"folder's last.pt still holds the last completed epoch.", file=sys.stderr)
        return 4


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help that states each option's default once. argparse's "(default: X)" is added only where
    the help does not already say what the default is, and never for None: a None default means
    "decided later" (by the preset, the device, the checkpoint), and such options say in their help
    what that will be."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)

    def _format_action(self, action):
        if not action.help and action.option_strings and action.default not in (None,
                                                                                argparse.SUPPRESS):
            # argparse skips an option without help; show its default all the same
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)




def str2bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def capped(dataset, n, seed=0):
    """A fixed random subset of at most n items, the same every epoch."""
    if n >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.Subset(dataset, order[:n].tolist())


def loader(dataset, batch_size, workers, shuffle=False, seed=0):
    """A DataLoader over probe views (data.collate skips unreadable images), seeded when shuffled.
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      collate_fn=data.collate, generator=torch.Generator().manual_seed(seed),
                      drop_last=False)
