"""Expert parallelism at run time: each rank keeps experts [r E/ep, (r+1) E/ep) of every
MoE layer (models/moe.py GroupedExperts, or transformers' stacked experts: LibraryAllToAll),
r its place in its ep group, and dispatches rows
with torch.distributed's autograd all-to-all (torchtitan's ExpertParallel does the same
with DTensor; here the stacks are plain local tensors, like the feature partition's).

Groups: the dp ranks of one (pp, tp) position are cut into dp / ep groups of ep
neighbours; rank j of every group holds the same experts, and those dp / ep ranks form
its replica group.

Forward of one MoE layer on a rank holding `local` experts (N k rows sorted by expert):
  1. all_to_all_single of the per-expert counts: how many rows each source sends to each
     of this rank's experts (integers, no gradient);
  2. all_to_all_single_autograd of the rows: to the rank holding their expert;
  3. the local experts on the received rows (source-major, expert-minor runs);
  4. all_to_all_single_autograd back, in the sender's order.
Gradients: data parallelism skips the split stacks (DDP's ignore list, FSDP2's
ignored_params); after backward each is summed over its replica group and divided by dp:
the mean over the global batch, as DDP gives every other parameter.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd

from autopar.models.moe import GroupedExperts, expert_modules
from autopar.runtime.mesh import ParallelDims, global_rank
from autopar.runtime.names import clean_name
from autopar.runtime.parallelized import LocalSlice, Parallelized

STACKS = ("w1", "w2", "w3")


def apply(par: Parallelized) -> None:
    s, ctx = par.strategy, par.ctx
    group, replicas = expert_groups(ctx.dims, s.ep, ctx.coords.pp, ctx.coords.dp, ctx.coords.tp)
    rank = ctx.coords.dp % s.ep
    split = 0
    for chunk in par.chunks:
        for name, mod in expert_modules(chunk.module):
            if isinstance(mod, GroupedExperts):
                first = split_experts(mod, rank, s.ep)
                mod.dispatch = AllToAll(group, s.ep)
                stacks = [(attr, getattr(mod, attr)) for attr in STACKS if getattr(mod, attr) is not None]
            else:
                first = split_library_experts(mod, rank, s.ep)
                mod.forward = LibraryAllToAll(mod, group, s.ep)
                stacks = list(mod.named_parameters(recurse=False))
            for attr, p in stacks:
                full = clean_name(f"{name}.{attr}")
                par.param_offsets[full] = (first, *([0] * (p.dim() - 1)))
                par.gatherers[full] = lambda t, g=group, n=s.ep: gather_experts(t, g, n)
                par.local_slices[full] = LocalSlice(0, first, first + p.shape[0], p.shape[0] * s.ep)
                par.dp_ignored.append(full)
            split += 1
    par.after_backward.append(lambda: reduce_expert_grads([p for c in par.chunks for _, p in par.named_dp_ignored(c.module)], replicas, s.dp))
    par.applied.append(f"expert(ep={s.ep}: {split} MoE layers, experts {rank}/{s.ep} of each, all-to-all dispatch)")


def expert_groups(dims: ParallelDims, ep: int, pp: int, dp: int, tp: int):
    """(this rank's ep group, its expert-replica group or None when dp == ep); every rank
    creates every group, in one order."""
    outer = dims.dp // ep
    ep_lists = [[global_rank(dims, p, o * ep + j, t) for j in range(ep)] for p in range(dims.pp) for t in range(dims.tp) for o in range(outer)]
    group, _ = dist.new_subgroups_by_enumeration(ep_lists)
    if outer == 1:
        return group, None
    replica_lists = [[global_rank(dims, p, o * ep + j, t) for o in range(outer)] for p in range(dims.pp) for t in range(dims.tp) for j in range(ep)]
    replicas, _ = dist.new_subgroups_by_enumeration(replica_lists)
    return group, replicas


def split_experts(mod: GroupedExperts, rank: int, ep: int) -> int:
    """Keep experts [rank E/ep, (rank+1) E/ep) of each stack (meta: shapes only); returns the first."""
    return _keep_slice(mod, [(a, getattr(mod, a)) for a in STACKS if getattr(mod, a) is not None], mod.local_experts, rank, ep)


def split_library_experts(mod: nn.Module, rank: int, ep: int) -> int:
    """transformers' stacked experts: keep experts [rank E/ep, (rank+1) E/ep) of every
    parameter and tell the module it has E/ep (its forward skips index num_experts)."""
    first = _keep_slice(mod, list(mod.named_parameters(recurse=False)), mod.num_experts, rank, ep)
    mod.num_experts //= ep
    return first


def _keep_slice(mod: nn.Module, stacks: list[tuple[str, nn.Parameter]], experts: int, rank: int, ep: int) -> int:
    """Replace each (E, ...) stack by its experts [rank E/ep, (rank+1) E/ep); returns the first."""
    local = experts // ep
    first = rank * local
    for attr, p in stacks:
        kept = p.detach()[first : first + local]
        setattr(mod, attr, nn.Parameter(kept if kept.is_meta else kept.clone(), requires_grad=p.requires_grad))
    return first


def exchange(group, size: int, local: int, x: torch.Tensor, counts: torch.Tensor, compute) -> torch.Tensor:
    """The module docstring's steps 1-4: rows x (N k, h) sorted by expert, counts (ep local,)
    rows per expert; compute(rows, received) runs this rank's experts on the rows it
    received, received (ep, local) the rows from each source for each local expert."""
    mine = torch.empty_like(counts)  # (ep * local,): rows each source sends to each of my experts
    dist.all_to_all_single(mine, counts, group=group)
    send = counts.view(size, local).sum(1).tolist()
    received = mine.view(size, local)
    recv = received.sum(1).tolist()
    rows = all_to_all_single_autograd(x, recv, send, group)
    return all_to_all_single_autograd(compute(rows, received), send, recv, group)


class LibraryAllToAll:
    """forward(hidden_states (N, h), top_k_index (N, k), top_k_weights (N, k)) of a
    transformers experts module split over an ep group. The (token, choice) rows are sorted
    by expert and exchanged as in AllToAll; the receiving rank runs the module's own forward
    on them (each row with its local expert, weight 1), so the experts' math stays the
    library's; the sender weights the returned rows and sums them per token, in expert
    order as the library does."""

    def __init__(self, mod: nn.Module, group, size: int):
        self.mod, self.group, self.size = mod, group, size
        self.own = type(mod).forward  # the library's forward (its experts implementation included)

    def __call__(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        if hidden_states.is_meta:  # shape inference (pipeline stages): nothing to send
            return torch.empty_like(hidden_states)
        local, k = self.mod.num_experts, top_k_index.shape[-1]
        flat = top_k_index.reshape(-1)  # (N k,)
        order = flat.argsort(stable=True)  # rows grouped by expert, tokens in order inside each
        token = order // k
        counts = torch.bincount(flat, minlength=local * self.size)  # (E,)

        def compute(rows: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
            ids = torch.arange(local, device=rows.device).repeat(self.size).repeat_interleave(received.reshape(-1))  # source-major runs
            ones = torch.ones(rows.shape[0], 1, dtype=top_k_weights.dtype, device=rows.device)
            return self.own(self.mod, rows, ids.unsqueeze(1), ones)

        back = exchange(self.group, self.size, local, hidden_states[token], counts, compute)
        weighted = back * top_k_weights.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros_like(hidden_states).index_add_(0, token, weighted.to(hidden_states.dtype))


class AllToAll:
    """GroupedExperts.dispatch over an ep group (the module docstring's steps 1-4)."""

    def __init__(self, group, size: int):
        self.group, self.size = group, size

    def __call__(self, experts: GroupedExperts, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if x.is_meta:  # shape inference (pipeline stages): nothing to send
            return x.new_empty(x.shape[0], experts.w2.shape[-1])
        local = experts.local_experts
        return exchange(self.group, self.size, local, x, counts,
                        lambda rows, received: experts.compute(rows, received.reshape(-1).tolist(), list(range(local)) * self.size))


def reduce_expert_grads(params: list[nn.Parameter], replicas, dp: int) -> None:
    """Sum each split stack's gradient over its replicas, then / dp: the global-batch mean."""
    for p in params:
        if p.grad is None:
            continue
        if replicas is not None:
            dist.all_reduce(p.grad, group=replicas)
        p.grad.div_(dp)


def gather_experts(local: torch.Tensor, group, ep: int) -> torch.Tensor:
    """The full stack (E, ...) from every ep rank's slice (collective over the ep group)."""
    pieces = [torch.empty_like(local) for _ in range(ep)]
    dist.all_gather(pieces, local.detach().contiguous(), group=group)
    return torch.cat(pieces)
