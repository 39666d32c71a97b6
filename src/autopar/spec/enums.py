"""Closed sets of choices, as enums (never bare strings checked by assert)."""

from __future__ import annotations

from enum import Enum


class Optimizer(str, Enum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"
    ADAMW = "adamw"

    @property
    def state_floats_per_param(self) -> int:
        """Optimizer state kept per parameter, in fp32 values (momentum: 1; Adam: m and v)."""
        return {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}[self.value]


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"  # mixed: bf16 compute, fp32 master weights and optimizer states
    FP16 = "fp16"  # mixed, as above, with loss scaling

    @property
    def is_mixed(self) -> bool:
        return self is not Precision.FP32


class Schedule(str, Enum):
    GPIPE = "gpipe"
    ONE_F_ONE_B = "1f1b"
    INTERLEAVED = "interleaved"
    ZERO_BUBBLE = "zero_bubble"  # interleaved zero bubble (Qi et al. 2023): backward split into input and weight gradients
    ZBV = "zbv"  # ZB-V (Qi et al. 2023, Sec. 6): zero bubble with two chunks per rank in a V (rank r: chunks r and 2p - 1 - r)
    DUALPIPEV = "dualpipev"  # DualPipeV (DeepSeek-AI 2025, DualPipe cut in half): the same V, micro-batches fed from both ends

    @property
    def v_shaped(self) -> bool:
        """Two chunks per rank in a V (rank r: chunks r and 2 pp - 1 - r)."""
        return self in (Schedule.ZBV, Schedule.DUALPIPEV)


class Recompute(str, Enum):
    NONE = "none"
    SELECTIVE = "selective"  # recompute the attention core only (Korthikanti et al. 2022)
    FULL = "full"  # keep each layer's input, recompute the whole layer in backward


class DataPartition(str, Enum):
    SAMPLES = "samples"
    FEATURES = "features"


class Sync(str, Enum):
    SYNC = "sync"  # all-reduce every step
    ASYNC = "async"  # local SGD: all-reduce parameters every `sync_every` steps


class TPStyle(str, Enum):
    """How tensor parallelism splits one submodule (Megatron-LM Sec. 3 / DTensor styles)."""

    COLWISE = "colwise"  # Linear: split output features; output stays sharded
    ROWWISE = "rowwise"  # Linear: split input features; output all-reduced (reduce-scattered with SP)
    PACKED_QKV = "packed_qkv"  # fused q/k/v Linear or Conv1D: each of its 3 equal output parts split; output stays sharded
    VOCAB_EMBEDDING = "vocab_embedding"  # Embedding: split the vocabulary; output all-reduced
    VOCAB_HEAD = "vocab_head"  # output Linear: split the vocabulary; loss computed on shards
