"""SimCLR and Barlow Twins over several processes (gather_batch): two gloo processes on the CPU
compute the loss of the global batch, and DDP's mean of their gradients is the gradient of one
process on that whole batch."""
import functools
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import simfle

WORLD, B, D_IN, D = 2, 6, 5, 8  # processes, rows per process, input width, embedding width


def losses():
    return {"simclr": functools.partial(simfle.simclr_loss, temperature=0.1),
            "barlow": functools.partial(simfle.barlow_loss, lam=0.0051)}


def global_batch():
    """The same global batch and projection on every process: inputs (WORLD·B, D_IN) x2 and a Linear
    to D."""
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(WORLD * B, D_IN, generator=g), torch.randn(WORLD * B, D_IN, generator=g)
    weight = torch.randn(D, D_IN, generator=g)
    return x1, x2, weight


def one_pass(name, x1, x2, weight):
    """Embed with a shared projection, take the loss: -> loss, ∂L/∂z1, ∂L/∂z2, ∂L/∂weight."""
    w = weight.clone().requires_grad_(True)
    z1, z2 = x1 @ w.T, x2 @ w.T  # (n,D) each
    z1.retain_grad(), z2.retain_grad()
    loss = losses()[name](z1, z2)
    loss.backward()
    return loss.detach(), z1.grad, z2.grad, w.grad


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x1, x2, weight = global_batch()
        mine = slice(rank * B, (rank + 1) * B)  # this process's rows of the global batch
        results = {}
        for name in losses():
            loss, g1, g2, gw = one_pass(name, x1[mine], x2[mine], weight)
            # what DDP does with the weights' gradients: the mean over processes
            dist.all_reduce(gw)
            results[name] = (loss, g1, g2, gw / WORLD)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_losses_equal_one_process_on_the_global_batch(tmp_path):
    """Each of 2 processes holds 6 of 12 pairs: its loss is the 12-pair loss of one process, its
    embeddings' gradient world × the 12-pair gradient's rows (DDP then divides by world), and the
    projection's gradient averaged as DDP averages it is the one-process gradient."""
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    x1, x2, weight = global_batch()
    for name in losses():
        # no process group: one process, the whole batch
        loss, g1, g2, gw = one_pass(name, x1, x2, weight)
        for rank in range(WORLD):
            r_loss, r_g1, r_g2, r_gw = torch.load(tmp_path / f"rank{rank}.pt",
                                                  weights_only=True)[name]
            mine = slice(rank * B, (rank + 1) * B)
            torch.testing.assert_close(r_loss, loss, rtol=1e-6, atol=1e-7,
                                       msg=f"{name} loss, rank {rank}")
            torch.testing.assert_close(r_g1, WORLD * g1[mine], rtol=1e-5, atol=1e-7,
                                       msg=f"{name} ∂z1, rank {rank}")
            torch.testing.assert_close(r_g2, WORLD * g2[mine], rtol=1e-5, atol=1e-7,
                                       msg=f"{name} ∂z2, rank {rank}")
            torch.testing.assert_close(r_gw, gw, rtol=1e-5, atol=1e-6,
                                       msg=f"{name} ∂weight, rank {rank}")


@pytest.mark.parametrize("name", ["simclr", "barlow"])
def test_one_process_is_untouched_by_the_gathering(name):
    """Without a process group gather_batch hands back the very tensor, so the loss is today's, bit
    for bit."""
    z = torch.randn(4, D, requires_grad=True)
    assert simfle.gather_batch(z) is z
    z1, z2 = torch.randn(8, D), torch.randn(8, D)
    if name == "simclr":  # NT-Xent written out without gather_batch
        z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
        logits = (z @ z.T / 0.1).fill_diagonal_(float("-inf"))
        partners = torch.cat([torch.arange(8, 16), torch.arange(8)])
        expected = torch.nn.functional.cross_entropy(logits, partners)
    else:
        a, b = ((v - v.mean(0)) / (v.std(0) + 1e-6) for v in (z1, z2))
        c = a.T @ b / 8
        diagonal = torch.diagonal(c)
        on, off = (diagonal - 1).pow(2).sum(), c.pow(2).sum() - diagonal.pow(2).sum()
        expected = on + 0.0051 * off
    assert torch.equal(losses()[name](z1, z2), expected)
