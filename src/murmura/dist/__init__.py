"""Sharded simulation over ``torch.distributed``: one block of nodes per process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from murmura.dist.sharded import HaloPlan, ShardedSimulation, halo_plan, owner_of, shard_bounds

LAUNCH_HINT = (
    "launch it with torchrun, which starts the processes and sets RANK, WORLD_SIZE, "
    "MASTER_ADDR and MASTER_PORT: torchrun --nproc-per-node 2 -m murmura run CONFIG "
    "--backend dist (see docs/scaling.md)"
)


def init_from_environment(device: str = "cpu") -> tuple[bool, str]:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on
    GPUs). Returns whether this call created the group, and the device this rank uses
    (``cuda:LOCAL_RANK`` for ``cuda``)."""
    if device.startswith("cuda") and ":" not in device:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if dist.is_initialized():
        return False, device
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise RuntimeError(f"--backend dist: {', '.join(missing)} not set; {LAUNCH_HINT}")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True, device


__all__ = ["LAUNCH_HINT", "HaloPlan", "ShardedSimulation", "halo_plan", "init_from_environment",
           "owner_of", "shard_bounds"]
