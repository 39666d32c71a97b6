"""Context parallelism in the search: cp takes powers of two that leave each rank at least
CP_MIN_TOKENS tokens of a sample, before dp takes the devices left."""

from __future__ import annotations

from autopar.spec.enums import DataPartition, Sync
from autopar.techniques.base import Dimension, Partial

# Below 4,096 tokens per rank the sequence is short enough for tensor and data parallelism
# to split the work: Llama 3 trains 131,072-token sequences with cp = 16 (8,192 per rank),
# Megatron-LM's guidance starts context parallelism at 8k-token sequences. A declared
# bound of the space (the oracle enumerates the same space), not a pruning.
CP_MIN_TOKENS = 4096


def cp_values(ctx, c: Partial) -> list[int]:
    f = ctx.facts
    if f.seq_len is None or not f.attention_cores or c["sync"] is not Sync.SYNC or c["subnet"] \
            or c["data_partition"] is not DataPartition.SAMPLES or c["threads"] > 1:
        return [1]
    room = c["devices"] // (c["tp"] * c["pp"])
    out, cp = [1], 2
    while cp <= room and f.seq_len % (2 * cp) == 0 and f.seq_len // cp >= CP_MIN_TOKENS:
        out.append(cp)
        cp *= 2
    return out


DIMENSIONS = (Dimension("cp", cp_values, order=65),)
