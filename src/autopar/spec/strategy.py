"""A parallelization strategy: the knobs of every technique, in one frozen record.

Text form (command line): "dp=16,tp=8,pp=8,microbatch=1,schedule=interleaved,
virtual_stages=2,recompute=full,zero=1". A key left out takes its neutral value:
degree 1, zero 0, no recompute, one micro-batch per replica, synchronous updates.

Degrees multiply: devices used = dp * cp * tp * pp * threads. `threads` counts
shared-memory workers inside one process (intra-op threads, or Hogwild workers
when sync=async); each occupies one device (a core) of a node whose devices
share memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from autopar.errors import InputError
from autopar.spec.enums import DataPartition, Recompute, Schedule, Sync
from autopar.util import run_lengths


@dataclass(frozen=True)
class Strategy:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    zero: int = 0  # ZeRO stage over the dp group: 1 optimizer states, 2 + gradients, 3 + parameters (FSDP)
    dp_shard: Optional[int] = None  # HSDP: ZeRO shards over groups of this many dp ranks, replicated dp / dp_shard times; None: all dp
    offload: bool = False  # ZeRO-3 with parameters, gradients and optimizer states in host memory (FSDP2 CPUOffloadPolicy)
    ep: int = 1  # expert parallelism: each MoE layer's experts split over groups of ep dp ranks (all-to-all dispatch)
    cp: int = 1  # context parallelism: each sample's sequence split over cp ranks (attention gathers keys and values)
    microbatch: Optional[int] = None  # samples per micro-batch; None: the whole per-replica batch
    schedule: Schedule = Schedule.ONE_F_ONE_B
    virtual_stages: int = 1  # model chunks per pipeline rank (interleaved schedule)
    recompute: Recompute = Recompute.NONE
    sequence_parallel: bool = False
    stages: Optional[tuple[int, ...]] = None  # layers per pipeline stage; None: balanced by the planner
    data_partition: DataPartition = DataPartition.SAMPLES
    sync: Sync = Sync.SYNC
    sync_every: int = 1  # local SGD / subnet period H (steps between parameter averaging)
    subnet: bool = False  # independent subnetwork training over the dp workers
    threads: int = 1

    def __post_init__(self):
        if self.dp_shard is not None and self.dp_shard == self.dp:  # sharding over every dp rank is plain ZeRO
            object.__setattr__(self, "dp_shard", None)

    def evolve(self, **changes: Any) -> Strategy:
        """dataclasses.replace(self, **changes) without re-running the generated __init__ (the
        planner's floors copy strategies ~10^4 times per search; a frozen __init__ sets each
        of the 19 fields through object.__setattr__). Field names are checked; values are
        not, as replace() does not check them either."""
        unknown = changes.keys() - self.__dict__.keys()
        if unknown:
            raise TypeError(f"Strategy has no field {sorted(unknown)[0]!r}")
        new = object.__new__(Strategy)
        new.__dict__.update(self.__dict__, **changes)
        new.__post_init__()
        return new

    # ------------------------------------------------------------ derived

    @property
    def shard_size(self) -> int:
        """dp ranks ZeRO shards over (the rest replicate)."""
        return self.dp_shard or self.dp

    @property
    def devices(self) -> int:
        return self.dp * self.cp * self.tp * self.pp * self.threads

    def local_batch(self, global_batch: int) -> int:
        """Samples per data-parallel replica per step (every sample under a feature partition)."""
        return global_batch if self.data_partition is DataPartition.FEATURES else global_batch // self.dp

    def microbatch_size(self, global_batch: int) -> int:
        return self.microbatch or self.local_batch(global_batch)

    def num_microbatches(self, global_batch: int) -> int:
        """Micro-batches per step on one rank (gradient accumulation, or the pipeline's)."""
        return self.local_batch(global_batch) // self.microbatch_size(global_batch)

    @property
    def is_async(self) -> bool:
        return self.sync is Sync.ASYNC

    # ------------------------------------------------------------ text form

    def to_text(self) -> str:
        """Only the knobs that differ from neutral, in a fixed order."""
        neutral = Strategy()
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == getattr(neutral, f.name):
                continue
            parts.append(f"{f.name}={_format_value(value)}")
        return ",".join(parts) or "single"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if hasattr(value, "value"):
                out[key] = value.value
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], field_path: str = "strategy") -> "Strategy":
        return cls(**{k: _parse_value(k, v, field_path) for k, v in raw.items() if _known(k, field_path)})

    @classmethod
    def parse(cls, text: str, field_path: str = "--strategy") -> "Strategy":
        text = text.strip()
        if text in ("", "single"):
            return cls()
        raw: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not value.strip():
                raise InputError(field_path, item, "each item must be key=value, e.g. dp=4,tp=2")
            if key in raw:
                raise InputError(f"{field_path}.{key}", value, "given twice; give each key once")
            raw[key] = value.strip()
        return cls.from_dict(raw, field_path)


_ENUMS = {
    "schedule": Schedule,
    "recompute": Recompute,
    "data_partition": DataPartition,
    "sync": Sync,
}
_BOOLS = ("sequence_parallel", "subnet", "offload")
_INTS = {"dp": 1, "tp": 1, "pp": 1, "zero": 0, "microbatch": 1, "dp_shard": 1, "ep": 1, "cp": 1, "virtual_stages": 1, "sync_every": 1, "threads": 1}
_NAMES = [f.name for f in fields(Strategy)]


def _known(key: str, field_path: str) -> bool:
    if key not in _NAMES:
        raise InputError(f"{field_path}.{key}", key, f"unknown strategy key; expected one of {', '.join(_NAMES)}")
    return True


def _format_value(value: Any) -> str:
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):  # stages: runs of equal counts as "layers x stages", e.g. 1/2x32/1x31
        return "/".join(f"{v}x{n}" if n > 2 else "/".join([str(v)] * n) for v, n in run_lengths(value))
    return str(value)


MAX_STAGES = 10_000  # pipeline stages a strategy may list (recipes allow 10,000 layers)
MAX_DEGREE = 2**30  # any integer knob


def _ascii_int(text: Any) -> int:
    """int() of ASCII digits only (Python's int() also reads '٢' and '２' as 2)."""
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, int):
        return text
    raw = str(text).strip()
    if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 12:
        raise ValueError(text)
    return int(raw)


def _expand(item: Any) -> list[int]:
    """"12" -> [12]; "2x32" -> [2] * 32 (32 stages of 2 layers)."""
    if isinstance(item, int) and not isinstance(item, bool):
        return [item]
    layers, _, count = str(item).partition("x")
    n = _ascii_int(count) if count else 1
    if n > MAX_STAGES:
        raise OverflowError(n)
    return [_ascii_int(layers)] * n


def _parse_value(key: str, value: Any, field_path: str) -> Any:
    where = f"{field_path}.{key}"
    if key in _ENUMS:
        enum = _ENUMS[key]
        try:
            return enum(value.value if hasattr(value, "value") else str(value).lower())
        except ValueError:
            raise InputError(where, value, f"expected one of {', '.join(e.value for e in enum)}") from None
    if key in _BOOLS:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise InputError(where, value, "expected true or false")
    if key == "stages":
        if value is None:
            return None
        items = value if isinstance(value, (list, tuple)) else str(value).split("/")
        if len(items) > MAX_STAGES:
            raise InputError(where, f"{len(items)} entries", f"at most {MAX_STAGES:,} stages")
        try:
            stages = tuple(v for item in items for v in _expand(item))
        except OverflowError:
            raise InputError(where, value, f"at most {MAX_STAGES:,} stages") from None
        except (TypeError, ValueError):
            raise InputError(where, value, "expected layers per stage, e.g. stages=13/12/12/11 or 1/2x32/1x31") from None
        if len(stages) > MAX_STAGES:
            raise InputError(where, f"{len(stages)} stages", f"at most {MAX_STAGES:,} stages")
        if any(s <= 0 for s in stages):
            raise InputError(where, value, "every stage needs at least one layer")
        return stages
    if key in ("microbatch", "dp_shard") and (value is None or str(value).lower() == "none"):
        return None  # the neutral value: no micro-batching (the whole per-replica batch), no HSDP
    try:
        number = _ascii_int(value)
    except (TypeError, ValueError):
        raise InputError(where, value, "expected an integer in ASCII digits") from None
    if number > MAX_DEGREE:
        raise InputError(where, value, f"expected an integer <= {MAX_DEGREE:,}")
    if number < _INTS[key] or (key == "zero" and number > 3):
        bound = "0, 1, 2 or 3" if key == "zero" else f"an integer >= {_INTS[key]}"
        raise InputError(where, value, f"expected {bound}")
    return number
