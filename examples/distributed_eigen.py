"""Top Hessian eigenpairs, trace and GGN rank of a model with its data split across processes.

Run on one machine with N processes (gloo on CPU; NCCL if every process has a GPU):

    torchrun --standalone --nproc_per_node=2 examples/distributed_eigen.py

or on a cluster (the same command on every node; see docs/distributed.md):

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 --rdzv_id=eig1 examples/distributed_eigen.py

Every rank builds the same model (same seed) and keeps its own shard of the data; shards may
be uneven (here 1001 examples over N ranks). Every rank runs the same Lanczos iteration on the
globally reduced Hessian, with the same seeded start block, so all ranks hold the same result;
rank 0 prints it. Without torchrun (no ``RANK`` in the environment) it runs as one process.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import wdecomp as wd
from wdecomp import distributed as wdist


def make_problem(n: int = 1001, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small float64 MLP and a synthetic 3-class data set, identical on every rank."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3)).double().eval()
    x = torch.randn(n, 10, generator=gen, dtype=torch.float64)
    y = (x[:, :3].argmax(dim=1) + (x[:, 3] > 1).long()) % 3
    return model, x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5, help="number of top eigenpairs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--examples", type=int, default=1001)
    args = parser.parse_args()

    launched = "RANK" in os.environ  # torchrun (or any launcher) sets RANK, WORLD_SIZE, MASTER_*
    if launched:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=timedelta(minutes=10))
    rank, world = wdist.get_rank(), wdist.get_world_size()
    say = print if wdist.is_main_process() else (lambda *a, **k: None)

    model, x, y = make_problem(args.examples)
    if torch.cuda.is_available() and launched:
        model = model.cuda()
    shard = wdist.shard_range(len(x), rank, world)  # uneven when N does not divide the data
    local = [
        (x[i : min(i + args.batch_size, shard.stop)], y[i : min(i + args.batch_size, shard.stop)])
        for i in range(shard.start, shard.stop, args.batch_size)
    ]
    if launched:
        wdist.check_replicated(model)  # every rank must differentiate the same weights

    obj = wd.Objective(model, local, loss="cross_entropy", distributed=launched)
    H = wd.hessian(obj)
    say(f"{world} process(es); this rank holds {len(shard)} of {obj.total_count} examples; p = {H.shape[0]}")
    say(f"loss {obj.value():.6f}, gradient norm {float(obj.gradient().norm()):.3e}")

    t0 = time.perf_counter()
    try:
        from wdecomp.spectral import eigh
        from wdecomp.spectral.rank import rank as numerical_rank
        from wdecomp.spectral.trace import hutchinson_trace
    except ImportError:  # spectral not installed: fall back to a power iteration on products
        eigh = None
    if eigh is not None:
        top = eigh(H, k=args.k, which="largest", seed=0)  # same seed on every rank: same start block
        say(top)
        say(hutchinson_trace(H, 64, seed=1))
        say(f"GGN rank (dense, from reduced products): {numerical_rank(wd.ggn(obj), method='dense')}")
    else:
        v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0), dtype=H.dtype)
        for _ in range(200):
            v = H @ v
            v = v / v.norm()
        say(f"top eigenvalue (power iteration): {float(v @ (H @ v)):.6e}")
    say(f"spectral work: {time.perf_counter() - t0:.2f} s, {wdist.comm_stats.all_reduces} all-reduces, "
        f"{wdist.comm_stats.bytes_reduced / 2**20:.2f} MiB reduced on this rank")
    if launched:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
