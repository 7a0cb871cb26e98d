"""The collective side of data-parallel learner ranks: a `torch.distributed` process group among the
learner actors (NCCL between GPUs, gloo on the CPU), and the two collectives a Dr. GRPO update needs.

Each rank computes the loss of its own share of the step's groups with the step's global constant divisor
(all examples x max completion tokens), so the sum of the ranks' gradients is the gradient a single learner
computes on the whole batch. Only the trainable (LoRA) gradients cross: one flat buffer, one all-reduce per
optimizer step. Every rank then clips and steps its own optimizer on the same summed gradient, so the
ranks' adapters stay identical without ever being sent.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch
import torch.distributed as dist


def free_address() -> str:
    """`tcp://IP:PORT` on this node, for the other ranks to rendezvous at: the node's address as Ray sees
    it (reachable from the other nodes of the cluster) and a port the OS just handed out."""
    import ray

    ip = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"tcp://{ip}:{port}"


class RankGroup:
    """This process's place in the learner ranks' process group."""

    def __init__(self, rank: int, world_size: int, address: str, *, timeout_s: float) -> None:
        # NCCL only between GPUs; gloo on the CPU (and in tests)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(
            backend,
            init_method=address,
            rank=rank,
            world_size=world_size,
            # a collective waiting longer than this for a dead or stuck rank raises instead of hanging
            timeout=timedelta(seconds=timeout_s),
        )
        self.rank, self.world_size, self.backend = rank, world_size, backend

    def broadcast_parameters(self, params: list[torch.Tensor]) -> None:
        """Rank 0's values into every rank's tensors: the ranks start from one adapter whatever their
        initialisation did."""
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        dist.broadcast(flat, src=0)
        with torch.no_grad():
            offset = 0
            for p in params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace each parameter's gradient by its sum over the ranks (a rank that had no examples adds
        zeros), through one flat buffer."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def gather(self, items: list) -> list:
        """Every rank's `items` concatenated in rank order, on every rank (small Python objects: the
        micro-batches' metrics)."""
        out: list = [None] * self.world_size
        dist.all_gather_object(out, items)
        return [item for part in out for item in part]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
