"""Context parallelism: what the runtime's sequence split (techniques/context/apply.py) runs."""

from __future__ import annotations

from typing import Optional

from autopar.spec.enums import DataPartition
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_context(s: Strategy, r: RuleInput) -> Optional[str]:
    """cp ranks hold 2 chunks each of every sample's sequence (zigzag: chunk i and 2 cp - 1 - i)
    of the built-in decoders, whose embeddings, rotary tables and attention take positions."""
    if s.cp == 1:
        return None
    f = r.facts
    if f.seq_len is None or not f.attention_cores:
        return f"cp({s.cp}) splits the sequence of the built-in gpt/llama decoders; {f.name} is not one: use cp=1"
    if f.seq_len % (2 * s.cp):
        return f"cp({s.cp}) cuts seq_len({f.seq_len}) into 2 * cp = {2 * s.cp} equal chunks: {f.seq_len} % {2 * s.cp} = {f.seq_len % (2 * s.cp)}"
    if s.sequence_parallel:
        return f"cp({s.cp}) with sequence_parallel=true: both split the sequence; not built: use one"
    if s.is_async or s.subnet or s.threads > 1 or s.data_partition is DataPartition.FEATURES:
        return f"cp({s.cp}) needs synchronous sample-parallel replicas (sync=sync, subnet=false, threads=1, data_partition=samples)"
    if s.ep > 1 or s.offload or s.dp_shard is not None:
        what = "ep" if s.ep > 1 else "offload" if s.offload else "dp_shard"
        return f"cp({s.cp}) with {what}: not built; drop one of them"
    if (s.tp > 1 or s.pp > 1) and s.zero == 0:
        return (f"cp({s.cp}) with tp/pp: FSDP2 averages the gradients over the dp x cp ranks and shards over them; "
                "zero=0 cannot be kept there: use zero=2 or 3")
    return None
