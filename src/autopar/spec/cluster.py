"""The cluster: devices, their memory and speed, and the links between them.

Internal units are SI: bytes, seconds, FLOP/s, bytes/s. The YAML form uses GB,
GB/s, TFLOP/s and microseconds, as named in its keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError

from autopar.calibrate.cache import this_machine
from autopar.calibrate.load import under_current_load
from autopar.errors import InputError, from_pydantic
from autopar.spec.enums import Precision

GB = 1e9
TFLOPS = 1e12


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: float
    peak_flops: dict[str, float]  # precision name -> dense FLOP/s
    memory_bandwidth_Bps: float  # one device's own bandwidth (one core's reach on a CPU)
    source: str = ""
    shared_memory: bool = False  # the devices of a node share one memory (CPU cores)
    op_overhead_s: float = 5e-6  # fixed cost per operator launch (eager dispatch)
    thread_efficiency: float = 1.0  # k threads in one process deliver 1 + (k-1) * this of one's FLOP/s
    comm_overlap: Optional[float] = None  # fraction of compute communication hides under (None: the fitted default)
    tp_module_overhead_s: float = 0.0  # host time per tensor-parallel module per forward+backward (DTensor dispatch)
    concurrency_efficiency: float = 1.0  # speed of each device when all of a node's devices compute at once (shared caches, clocks)

    def peak_flops_for(self, precision: Precision) -> float:
        try:
            return self.peak_flops[precision.value]
        except KeyError:
            have = ", ".join(sorted(self.peak_flops))
            raise InputError(
                "training.precision", precision.value, f"{self.name} has no {precision.value} peak (it has {have}); choose one of those"
            ) from None


@dataclass(frozen=True)
class Link:
    """One level of the network, alpha-beta: time(n bytes) = latency_s + n / bandwidth_Bps."""

    bandwidth_Bps: float
    latency_s: float
    gather_factor: float = 1.0  # all-gather / reduce-scatter run this much slower per byte than ring theory (gloo: ~3-4)
    ddp_factor: float = 1.0  # a DDP step's gradient sync takes this many times its raw all-reduce (bucket copies, hooks)
    fsdp_factor: float = 1.0  # FSDP2's per-step traffic takes this many times its raw all-gathers/reduce-scatters


@dataclass(frozen=True)
class Cluster:
    device: Device
    nodes: int
    devices_per_node: int
    intra_node: Link  # per device, one direction
    inter_node: Link  # per node, all NICs together, one direction
    host_memory_bytes: float
    name: str = "custom"
    source: str = ""
    node_memory_bandwidth_Bps: float = 0.0  # shared-memory nodes: bandwidth all devices of a node share
    host_link_Bps: float = 25 * GB  # host <-> one device (PCIe), one direction: inputs, offloaded states
    host_memory_bandwidth_Bps: float = 200 * GB  # the host memory of one node (offloaded optimizer steps)
    busy_cores: int = 0  # `local`: cores other processes kept busy when planned (its efficiencies were measured under them)

    @property
    def node_bandwidth_Bps(self) -> float:
        """Memory bandwidth one node's devices share (sum of devices when memories are separate)."""
        return self.node_memory_bandwidth_Bps or self.device.memory_bandwidth_Bps * self.devices_per_node

    @property
    def devices(self) -> int:
        return self.nodes * self.devices_per_node


# ------------------------------------------------------------------ YAML form


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PeakSpec(_Spec):
    fp32: Optional[PositiveFloat] = None
    bf16: Optional[PositiveFloat] = None
    fp16: Optional[PositiveFloat] = None


class DeviceSpec(_Spec):
    name: str = "custom"
    memory_GB: PositiveFloat
    peak_tflops: PeakSpec
    memory_bandwidth_GBps: PositiveFloat
    source: str = "user"
    shared_memory: bool = False
    op_overhead_us: Optional[PositiveFloat] = None
    thread_efficiency: Optional[Annotated[float, Field(gt=-1.0, le=1.0)]] = None  # < 0: k threads slower than one (busy cores)
    comm_overlap: Optional[Annotated[float, Field(ge=0.0, le=1.0)]] = None
    tp_module_overhead_us: Annotated[float, Field(ge=0.0)] = 0.0
    concurrency_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0


class LinkSpec(_Spec):
    bandwidth_GBps: PositiveFloat
    latency_us: Annotated[float, Field(ge=0)] = 5.0
    gather_factor: Annotated[float, Field(ge=1.0)] = 1.0
    ddp_factor: Annotated[float, Field(ge=1.0)] = 1.0
    fsdp_factor: Annotated[float, Field(ge=1.0)] = 1.0


class ClusterSpec(_Spec):
    preset: Optional[str] = None
    device: Optional[Union[str, DeviceSpec]] = None
    nodes: Annotated[int, Field(gt=0, le=2**20)] = 1
    devices_per_node: Optional[Annotated[int, Field(gt=0, le=4096)]] = None
    intra_node: Optional[LinkSpec] = None
    inter_node: Optional[LinkSpec] = None
    host_memory_GB: Optional[PositiveFloat] = None
    node_memory_bandwidth_GBps: Optional[PositiveFloat] = None
    host_link_GBps: Optional[PositiveFloat] = None
    host_memory_bandwidth_GBps: Optional[PositiveFloat] = None
    source: str = ""


@lru_cache(maxsize=1)
def presets() -> dict[str, Any]:
    text = resources.files("autopar.hardware").joinpath("presets.yaml").read_text()
    return yaml.safe_load(text)


def device_preset(name: str, field_path: str = "cluster.device") -> Device:
    table = presets()["devices"]
    if name not in table:
        raise InputError(field_path, name, f"unknown device preset; expected one of {', '.join(table)} or a mapping")
    d = table[name]
    return Device(
        name=name,
        memory_bytes=d["memory_GB"] * GB,
        peak_flops={k: v * TFLOPS for k, v in d["peak_tflops"].items()},
        memory_bandwidth_Bps=d["memory_bandwidth_GBps"] * GB,
        source=d["source"],
        shared_memory=bool(d.get("shared_memory", False)),
        op_overhead_s=d.get("op_overhead_us", 5.0) * 1e-6,
        thread_efficiency=float(d.get("thread_efficiency", 1.0)),
        comm_overlap=d.get("comm_overlap"),
        tp_module_overhead_s=float(d.get("tp_module_overhead_us", 0.0)) * 1e-6,
        concurrency_efficiency=float(d.get("concurrency_efficiency", 1.0)),
    )


def _device(spec: Union[str, DeviceSpec]) -> Device:
    if isinstance(spec, str):
        return device_preset(spec)
    peaks = {k: v * TFLOPS for k, v in spec.peak_tflops.model_dump().items() if v is not None}
    if not peaks:
        raise InputError("cluster.device.peak_tflops", {}, "give at least one of fp32, bf16, fp16 in TFLOP/s")
    overhead = (spec.op_overhead_us if spec.op_overhead_us is not None else (20.0 if spec.shared_memory else 5.0)) * 1e-6
    threads = spec.thread_efficiency if spec.thread_efficiency is not None else 1.0
    overlap = spec.comm_overlap if spec.comm_overlap is not None else (0.0 if spec.shared_memory else None)
    return Device(spec.name, spec.memory_GB * GB, peaks, spec.memory_bandwidth_GBps * GB, spec.source, spec.shared_memory,
                  overhead, threads, overlap, spec.tp_module_overhead_us * 1e-6, spec.concurrency_efficiency)


def _link(spec: LinkSpec) -> Link:
    return Link(bandwidth_Bps=spec.bandwidth_GBps * GB, latency_s=spec.latency_us * 1e-6, gather_factor=spec.gather_factor,
                ddp_factor=spec.ddp_factor, fsdp_factor=spec.fsdp_factor)


LOCAL = "local"  # the preset naming this machine


def parse_cluster(raw: Any, field_path: str = "cluster") -> Cluster:
    """Build a Cluster from its YAML form: a preset (with overrides), explicit fields, or a
    preset's bare name (`cluster: local`)."""
    if isinstance(raw, str):
        raw = {"preset": raw}
    if not isinstance(raw, dict):
        raise InputError(field_path, raw, "expected a mapping, e.g. {preset: dgx-a100-80gb, nodes: 2}")
    local, busy = raw.get("preset") == LOCAL, 0
    if local:  # this machine, measured once (calibrate/cache.py), its load now (load.py); the recipe's keys override
        measured, busy = under_current_load(this_machine())
        raw = {**{k: v for k, v in measured.items() if k != "nodes"}, **{k: v for k, v in raw.items() if k != "preset"}}
    try:
        spec = ClusterSpec.model_validate(raw)
    except ValidationError as err:
        raise from_pydantic(err, prefix=field_path) from None
    base: dict[str, Any] = {}
    if spec.preset is not None:
        table = presets()["clusters"]
        if spec.preset not in table:
            raise InputError(f"{field_path}.preset", spec.preset,
                             f"unknown cluster preset; expected {LOCAL} (this machine, measured) or one of {', '.join(table)}")
        base = table[spec.preset]
    device = spec.device if spec.device is not None else base.get("device")
    missing = [
        name
        for name, value in (
            ("device", device),
            ("devices_per_node", spec.devices_per_node or base.get("devices_per_node")),
            ("intra_node", spec.intra_node or base.get("intra_node")),
        )
        if value is None
    ]
    if missing:
        raise InputError(f"{field_path}.{missing[0]}", None, "this field is required unless a preset gives it")
    dpn = spec.devices_per_node or base["devices_per_node"]
    intra = spec.intra_node or LinkSpec(**base["intra_node"])
    # A single-node cluster never uses its inter-node link; default it to the intra-node one.
    inter = spec.inter_node or (LinkSpec(**base["inter_node"]) if "inter_node" in base else intra)
    dev = _device(device)
    host_gb = spec.host_memory_GB or base.get("host_memory_GB") or dev.memory_bytes / GB * dpn * 2
    node_bw = spec.node_memory_bandwidth_GBps or base.get("node_memory_bandwidth_GBps") or 0.0
    return Cluster(
        device=dev,
        nodes=spec.nodes,
        devices_per_node=dpn,
        intra_node=_link(intra),
        inter_node=_link(inter),
        host_memory_bytes=host_gb * GB,
        name=LOCAL if local else spec.preset or (dev.name if isinstance(device, str) else "custom"),
        source=spec.source or base.get("source", ""),
        node_memory_bandwidth_Bps=node_bw * GB,
        host_link_Bps=(spec.host_link_GBps or base.get("host_link_GBps") or 25.0) * GB,
        host_memory_bandwidth_Bps=(spec.host_memory_bandwidth_GBps or base.get("host_memory_bandwidth_GBps") or 200.0) * GB,
        busy_cores=busy,
    )


def cluster_to_yaml_dict(cluster: Cluster) -> dict[str, Any]:
    """The explicit YAML form of a cluster (what `autopar calibrate` writes)."""
    d = cluster.device
    return {
        "device": {
            "name": d.name,
            "memory_GB": round(d.memory_bytes / GB, 3),
            "peak_tflops": {k: round(v / TFLOPS, 6) for k, v in d.peak_flops.items()},
            "memory_bandwidth_GBps": round(d.memory_bandwidth_Bps / GB, 3),
            "shared_memory": d.shared_memory,
            "op_overhead_us": round(d.op_overhead_s * 1e6, 3),
            "thread_efficiency": round(d.thread_efficiency, 4),
            **({"comm_overlap": d.comm_overlap} if d.comm_overlap is not None else {}),
            "tp_module_overhead_us": round(d.tp_module_overhead_s * 1e6, 2),
            "concurrency_efficiency": round(d.concurrency_efficiency, 3),
            "source": d.source,
        },
        "nodes": cluster.nodes,
        "devices_per_node": cluster.devices_per_node,
        "intra_node": _link_dict(cluster.intra_node),
        "inter_node": _link_dict(cluster.inter_node),
        "host_memory_GB": round(cluster.host_memory_bytes / GB, 3),
        **({"node_memory_bandwidth_GBps": round(cluster.node_memory_bandwidth_Bps / GB, 3)} if cluster.node_memory_bandwidth_Bps else {}),
        "host_link_GBps": round(cluster.host_link_Bps / GB, 3),
        "host_memory_bandwidth_GBps": round(cluster.host_memory_bandwidth_Bps / GB, 3),
        "source": cluster.source,
    }


def _link_dict(link: Link) -> dict[str, Any]:
    out = {"bandwidth_GBps": round(link.bandwidth_Bps / GB, 4), "latency_us": round(link.latency_s * 1e6, 2)}
    for key in ("gather_factor", "ddp_factor", "fsdp_factor"):
        if getattr(link, key) != 1.0:
            out[key] = round(getattr(link, key), 3)
    return out


def local_cluster(recipe: Any, strategy: Any, nnodes: int = 1) -> Cluster:
    """What a run is predicted for when no cluster file is given: the recipe's cluster, else
    this machine (`local`) shaped like the run (its nodes, the strategy's devices per node)."""
    if recipe.cluster is not None:
        return parse_cluster(recipe.cluster)
    return parse_cluster({"preset": LOCAL, "nodes": nnodes, "devices_per_node": max(1, strategy.devices // nnodes)})
