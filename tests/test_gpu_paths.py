"""The paths users take on GPUs, checked on the CPU: the precision a GPU of a given capability gets,
DDP over every option combination (2 gloo processes), an fp16 resume of a bf16 checkpoint, a NaN
on one process only, each process's RNG across a resume, the compile/DDP order, the device each
torchrun process takes, and the host syncs of a training step."""
import itertools
import os
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import data
import train
from e2e import QUICK, random_pretrain_batch
from data_support import device_augment
from eval_support.common import load_checkpoint
from simfle import SimFLE, SimFLEConfig
from train_support import run
from train_support.observe import gradient_shares
from train_support.run import NonFiniteLoss

WORLD = 2


# ----------------------------------------------------------------------------- precision, device


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((7, 0), "fp16"),
                                                  ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_by_compute_capability(monkeypatch, capability, expected):
    """A T4 (7.5) or V100 (7.0) gets fp16 + GradScaler, not bf16 (which torch would call supported
    there, by emulation); Ampere (8.0) and later get bf16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.version, "hip", None)
    assert run.pick_precision("auto", torch.device("cuda", 0)) == expected
    assert run.pick_precision("fp32", torch.device("cuda", 0)) == "fp32"


def test_each_torchrun_process_takes_the_gpu_of_its_local_rank():
    assert run.process_device("cuda:0", 1, True, say=False) == "cuda:1"
    assert run.process_device("cuda", 3, True, say=False) == "cuda:3"
    assert run.process_device("auto", 1, True, say=False) == "cuda:1"
    assert run.process_device("auto", 1, False, say=False) == "auto"
    assert run.process_device("cpu", 1, True, say=False) == "cpu"


# ----------------------------------------------------------------------------- DDP, 2 processes


def combinations():
    """Every combination of the model's categorical options that changes which parameters get a
    gradient."""
    for gfl in ("byol", "simclr", "barlow"):
        yield dict(gfl=gfl, use_facemae=False)
        for masking, target, loss in itertools.product(("semantic", "random"), ("mean", "ffl"),
                                                       ("kd", "cosine")):
            yield dict(gfl=gfl, masking=masking, distill_target=target, distill_loss=loss)


def small(**options):
    return SimFLEConfig.preset("tiny", width=0.25, view_size=32, enc_dim=32, enc_heads=2,
                               enc_depth=1, dec_dim=32, dec_heads=2, dec_depth=1, head_hidden=32,
                               head_out=16, groups=8, **options)


def fake_setup(rank=0, world=1, precision="fp32"):
    return types.SimpleNamespace(device=torch.device("cpu"), distributed=world > 1, rank=rank,
                                 world=world, main=rank == 0, precision=precision,
                                 say=lambda *a, **k: None)


def loader_batch(cfg, n, seed, nan=False):
    """A batch as the loader collates it (e2e.random_pretrain_batch); nan: the blur of one view is
    NaN, so that its loss becomes NaN."""
    origin, view1, view2, sigma = random_pretrain_batch(cfg, n, seed)
    if nan:
        sigma[0, 0] = float("nan")
    return [origin, view1, view2, sigma]


def ddp_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    results = {}
    try:
        setup = fake_setup(rank, WORLD)
        for options in combinations():
            torch.manual_seed(0)
            cfg = small(**options)
            trainer = train.Trainer(cfg, setup, lr=0.01, weight_decay=1e-4, channels_last=False)
            name = ",".join(f"{k}={v}" for k, v in options.items())
            try:  # DDP without find_unused_parameters raises on the 2nd step if one was unused
                for step in range(2):
                    trainer.step(loader_batch(cfg, 4, seed=10 * rank + step), lr=0.01)
                results[name] = "ok"
            except RuntimeError as e:
                results[name] = str(e).splitlines()[0]
        # a NaN on process 1 only (BYOL: each process's loss is its own): both stop at that step
        cfg = small(gfl="byol", use_facemae=False)
        trainer = train.Trainer(cfg, setup, lr=0.01, weight_decay=0.0, channels_last=False)
        before = [p.detach().clone() for p in trainer.raw_model.parameters()]
        try:
            trainer.step(loader_batch(cfg, 4, seed=rank, nan=rank == 1), lr=0.01)
            results["nan"] = "went on"
        except NonFiniteLoss as e:
            results["nan"] = f"stopped: {e}"
        results["nan_untouched"] = all(torch.equal(a, b) for a, b in
                                       zip(before, trainer.raw_model.parameters()))
        # an unreadable batch on process 0 only: every process skips it
        results["skip"] = run.any_process(rank == 0, setup)
        # compiled after the DDP wrap
        compiled = train.Trainer(cfg, setup, lr=0.01, weight_decay=0.0, channels_last=False,
                                 compile=True)
        results["order"] = type(compiled.model._orig_mod).__name__
        # each process's RNG state, gathered
        torch.manual_seed(100 + rank)
        results["rng"] = run.rng_states(setup)
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_ddp_over_two_gloo_processes(tmp_path):
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for results in ranks:
        failed = {k: v for k, v in results.items() if "=" in k and v != "ok"}
        assert not failed, failed
        assert len([k for k in results if "=" in k]) == 27
        assert results["nan"].startswith("stopped") and results["nan_untouched"]
        assert results["skip"] is True
        assert results["order"] == "DistributedDataParallel"
    assert "similarity" in ranks[1]["nan"] and "another process" in ranks[0]["nan"]
    gathered = ranks[0]["rng"]
    assert len(gathered) == WORLD and not torch.equal(gathered[0]["cpu"], gathered[1]["cpu"])
    for rank in range(WORLD):
        torch.manual_seed(100 + rank)
        assert torch.equal(gathered[rank]["cpu"], torch.get_rng_state())


def test_every_trainable_parameter_gets_a_gradient():
    """What DDP without find_unused_parameters needs, for every option combination, in one process:
    a parameter that can never get a gradient is frozen (the opened channel's teacher D-projector).
    """
    for options in combinations():
        torch.manual_seed(0)
        cfg = small(**options)
        model = SimFLE(cfg)
        origin, view1, view2 = data.pretrain_batch(loader_batch(cfg, 4, 0), "cpu")
        model(origin, view1, view2)[0].backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, (options, unused)
        if options.get("distill_target") == "ffl":
            assert not any(p.requires_grad for p in model.distill_ffl.parameters())


# ----------------------------------------------------------------------------- resume


def test_restore_rng_gives_each_process_its_own_state():
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(run.rng_state(torch.device("cpu")))
    ckpt = {"rng": states[0], "rng_per_process": states, "step": 5}
    run.restore_rng(ckpt, fake_setup(rank=1, world=2), seed=0)
    assert torch.equal(torch.get_rng_state(), states[1]["cpu"])
    run.restore_rng(ckpt, fake_setup(rank=0, world=2), seed=0)
    assert torch.equal(torch.get_rng_state(), states[0]["cpu"])
    # another number of processes: process 0 exact, the others fresh and distinct
    run.restore_rng({"rng": states[0], "step": 5}, fake_setup(rank=1, world=3), seed=0)
    assert not torch.equal(torch.get_rng_state(), states[0]["cpu"])


def test_an_fp16_resume_of_a_bf16_checkpoint(tmp_path, capsys):
    """An A100's bf16 run continued on a T4 (fp16 + GradScaler): its checkpoint holds no scaler
    state; the scale starts afresh with a message, not a traceback (the CPU GradScaler stands
    in)."""
    out = str(tmp_path / "run")
    assert train.cli(QUICK + ["--epochs", "2", "--stop-after-steps", "1", "--precision", "bf16",
                              "--knn-samples", "0", "--out", out]) == 0
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert ckpt["scaler"] == {}
    cfg = ckpt["config_obj"]
    said = []
    setup = fake_setup(precision="fp16")
    setup.say = said.append
    trainer = train.Trainer(cfg, setup, lr=0.01, weight_decay=1e-4)
    assert trainer.scaler.is_enabled()
    trainer.load(ckpt, os.path.join(out, "last.pt"))
    assert said and "scale starts afresh" in said[0]
    trainer.step(loader_batch(cfg, 4, 0), lr=0.01)  # and it trains
    fresh = trainer.state()["scaler"]
    assert fresh and fresh["scale"] > 0


# ----------------------------------------------------------------------------- host syncs


def test_one_host_sync_a_training_step(monkeypatch):
    """The step reads its loss parts from the device once (one .tolist of the stacked parts): no
    .item() per part, nothing before the backward. Counted on the CPU, where every such call would
    wait for a GPU."""
    cfg = small(gfl="simclr")
    trainer = train.Trainer(cfg, fake_setup(), lr=0.01, weight_decay=1e-4, channels_last=False)
    batch = loader_batch(cfg, 4, 0)
    calls = []
    for name in ("item", "tolist", "cpu", "nonzero"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _original=original, **k):
            calls.append(_name)
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    values = trainer.step(batch, lr=0.01)
    assert calls == ["tolist"] and "total" in values


def test_the_sync_free_colour_path_makes_the_same_images():
    """colour(select="where"), what a GPU runs (no nonzero()), gives the images of the indexed path
    the CPU runs, with and without the crop boxes of the contrast."""
    g = torch.Generator().manual_seed(0)
    B = 12
    x = torch.rand(B, 3, 16, 16, generator=g)
    params = dict(jitter=torch.rand(B, generator=g) < 0.8,
                  factors=torch.tensor([0.2, 0.2, 0.2, -0.2]) + torch.tensor(
                      [1.6, 1.6, 1.6, 0.4]) * torch.rand(B, 4, generator=g),
                  order=torch.rand(B, 4, generator=g).argsort(1),
                  gray=torch.rand(B, generator=g) < 0.2)
    rois = torch.cat([torch.arange(B, dtype=torch.float32)[:, None],
                      torch.tensor([1.0, 2.0, 13.0, 12.0]).expand(B, 4)], 1)
    for boxes in (None, rois):
        index = device_augment.colour(x, **params, rois=boxes, select="index")
        where = device_augment.colour(x, **params, rois=boxes, select="where")
        torch.testing.assert_close(where, index, rtol=0, atol=1e-6)


def test_gradient_shares_do_not_change_with_the_loss_scale():
    """fp16 runs measure the shares on terms multiplied by the loss scale (small gradients would
    underflow in fp16 otherwise): the shares are ratios, so the scale leaves them as they are."""
    cfg = small(gfl="simclr", distill_target="ffl", distill_loss="cosine")
    torch.manual_seed(0)
    model = SimFLE(cfg)
    origin, view1, view2 = data.pretrain_batch(loader_batch(cfg, 4, 0), "cpu")
    shares = []
    for scale in (1.0, 65536.0):
        torch.manual_seed(1)  # the same group draws
        shares.append(gradient_shares(model, origin, view1, view2, scale))
    for key, value in shares[0].items():
        assert abs(shares[1][key] - value) < 1e-6, key
    assert 0 < shares[0]["grad_share_distillation"] < 1
