"""`python train.py` is the quick start: the tiny preset narrowed (width 0.5) with device views, the
paper's masking geometry kept; `--preset tiny` and every option given explicitly stay as they were.
"""
import dataclasses

from simfle import SimFLEConfig
from train_support.options import parse_args


def test_the_quick_start_is_the_tiny_preset_narrowed_with_the_papers_masking_geometry():
    args = parse_args([])
    cfg, tiny = args.config, SimFLEConfig.preset("tiny")
    assert args.preset == "tiny" and args.data == "synthetic" and args.probe
    assert args.augment == "device"
    # the width alone differs from the tiny preset
    assert cfg == dataclasses.replace(tiny, width=0.5)
    assert (cfg.origin_size, cfg.patch_size, cfg.num_patches, cfg.num_visible) == (112, 16, 49, 12)
    assert cfg.backbone_channels == 256 and cfg.backbone_channels % cfg.groups == 0
    assert (args.epochs, args.batch_size) == (2, 64)  # the training budget is the tiny preset's


def test_the_tiny_preset_and_given_options_stay_as_they_were():
    args = parse_args(["--preset", "tiny"])
    assert args.config == SimFLEConfig.preset("tiny") and args.augment == "loader"
    args = parse_args(["--width", "1.0", "--augment", "loader"])
    assert args.config.width == 1.0 and args.augment == "loader"
    args = parse_args(["--data", "rafdb"])
    assert args.config.width == 1.0 and args.augment == "loader" and args.preset == "paper"
