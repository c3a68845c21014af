"""torch.distributed helpers: the process group from torchrun's environment, and a batch gather
that keeps gradients, for the losses whose negatives are the other clips of the batch (CPC, CMCM).

Each rank computes such a loss on the gathered global batch; the gather's backward sums the
ranks' gradients into each share. With equal shares, DDP's gradient averaging then gives exactly
the single-process gradient of the global batch. (Gathering the sizes first is one tiny host
sync; it is skipped entirely when not distributed.)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = torch.zeros(world, dtype=torch.long, device=x.device)
        sizes[rank] = x.shape[dim]
        dist.all_reduce(sizes)  # shares may differ (a last batch, a library user's split)
        sizes = sizes.tolist()
        padded = list(x.shape)
        padded[dim] = max(sizes)
        buffer = x.new_zeros(padded)
        buffer.narrow(dim, 0, x.shape[dim]).copy_(x)
        parts = [torch.empty_like(buffer) for _ in range(world)]
        dist.all_gather(parts, buffer)
        ctx.dim, ctx.rank, ctx.sizes = dim, rank, sizes
        return torch.cat([part.narrow(dim, 0, size) for part, size in zip(parts, sizes)], dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank computed the same global loss: sum their gradients
        start = sum(ctx.sizes[: ctx.rank])
        return grad.narrow(ctx.dim, start, ctx.sizes[ctx.rank]), None


def gather_batch(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """All ranks' x concatenated along `dim` in rank order, differentiable; x itself if not distributed."""
    return _GatherBatch.apply(x, dim) if active() else x


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> ProcessGroup:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), if any.

    timeout_s bounds every wait on a peer, so that a peer that never comes ends in an error torchrun
    can restart instead of a hang.

    device: auto, cpu, cuda or cuda:N (one process; under torchrun each process takes the GPU of
    its LOCAL_RANK). nccl with one GPU per process when CUDA is used, gloo on CPUs."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        single = device if device.startswith("cuda:") else "cuda" if use_cuda else "cpu"
        return ProcessGroup(device=torch.device(single))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun shares one store across restarts of the group: without a per-restart prefix the
        # restarted workers read the dead workers' Gloo addresses and fail (connection refused) or hang.
        store = dist.PrefixStore(f"codaar/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world,
                                timeout=timeout)
    return ProcessGroup(rank, world, local, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
