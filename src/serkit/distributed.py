"""Work split over processes and machines with ``torch.distributed``: the process group ``torchrun`` describes.

``torchrun --nproc_per_node=N [--nnodes=M ...] -m serkit.cli extract ...`` starts N processes per machine with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`init_from_env` joins them into one group
(gloo on CPUs, nccl on GPUs: rank ``r`` uses ``cuda:LOCAL_RANK``). Without those variables everything is one
process and every helper here is a no-op. Training across GPUs and machines is Lightning's (DDP), not this.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` outside it."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env(device: str = "cpu") -> tuple[int, int, str]:
    """Join torchrun's process group when ``WORLD_SIZE > 1``; returns ``(rank, world_size, this rank's device)``.

    ``device`` ``"cuda"`` becomes ``cuda:LOCAL_RANK`` (nccl); anything else uses gloo.
    """
    rank, world, local = env_world()
    if world > 1 and torch.device(device).type == "cuda" and torch.device(device).index is None:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return rank, world, device


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world()[1] > 1:
        dist.barrier()


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable, produced by this program), in rank order; ``[obj]`` in a single process."""
    if world()[1] == 1:
        return [obj]
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
