"""Data parallelism over ``torch.distributed``: every sum over data becomes a sum over ranks.

Each rank holds a shard ``D_r`` of the data and the *same* weights. Every quantity wdecomp
computes from data is a sum over loss terms divided by their count ``N``, so with

    N = sum_r N_r,     A v = sum_r (sum_{b in D_r} A_b v),

a distributed product is the local product (already scaled by the global ``1/N``) followed by
one all-reduce of a ``(p, k)`` block; the loss value, the gradient and ``N`` itself are reduced
the same way. Shards may be uneven: nothing is averaged per rank, so an uneven split gives the
same numbers as one process (to the round-off of a different summation order).

The switch is ``wd.Objective(model, local_shard, loss=..., distributed=True)`` inside an
initialised process group; every operator built on it (Hessian, GGN, Fisher) is then the global
operator, and algorithms that only call ``@`` (Lanczos, trace and density estimators) run
unchanged on every rank, provided every rank draws the same random vectors (seeded CPU
generators do; see ``docs/distributed.md``).

**Precision.** :func:`all_reduce_sum` accumulates floating-point tensors of lower precision
(float32, float16, bfloat16) in float64 by default and casts the sum back, so the result does
not drift with the number of ranks; this doubles the bytes sent for float32 (``8 p k`` instead
of ``4 p k`` per block product), which is small next to the cost of the products themselves.
Pass ``accumulate_dtype=None`` to reduce in the input's own dtype.

**Devices.** NCCL reduces CUDA tensors only and gloo is used here for CPU tensors: a tensor on
the wrong device for the group's backend is copied to the right one and the result copied back.

Without a process group and with ``distributed=False`` everything is one plain process; with
``distributed=True`` and no process group, :class:`DistributedError` says so at construction.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.errors import WdecompError

__all__ = [
    "CommStats",
    "DistributedError",
    "all_reduce_sum",
    "all_reduce_sum_many",
    "broadcast",
    "check_replicated",
    "checksum",
    "comm_stats",
    "find_free_port",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "is_main_process",
    "launch",
    "reduce_mean_weighted",
    "reduce_sum",
    "require_process_group",
    "shard_range",
]


class DistributedError(WdecompError, RuntimeError):
    """A distributed computation cannot start or did not finish (no group, a failed or hung rank)."""


# ----------------------------------------------------------------------------------- state
def is_distributed() -> bool:
    """Whether a default ``torch.distributed`` process group is initialised (any world size)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group, ``0`` without one."""
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group, ``1`` without one."""
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """``True`` on rank 0, and in a plain single process (use it to guard printing and saving)."""
    return get_rank() == 0


def require_process_group(what: str = "distributed=True") -> None:
    """Raise :class:`DistributedError` unless a default process group is initialised.

    Args:
        what: The feature that needs the group, named in the message.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError(f"{what} needs torch.distributed, which this PyTorch build lacks")
    if not dist.is_initialized():
        raise DistributedError(
            f"{what} needs an initialised torch.distributed process group, and none is: call "
            "torch.distributed.init_process_group(backend='gloo' or 'nccl') first (torchrun sets "
            "MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE for it), or use distributed=False for "
            "one process"
        )


def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """Indices ``[start, stop)`` of this rank's share of ``n`` items, as even as possible.

    The first ``n % world_size`` ranks get one item more. Ranks must each get at least one
    batch for an :class:`~wdecomp.objective.Objective`, so ``n >= world_size`` is required.

    Example:
        >>> [list(shard_range(5, r, 2)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if n < world_size:
        raise DistributedError(f"cannot give each of {world_size} ranks a share of {n} items")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


# ----------------------------------------------------------------------------------- traffic
@dataclass
class CommStats:
    """Counts of this process's collective calls and the bytes of their payloads.

    Attributes:
        all_reduces: Number of all-reduce calls.
        bytes_reduced: Sum of the all-reduced payload sizes (after any float64 upcast). A ring
            all-reduce moves about ``2 (W - 1) / W`` times this per rank over the network.
        broadcasts: Number of broadcast calls.
        bytes_broadcast: Sum of broadcast payload sizes.
    """

    all_reduces: int = 0
    bytes_reduced: int = 0
    broadcasts: int = 0
    bytes_broadcast: int = 0

    def reset(self) -> None:
        """Zero every counter."""
        self.all_reduces = self.bytes_reduced = self.broadcasts = self.bytes_broadcast = 0


#: Process-wide counters, updated by every collective in this module.
comm_stats = CommStats()


def _backend_device(t: Tensor, group: Any) -> torch.device:
    import torch.distributed as dist

    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo" and t.device.type != "cpu":
        return torch.device("cpu")
    return t.device


def _reduce_dtype(dtype: torch.dtype, accumulate_dtype: torch.dtype | None) -> torch.dtype:
    if accumulate_dtype is None or not dtype.is_floating_point or dtype.itemsize >= accumulate_dtype.itemsize:
        return dtype
    return accumulate_dtype


# ----------------------------------------------------------------------------------- collectives
def all_reduce_sum(
    t: Tensor, *, accumulate_dtype: torch.dtype | None = torch.float64, group: Any = None
) -> Tensor:
    """The elementwise sum of ``t`` over all ranks, as a new tensor (``t`` is not modified).

    Every rank must call this with a tensor of the same shape and dtype, in the same order
    relative to its other collectives.

    Args:
        t: Any tensor (detached first). Integer and float64 tensors are reduced as they are.
        accumulate_dtype: Floating dtypes narrower than this are summed in it and cast back
            (default float64, so float32 inputs are reduced in float64); ``None`` keeps the
            input dtype.
        group: A process group (default: the default group).

    Returns:
        The sum, with ``t``'s shape, dtype and device.

    Raises:
        DistributedError: No process group is initialised.
    """
    import torch.distributed as dist

    require_process_group("all_reduce_sum")
    dtype = _reduce_dtype(t.dtype, accumulate_dtype)
    buf = t.detach().to(device=_backend_device(t, group), dtype=dtype, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    comm_stats.all_reduces += 1
    comm_stats.bytes_reduced += buf.numel() * buf.element_size()
    return buf.to(device=t.device, dtype=t.dtype)


def all_reduce_sum_many(
    tensors: Mapping[str, Tensor] | Sequence[Tensor],
    *,
    accumulate_dtype: torch.dtype | None = torch.float64,
    group: Any = None,
) -> Any:
    """Sum several tensors over ranks with one collective (they are packed into one buffer).

    Args:
        tensors: A dict or a sequence of tensors (e.g. one Gram matrix per layer); all must be
            floating point and on one device.
        accumulate_dtype: As in :func:`all_reduce_sum`; the buffer has the widest dtype needed.
        group: A process group (default: the default group).

    Returns:
        The same container type with each tensor replaced by its sum over ranks.
    """
    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(enumerate(tensors))
    if not items:
        return {} if isinstance(tensors, Mapping) else []
    if any(not v.is_floating_point() for _, v in items):
        raise TypeError("all_reduce_sum_many packs floating-point tensors only; reduce others one by one")
    dtype = max((_reduce_dtype(v.dtype, accumulate_dtype) for _, v in items), key=lambda d: d.itemsize)
    flat = torch.cat([v.detach().reshape(-1).to(dtype) for _, v in items])
    total = all_reduce_sum(flat, accumulate_dtype=None, group=group)
    out, start = [], 0
    for key, v in items:
        out.append((key, total[start : start + v.numel()].reshape(v.shape).to(v.dtype)))
        start += v.numel()
    return dict(out) if isinstance(tensors, Mapping) else [v for _, v in out]


def reduce_sum(t: Tensor, distributed: bool) -> Tensor:
    """``all_reduce_sum(t)`` when ``distributed`` is true, else ``t`` unchanged.

    The one-line hook for code that accumulates sums over data (Gram matrices, interaction
    matrices, metric totals) and carries an ``Objective``-style ``distributed`` flag.
    """
    return all_reduce_sum(t) if distributed else t


def reduce_mean_weighted(total: Tensor, count: int | float | Tensor, distributed: bool) -> tuple[Tensor, int | float]:
    """The global mean ``sum_r total_r / sum_r count_r`` and the global count.

    Args:
        total: This rank's *sum* (not mean) over its ``count`` items.
        count: This rank's number of items (examples, tokens, loss terms).
        distributed: Reduce over ranks; otherwise ``(total / count, count)``.

    Returns:
        ``(mean, global_count)``. Weighting by counts makes uneven shards exact (a mean of
        per-rank means would not be).
    """
    c = torch.as_tensor(count, dtype=torch.float64)
    if distributed:
        packed = all_reduce_sum_many([total.to(torch.float64).reshape(-1), c.reshape(1)])
        total_g = packed[0].reshape(total.shape).to(total.dtype)
        c = packed[1][0]
    else:
        total_g = total
    n = float(c)
    n_out: int | float = int(n) if n.is_integer() else n
    return total_g / n, n_out


def broadcast(t: Tensor, src: int = 0, *, group: Any = None) -> Tensor:
    """``src``'s value of ``t`` on every rank, as a new tensor (shapes and dtypes must match).

    Without a process group this returns ``t`` (one process is its own source).
    """
    import torch.distributed as dist

    if not is_distributed():
        return t
    buf = t.detach().to(device=_backend_device(t, group), copy=True)
    dist.broadcast(buf, src=src, group=group)
    comm_stats.broadcasts += 1
    comm_stats.bytes_broadcast += buf.numel() * buf.element_size()
    return buf.to(device=t.device)


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MIX = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_CHUNK = 1 << 20
_WEIGHTS: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _weights(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The first ``n`` odd position weights ``w_j = (j * MIX + C) | 1`` (cached per device, dtype)."""
    w = _WEIGHTS.get((device, dtype))
    if w is None or w.numel() < n:
        j = torch.arange(max(n, 1024 if w is None else 2 * w.numel()), dtype=torch.int64, device=device)
        w = ((j * _MIX + 0x632BE5AB) | 1).to(dtype)  # the low bits of an odd number stay odd
        _WEIGHTS[(device, dtype)] = w
    return w[:n]


def checksum(t: Tensor) -> int:
    """A position-weighted sum of the bit patterns of ``t``'s entries, as a 64-bit integer.

    The entries' bits ``b_j`` (as integers of the entries' width, at most 64 bits) are cut into
    chunks of ``2**20``; within a chunk entry ``j`` contributes ``b_j w_j`` (wrapping at the
    entries' width; 32 bits for entries of up to 4 bytes) with ``w_j`` odd, and chunk ``c``'s sum is
    multiplied by the odd ``2c + 1`` modulo ``2**64``. An odd number is invertible modulo any power
    of two, so changing any one entry's bits (``0.0`` to ``-0.0``, one NaN payload to another)
    always changes the checksum. Runs on ``t``'s own device (no copy to the host). Used by
    :func:`check_replicated` and by the data fingerprints of :mod:`wdecomp.batch`.

    Raises:
        ValueError: ``t`` lives on the meta device (it has no values).
    """
    if t.is_meta:
        raise ValueError("a tensor on the meta device has no values to check")
    flat = t.detach().contiguous().reshape(-1)
    size = flat.element_size()
    bits = flat.view(_INT_OF_SIZE[min(size, 8)])
    wide = torch.int32 if size <= 4 else torch.int64
    if bits.dtype != wide:
        bits = bits.to(wide)
    total = 0
    for c, start in enumerate(range(0, bits.numel(), _CHUNK)):
        part = bits[start : start + _CHUNK]
        chunk_sum = int((part * _weights(part.numel(), part.device, wide)).sum())
        total = (total + chunk_sum * (2 * c + 1)) % (1 << 64)
    return total


def _state_of(x: nn.Module | Tensor) -> list[tuple[str, Tensor]]:
    if isinstance(x, Tensor):
        return [("tensor", x)]
    return list(x.named_parameters()) + list(x.named_buffers())


def _digest(parts: list[tuple[str, Tensor]], *, values: bool = True) -> Tensor:
    """Two int64 words summarising the names, shapes and dtypes of ``parts`` and, with
    ``values``, every bit of their entries."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for name, t in parts:
        h.update(f"{name}{tuple(t.shape)}{t.dtype}:{checksum(t) if values else ''};".encode())
    return torch.tensor([int.from_bytes(h.digest()[i : i + 8], "little", signed=True) for i in (0, 8)])


def _same_as_rank0(digest: Tensor) -> bool:
    return bool(torch.equal(digest, broadcast(digest, 0)))


def check_replicated(x: nn.Module | Tensor, name: str = "model", *, atol: float = 0.0) -> None:
    """Raise :class:`DistributedError` unless every rank holds the same weights (or tensor).

    A distributed objective assumes identical weights on every rank (each rank differentiates
    the same function on its own data); ``Objective(distributed=True)`` calls this when it is
    built and before every reduction of a product, gradient or value.

    With ``atol=0`` (default) the check is exact and cheap: each rank hashes the names, shapes,
    dtypes and the bits of every parameter and buffer (:func:`checksum`), and rank 0's 16-byte
    digest is compared with everyone's (a broadcast and an all-reduce of ``world_size`` flags).
    Bits are compared, so a NaN on one rank never passes for equal. With ``atol > 0`` rank 0's
    values are broadcast and compared entry by entry with ``torch.isclose(..., equal_nan=True)``
    (a NaN differs from every number). Every rank raises or none does, and the message names the
    ranks that differ and those holding NaN or inf.

    Args:
        x: A module (its parameters and buffers, in order) or a tensor.
        name: What to call ``x`` in the message.
        atol: Largest allowed absolute difference (``0``: bit-for-bit equality).

    Raises:
        DistributedError: the ranks differ, or no process group is initialised.
        ValueError: ``atol`` is negative or NaN.
    """
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    require_process_group("check_replicated")
    parts = _state_of(x)
    world, rank = get_world_size(), get_rank()
    flags = torch.zeros(3, world, dtype=torch.float64)
    flags[0, rank] = float(not _same_as_rank0(_digest(parts, values=False)))
    flags[1, rank] = float(
        any(not bool(torch.isfinite(t).all()) for _, t in parts if t.is_floating_point() or t.is_complex())
    )
    flags = all_reduce_sum(flags)  # every rank learns whether the layouts agree before comparing values
    if not bool(flags[0].any()):
        mine = torch.zeros(world, dtype=torch.float64)
        if atol == 0:
            mine[rank] = float(not _same_as_rank0(_digest(parts)))
        else:
            near = [torch.isclose(t, broadcast(t, 0), rtol=0.0, atol=atol, equal_nan=True).all() for _, t in parts]
            mine[rank] = float(not all(bool(ok) for ok in near))
        flags[2] = all_reduce_sum(mine)
    layout = [r for r in range(world) if flags[0, r] > 0]
    broken = [r for r in range(world) if flags[1, r] > 0]
    differ = [r for r in range(world) if flags[2, r] > 0]
    found = (
        ([f"ranks {layout} hold other parameter names, shapes or dtypes than rank 0"] if layout else [])
        + ([f"ranks {differ} hold other values than rank 0"] if differ else [])
        + ([f"ranks {broken} hold NaN or inf"] if broken else [])
    )
    if found:
        raise DistributedError(
            f"{name} is not replicated as finite weights on every rank ({'; '.join(found)}): load the "
            "same finite weights on every rank (e.g. broadcast a state_dict from rank 0)"
        )


# ----------------------------------------------------------------------------------- local launch
def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and read the port back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _write_report(outdir: str, name: str, text: str) -> None:
    """Write ``outdir/name`` whole or not at all (temp file + rename): a reader never sees half of it."""
    tmp = os.path.join(outdir, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(outdir, name))


def _launch_worker(
    rank: int, fn: Callable[..., Any], world_size: int, args: tuple, port: int, backend: str,
    pg_timeout_s: float, outdir: str, num_threads: int,
) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(num_threads)
    if hasattr(signal, "SIGUSR1"):  # the launcher asks a rank that does not finish where it is
        stack_file = open(os.path.join(outdir, f"rank{rank}.stack"), "w")  # noqa: SIM115 - open for life
        faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=False)

    def record_failure() -> None:
        # Timestamped before the group is torn down (which makes the peers fail too), so the
        # launcher can tell the first failure from the ones it caused.
        _write_report(outdir, f"rank{rank}.err", f"{time.time()!r}\n{traceback.format_exc()}")

    try:
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=pg_timeout_s)
        )
    except BaseException:
        record_failure()
        raise
    try:
        result = fn(rank, world_size, *args)
        # A file per rank, not a queue: a full pipe would block a rank that returns a lot.
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    except BaseException:
        record_failure()
        raise
    finally:
        dist.destroy_process_group()


_COLLECTIVE_FRAMES = ("distributed_c10d", "torch/distributed/")
_TIMEOUT_WORDS = ("timed out", "timeout", "connection closed by peer", "connection reset")


def _errors(outdir: str, nprocs: int) -> list[tuple[float, int, str]]:
    """``(time, rank, traceback)`` of every rank's complete error report, earliest first."""
    out = []
    for r in range(nprocs):
        path = os.path.join(outdir, f"rank{r}.err")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            stamp, _, tb = f.read().partition("\n")
        try:
            when = float(stamp)
        except ValueError:  # unreadable stamp: order it last rather than fail the report
            when = float("inf")
        out.append((when, r, tb.rstrip()))
    return sorted(out)


def _stacks(procs: Sequence[Any], outdir: str, ranks: Sequence[int]) -> dict[int, str]:
    """Where each of ``ranks`` (still running) is: its Python stack, dumped on SIGUSR1."""
    if not ranks or not hasattr(signal, "SIGUSR1"):
        return {}
    for r in ranks:
        with contextlib.suppress(OSError):
            os.kill(procs[r].pid, signal.SIGUSR1)
    out: dict[int, str] = {}
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and len(out) < len(ranks):
        time.sleep(0.1)
        for r in ranks:
            text = ""
            with contextlib.suppress(OSError), open(os.path.join(outdir, f"rank{r}.stack")) as f:
                text = f.read()
            if r not in out and "File " in text and text.endswith("\n"):
                out[r] = text
    return out


def _in_collective(stack: str) -> bool:
    frames = [line for line in stack.splitlines() if line.strip().startswith("File ")]
    return bool(frames) and any(key in frames[0] for key in _COLLECTIVE_FRAMES)


def _innermost(stack: str) -> str:
    frames = [line.strip() for line in stack.splitlines() if line.strip().startswith("File ")]
    return frames[0] if frames else "unknown place"


def _hang_report(stacks: dict[int, str], nprocs: int) -> tuple[list[int], str]:
    """The ranks that hung (running outside any collective) and a paragraph naming them."""
    hung = [r for r, s in sorted(stacks.items()) if not _in_collective(s)]
    waiting = [r for r, s in sorted(stacks.items()) if _in_collective(s)]
    lines = [f"rank {r} of {nprocs} hung outside any collective, in {_innermost(stacks[r])}" for r in hung]
    lines += [f"rank {r} of {nprocs} was waiting in a collective ({_innermost(stacks[r])})" for r in waiting]
    return hung, "\n".join(lines)


def _no_stack(asked: Sequence[int], stacks: dict[int, str], nprocs: int) -> str:
    silent = [r for r in asked if r not in stacks]
    return "".join(f"\nrank {r} of {nprocs} gave no stack (still starting up, or not a Python frame)" for r in silent)


def _failure_report(outdir: str, nprocs: int, stacks: dict[int, str] | None = None) -> str:
    """Who failed first, and who only failed because of it.

    A rank whose first error is a collective timeout while another rank was still running outside
    any collective did not cause the failure: the running rank hung, and it is named first.
    """
    errors = _errors(outdir, nprocs)
    hung, hang_text = _hang_report(stacks or {}, nprocs)
    if not errors:
        return hang_text
    _, first, tb = errors[0]
    last_line = tb.splitlines()[-1].lower() if tb else ""
    if hung and any(w in last_line for w in _TIMEOUT_WORDS):
        head = (f"rank {hung[0]} of {nprocs} hung: {hang_text}\nrank {first} timed out waiting for it in a "
                f"collective:\n{tb}")
    else:
        head = f"rank {first} of {nprocs} failed first:\n{tb}" + (f"\n{hang_text}" if hang_text else "")
    lines = [head]
    for _, r, later in errors[1:]:
        last = later.splitlines()[-1] if later else ""
        lines.append(f"rank {r} failed afterwards (likely as a consequence): {last}")
    return "\n".join(lines)


def _wait(processes: Sequence[Any], outdir: str, nprocs: int, deadline: float, timeout_s: float,
          running: Callable[[Sequence[Any]], list[int]]) -> None:
    """Wait until every rank exits 0; on the first failure or at the deadline, raise with the report.

    The ranks still running are asked for their stacks *before* any is stopped, so a hung rank is
    caught in the act (``torch.multiprocessing``'s own ``join`` would terminate it first).
    """
    while True:
        codes = [p.exitcode for p in processes]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            report = _failure_report(outdir, nprocs, _stacks(processes, outdir, running(processes)))
            if not report:
                code = codes[failed[0]]
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                report = (f"rank {failed[0]} of {nprocs} {how} without an error report (killed from outside, "
                          "or out of memory)")
            raise DistributedError(report)
        if all(c == 0 for c in codes):
            return
        if time.monotonic() >= deadline:
            alive = [r for r, p in enumerate(processes) if p.is_alive()]
            stacks = _stacks(processes, outdir, alive)
            report = _failure_report(outdir, nprocs, stacks) + _no_stack(alive, stacks, nprocs)
            raise DistributedError(f"distributed run did not finish within {timeout_s:.0f} s: rank(s) {alive} still "
                                   "running were killed" + (f"\n{report}" if report else ""))
        multiprocessing.connection.wait([p.sentinel for p in processes if p.exitcode is None],
                                        timeout=max(0.01, min(1.0, deadline - time.monotonic())))


def launch(
    fn: Callable[..., Any],
    nprocs: int,
    args: tuple = (),
    *,
    backend: str = "gloo",
    timeout_s: float = 120.0,
    pg_timeout_s: float = 30.0,
    num_threads: int | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``nprocs`` fresh processes on this machine.

    A loopback process group (``127.0.0.1``, a free port) is initialised in each process with a
    collective timeout of ``pg_timeout_s``, so a rank stuck in a collective raises instead of
    waiting forever. For tests, notebooks and benchmarks; on a cluster use ``torchrun``.

    When the run fails, the report names the rank that caused it: the first rank to raise, or,
    when that error is a collective timeout, the rank that was still running outside any
    collective (its Python stack is read with :mod:`faulthandler` on ``SIGUSR1``, POSIX only).
    Error reports are written whole (temporary file, then rename) and read only once complete.

    Args:
        fn: A picklable (module-level) function; its return value must be ``torch.save``-able.
        nprocs: Number of processes.
        args: Extra positional arguments for ``fn``.
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one GPU per process).
        timeout_s: Wall-clock limit for the whole run; processes still alive then are killed.
        pg_timeout_s: ``init_process_group(timeout=...)``: how long a collective may wait.
        num_threads: Intra-op threads per process (default: CPU cores divided by ``nprocs``,
            at least 1, so the processes do not oversubscribe the cores).

    Returns:
        The return values of ``fn``, indexed by rank.

    Raises:
        DistributedError: A rank raised or hung (the culprit's traceback or stack is in the
            message, with the ranks that failed because of it; the rest are terminated), or the
            run exceeded ``timeout_s`` (the ranks still running are named, hung ones first, and
            killed).
    """
    import torch.multiprocessing as mp

    port = find_free_port()
    threads = num_threads if num_threads is not None else max(1, (os.cpu_count() or 1) // nprocs)
    outdir = tempfile.mkdtemp(prefix="wdecomp-launch-")

    def running(processes: Sequence[Any]) -> list[int]:
        return [r for r, p in enumerate(processes) if p.is_alive()
                and not os.path.exists(os.path.join(outdir, f"rank{r}.err"))]

    try:
        procs = mp.start_processes(
            _launch_worker,
            args=(fn, nprocs, tuple(args), port, backend, pg_timeout_s, outdir, threads),
            nprocs=nprocs,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        try:
            _wait(procs.processes, outdir, nprocs, deadline, timeout_s, running)
        finally:
            for p in procs.processes:
                if p.is_alive():
                    p.kill()
                    p.join(5)
        files = [os.path.join(outdir, f"rank{r}.pt") for r in range(nprocs)]
        missing = [r for r, f in enumerate(files) if not os.path.exists(f)]
        if missing:
            raise DistributedError(f"rank(s) {missing} exited without a result")
        return [torch.load(f, weights_only=False) for f in files]
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
