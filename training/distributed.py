"""torchrun helpers: one process per GPU (or CPU process with gloo), rank 0 logs and writes files.

Run without torchrun, everything here degrades to a single process with no process group.
"""

import os

import torch
import torch.distributed as dist


def init() -> torch.device:
    """Joins the process group torchrun describes (if any) and returns this process's device."""
    cuda = torch.cuda.is_available()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        return torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return torch.device("cuda" if cuda else "cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def mean_over_processes(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean of each tensor over all processes, so every rank logs (and stops on) the same loss."""
    if not is_distributed():
        return values
    names = sorted(values)
    stacked = torch.stack([values[name].detach() for name in names])
    dist.all_reduce(stacked)
    return dict(zip(names, stacked / world_size(), strict=True))


def _reduced(value: int, op) -> int:
    # NCCL reduces CUDA tensors only.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(value, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=op)
    return int(tensor)


def sum_over_processes(count: int) -> int:
    return _reduced(count, dist.ReduceOp.SUM) if is_distributed() else count


def all_true(flag: bool) -> bool:
    """Whether flag holds on every process: collective steps (DDP's backward) need all or none."""
    return bool(_reduced(int(flag), dist.ReduceOp.MIN)) if is_distributed() else flag


def gather(items: list) -> list:
    """Every process's items, concatenated in rank order, on every process."""
    if not is_distributed():
        return items
    everyone = [None] * world_size()
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
