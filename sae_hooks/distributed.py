"""Data parallelism under ``torchrun``: who am I, and the few collectives the trainer needs.

Each rank streams its own shard of sequences (``iter_batches(rank=, world_size=)``), runs its own
LM forward and SAE backward, then the gradients are averaged with one ``all_reduce`` per SAE
(flattened into a single buffer: one message, not one per tensor). Manual averaging instead of
``DistributedDataParallel`` because an SAE's training entry point is ``training_loss``, not
``forward``, and the TopK kernels use custom autograd functions; the arithmetic is the same.
Everything that decides what the next step does is reduced too — dead-latent counters (a latent
fired anywhere), the activation-norm estimate, the decoder-bias init sample — so every rank holds
bitwise the same SAE after every step and only rank 0 writes files.

Multi-node: nothing here is node-specific. Launch the same command on every node with
``torchrun --nnodes=N --nproc_per_node=G --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT -m sae_hooks train ...``;
ranks are numbered globally, each takes every ``world_size``-th sequence of the same deterministic
stream, and the global batch is ``--batch-tokens × world_size``. Keep ``--lr`` for the global batch.
A rank that raises exits non-zero; torchrun's agent then stops the others, and every collective
carries a timeout (``timeout_s``) so no rank can wait forever on a dead peer.

    ctx = init_distributed()          # reads RANK / WORLD_SIZE / LOCAL_RANK; single process if unset
    try: ... finally: shutdown(ctx)
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistContext", "all_reduce_grads", "all_reduce_", "gather_rows", "init_distributed", "shutdown"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel job."""

    rank: int = 0
    """Global rank, 0..world_size-1."""
    world_size: int = 1
    """Number of processes in the job."""
    local_rank: int = 0
    """Rank on this node (picks the GPU)."""
    backend: str | None = None
    """``"gloo"``, ``"nccl"``, or None for a single process."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only this rank writes files and logs."""
        return self.rank == 0


def init_distributed(device: str = "cpu", timeout_s: float = 300.0) -> DistContext:
    """Join the process group torchrun describes in the environment; a plain run gets a 1-process context.

        ctx = init_distributed("cuda")    # NCCL, one GPU per local rank
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, backend)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (call in ``finally``; safe if it was never joined)."""
    if ctx.enabled and dist.is_initialized():
        # Tear down together: a rank that closes its gloo connections while a peer is still
        # working (rank 0 writing files) can make that peer's transport thread abort.
        # A rank leaving on an exception skips this: its peers are stopped by torchrun.
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_(ctx: DistContext, t: Tensor, op: str = "sum") -> Tensor:
    """In-place all-reduce (``"sum"``, ``"max"``, ``"mean"``); a no-op for one process.

        all_reduce_(ctx, fired_counts, "max")
    """
    if not ctx.enabled:
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "mean": dist.ReduceOp.SUM}
    dist.all_reduce(t, op=ops[op])
    if op == "mean":
        t.div_(ctx.world_size)
    return t


def all_reduce_grads(ctx: DistContext, params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks with one flattened all-reduce.

        loss.backward(); all_reduce_grads(ctx, sae.parameters()); opt.step()
    """
    if not ctx.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_(ctx, flat, "mean")
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def gather_rows(ctx: DistContext, x: Tensor) -> Tensor:
    """Concatenate every rank's rows ``[n_r, d]`` in rank order (sizes may differ).

        sample = gather_rows(ctx, first_batch)   # the same tensor on every rank
    """
    if not ctx.enabled:
        return x
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n)
    top = int(max(int(s) for s in sizes))
    padded = torch.zeros((top, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s)] for o, s in zip(out, sizes)])
