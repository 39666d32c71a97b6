"""Alpha-beta cost of collectives on a two-level topology (node links, then network).

A group's ranks sit on nodes: `per_node` of its `size` ranks share a node. A group
inside one node uses the intra-node links (NVLink/NVSwitch: `intra_node` is per
device). A group spanning nodes is limited by each rank's share of its node's NICs:
all `nic_share` ranks of a node that talk across nodes at once split the node's
bandwidth (`inter_node` is per node). That bound is what the published ZeRO-3 runs
show (Megatron-LM SC'21 Table 2: iteration time flat from 768 to 1,536 GPUs).

Volumes are the bandwidth-optimal ring figures (Patarasuk & Yuan 2009; Thakur et
al. 2005): all-reduce moves 2(d-1)/d * n per rank, reduce-scatter and all-gather
(d-1)/d * n. Latency: ring steps inside a node, a tree
(2 log2 nodes) across nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autopar.cost.efficiency import Efficiency
from autopar.spec.cluster import Cluster


@dataclass(frozen=True)
class Placement:
    size: int  # ranks in the group
    per_node: int  # ranks of the group on one node
    nic_share: int  # ranks of a node sharing its NICs at the same time

    @property
    def nodes(self) -> int:
        return -(-self.size // self.per_node)


def place(size: int, stride: int, devices_per_node: int, used_per_node: int) -> Placement:
    """Where a group of `size` ranks, `stride` apart in rank order, sits.

    Ranks are numbered node by node; groups of the innermost dimension have stride 1.
    """
    if size <= 1:
        return Placement(1, 1, used_per_node)
    per_node = max(1, min(size, devices_per_node // stride)) if stride < devices_per_node else 1
    return Placement(size, per_node, max(1, used_per_node))


@dataclass(frozen=True)
class Link:
    """Per-rank bandwidth (bytes/s) and per-step latency (s) a group's collective sees."""

    bandwidth_Bps: float
    latency_steps_s: float  # latency of one pass (ring inside, tree across)
    gather_factor: float = 1.0  # all-gather / reduce-scatter slowdown per byte


def group_link(p: Placement, cluster: Cluster, eff: Efficiency) -> Link:
    intra_bw = cluster.intra_node.bandwidth_Bps * eff.collective_intra
    intra_lat = (p.per_node - 1) * cluster.intra_node.latency_s
    if p.nodes == 1:
        return Link(intra_bw, intra_lat, cluster.intra_node.gather_factor)
    inter_bw = cluster.inter_node.bandwidth_Bps * eff.collective_inter / p.nic_share
    inter_lat = math.ceil(math.log2(p.nodes)) * cluster.inter_node.latency_s
    return Link(min(intra_bw, inter_bw), intra_lat + inter_lat, max(cluster.intra_node.gather_factor, cluster.inter_node.gather_factor))


def all_reduce_s(nbytes: float, p: Placement, cluster: Cluster, eff: Efficiency) -> float:
    """Ring all-reduce: 2 (d-1)/d * n / B + 2 latency passes."""
    if p.size <= 1 or nbytes <= 0:
        return 0.0
    link = group_link(p, cluster, eff)
    return 2 * (p.size - 1) / p.size * nbytes / link.bandwidth_Bps + 2 * link.latency_steps_s


def reduce_scatter_s(nbytes: float, p: Placement, cluster: Cluster, eff: Efficiency) -> float:
    """n = the full (unsharded) tensor: (d-1)/d * n / B + one latency pass."""
    if p.size <= 1 or nbytes <= 0:
        return 0.0
    link = group_link(p, cluster, eff)
    return (p.size - 1) / p.size * nbytes * link.gather_factor / link.bandwidth_Bps + link.latency_steps_s


all_gather_s = reduce_scatter_s  # same volume and steps, data flowing the other way


def all_to_all_s(nbytes: float, p: Placement, cluster: Cluster, eff: Efficiency) -> float:
    """Each rank holds n bytes, 1/d of them for each rank of the group (its own stays):
    (d-1)/d * n / B, a reduce-scatter's volume without the reduction, + one latency pass
    (pairwise exchange; Thakur et al. 2005)."""
    if p.size <= 1 or nbytes <= 0:
        return 0.0
    link = group_link(p, cluster, eff)
    return (p.size - 1) / p.size * nbytes / link.bandwidth_Bps + link.latency_steps_s


def p2p_s(nbytes: float, crosses_nodes: bool, nic_share: int, cluster: Cluster, eff: Efficiency) -> float:
    """One point-to-point send of n bytes between neighbouring pipeline stages."""
    if nbytes <= 0:
        return 0.0
    if crosses_nodes:
        return cluster.inter_node.latency_s + nbytes / (cluster.inter_node.bandwidth_Bps * eff.p2p / max(1, nic_share))
    return cluster.intra_node.latency_s + nbytes / (cluster.intra_node.bandwidth_Bps * eff.p2p)
