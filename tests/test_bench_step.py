"""benchmarks/bench_step.py times train.py's own step on the input train.py gives it."""
import os
import sys

import pytest
import torch

import data
from simfle import SimFLEConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import bench_step  # noqa: E402


def test_random_batch_is_what_collate_makes_of_pretrain_views():
    cfg = SimFLEConfig.preset("tiny")
    views = data.PretrainView(data.get_dataset("synthetic", split="train", synthetic_count=3),
                              cfg.view_size,
                              cfg.origin_size)
    real, _ = data.collate([views[i] for i in range(3)])
    fake = bench_step.random_batch(cfg, 3)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]
    sigma = fake[3] * 224 / cfg.view_size
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0


def test_configurations_are_the_whole_matrix_and_typos_fail():
    configs = bench_step.all_configs()
    assert len(set(configs)) == 3 * 2 * 2 * 2 and configs[0] == "fp32"
    assert bench_step.parse_config("bf16+channels_last+ckpt") == ("bf16", {"channels_last", "ckpt"})
    for bad in ("fp64", "bf16+channels-last", "ckpt+bf16"):
        with pytest.raises(SystemExit):
            bench_step.parse_config(bad)


def test_measure_runs_train_py_step():
    spec = {"preset": "tiny", "batch": 2, "config": "fp32+ckpt", "device": "cpu", "warmup": 1,
            "steps": 2,
            "memory_fraction": None}
    torch.manual_seed(0)
    result = bench_step.measure(spec)
    assert len(result["step_times"]) == 2 and result["step_s"] > 0 and result["peak_gib"] > 0.1
    table = bench_step.format_table([result, {**spec, "config": "bf16", "error": "out of memory"}])
    assert "| fp32+ckpt |" in table and "| 1.00 |" in table and "| bf16 | out of memory |" in table
