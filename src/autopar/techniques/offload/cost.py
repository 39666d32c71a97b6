"""Host offload's cost terms (ZeRO-Offload, Ren et al. 2021, Sec. 4; FSDP2 CPUOffloadPolicy).

A rank keeps its ZeRO-3 shard of P_s = P / N_shard parameters in host memory as fp32:
parameter 4 B, gradient 4 B and the optimizer's states (Adam: m, v, 8 B), so a node of
r ranks needs r P_s (8 + 4 K_f) bytes of host memory, K_f the states' floats per
parameter. Per micro-batch each gather first copies the shard to the device (fp32,
4 P_s bytes over PCIe) and each reduce-scatter's shard comes back (4 P_s bytes); the
copies run on their own engine and hide under compute. The optimizer step runs on the
host after backward, streaming parameter (read + write), gradient (read) and states
(read + write) through the node's memory bandwidth, shared by its r ranks.
"""

from __future__ import annotations

FP32_BYTES = 4


def host_state_bytes(shard_params: float, state_floats: int) -> float:
    """Host bytes of one rank's shard: fp32 parameter + gradient + optimizer states."""
    return shard_params * FP32_BYTES * (2 + state_floats)


def pcie_exposed_s(shard_params: float, gathers: int, m: int, busy_s: float, pcie_Bps: float) -> float:
    """Copies of one step beyond the compute they hide under: per micro-batch, `gathers`
    host-to-device copies of the shard and one device-to-host copy of its gradient."""
    volume = m * (gathers + 1) * FP32_BYTES * shard_params
    return max(0.0, volume / pcie_Bps - busy_s)


def host_step_s(shard_params: float, state_floats: int, host_Bps: float) -> float:
    """The host optimizer step of one rank: (2 + 1 + 2 K_f) fp32 streams of the shard over
    its share of the node's memory bandwidth."""
    return shard_params * FP32_BYTES * (3 + 2 * state_floats) / host_Bps
