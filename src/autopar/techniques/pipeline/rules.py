"""Pipeline parallelism: what torch.distributed.pipelining runs and the cost model prices."""

from __future__ import annotations

from typing import Optional

from autopar.spec.enums import Schedule
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_pipeline(s: Strategy, r: RuleInput) -> Optional[str]:
    if s.pp == 1:
        if s.virtual_stages > 1:
            return f"virtual_stages({s.virtual_stages}) needs pp > 1"
        return None if s.stages is None or len(s.stages) == 1 else f"stages {'/'.join(map(str, s.stages))} given but pp(1)"
    if r.facts.layers == 0 or not r.facts.pipeline_split:
        return f"pipeline parallelism cannot cut model {r.facts.name}: {r.facts.pipeline_problem}"
    if s.tp > 1 and r.facts.pipeline_split == "graph":
        return (f"tp({s.tp}) with pp({s.pp}): {r.facts.name} is cut by tracing (its forward is not a chain of its blocks), "
                "which turns modules into interpreted graphs that tensor parallelism cannot split; use tp or pp")
    if s.schedule.v_shaped and s.virtual_stages != 2:
        return f"schedule={s.schedule.value} runs exactly two chunks per rank (the V); virtual_stages({s.virtual_stages}): use virtual_stages=2"
    if r.facts.pipeline_split == "graph" and s.schedule in (Schedule.ZERO_BUBBLE, Schedule.ZBV, Schedule.DUALPIPEV):
        return (f"schedule={s.schedule.value}: {r.facts.name} is cut by tracing, and its interpreted stages are not run "
                "with the input/weight backward split here; use gpipe or 1f1b")
    if r.facts.pipeline_split == "graph" and s.virtual_stages > 1:
        return (f"virtual_stages({s.virtual_stages}): {r.facts.name} is cut by tracing, and an interleaved schedule's "
                "stages would pass its activations between non-adjacent stages; use gpipe or 1f1b")
    if r.facts.pipeline_split == "graph" and s.pp > 2 and r.facts.pipeline_skip > 1:
        return (f"pp({s.pp}): in {r.facts.name} a tensor skips over blocks (a long skip connection, "
                f"{r.facts.pipeline_skip} blocks or more), so 3 or more stages would send its gradient between non-adjacent stages, which "
                "torch.distributed.pipelining cannot do; use pp=2")
    n_stages = s.pp * s.virtual_stages
    if n_stages > r.facts.layers:
        return f"pp({s.pp}) * virtual_stages({s.virtual_stages}) = {n_stages} stages > layers({r.facts.layers})"
    if s.virtual_stages > 1 and s.schedule not in (Schedule.INTERLEAVED, Schedule.ZERO_BUBBLE, Schedule.ZBV, Schedule.DUALPIPEV):
        return f"virtual_stages({s.virtual_stages}) needs schedule=interleaved, zero_bubble, zbv or dualpipev (got {s.schedule.value})"
    if s.stages is not None and (len(s.stages) != n_stages or sum(s.stages) != r.facts.layers):
        return (
            f"stages {'/'.join(map(str, s.stages))}: {len(s.stages)} stages holding {sum(s.stages)} layers; "
            f"need pp({s.pp}) * virtual_stages({s.virtual_stages}) = {n_stages} stages holding layers({r.facts.layers})"
        )
    return check_microbatches(s, r)


def check_microbatches(s: Strategy, r: RuleInput) -> Optional[str]:
    """torch.distributed.pipelining: 1F1B needs n >= pp; Interleaved1F1B runs n in rounds of
    max(1, n // pp) and needs n divisible by the round count."""
    local = s.local_batch(r.global_batch)
    if local < s.pp:
        return f"per-replica batch {local} (global {r.global_batch} / dp {s.dp}) < pp({s.pp}): a pipeline needs pp micro-batches"
    n = s.num_microbatches(r.global_batch)
    if s.schedule is Schedule.ONE_F_ONE_B and n < s.pp:
        return f"schedule 1f1b needs num_microbatches({n}) >= pp({s.pp}); lower microbatch or use gpipe"
    rounds = max(1, n // s.pp)
    if s.schedule in (Schedule.INTERLEAVED, Schedule.ZERO_BUBBLE) and n % rounds:
        return f"schedule {s.schedule.value} needs num_microbatches({n}) divisible by max(1, {n} // pp({s.pp})) = {rounds}"
    if s.schedule in (Schedule.ZERO_BUBBLE, Schedule.ZBV, Schedule.DUALPIPEV) and s.zero == 3 and (s.dp * s.cp > 1 or s.offload):
        return (f"schedule={s.schedule.value} with zero=3: torch 2.13's zero-bubble schedules deadlock with FSDP2 "
                "resharding after forward (measured on gloo, 4 ranks; DualPipeV runs the same split backward and is not "
                "run with it here); use zero=2 or schedule=interleaved")
    if s.schedule is Schedule.ZBV and n < s.pp:
        return f"schedule zbv needs num_microbatches({n}) >= pp({s.pp}); lower microbatch"
    if s.schedule is Schedule.DUALPIPEV and n < 2 * s.pp:
        return f"schedule dualpipev needs num_microbatches({n}) >= its 2 pp({s.pp}) = {2 * s.pp} stages; lower microbatch"
    return None


def check_priced_schedule(s: Strategy, r: RuleInput) -> Optional[str]:
    if s.schedule not in (Schedule.INTERLEAVED, Schedule.ZERO_BUBBLE) or s.pp == 1:
        return None
    m = s.num_microbatches(r.global_batch)
    if s.schedule is Schedule.INTERLEAVED and s.virtual_stages < 2:
        return "schedule=interleaved needs virtual_stages >= 2 (with one chunk per rank it is 1f1b)"
    if s.virtual_stages > 1 and m % s.pp:  # Narayanan et al. 2021, Sec. 2.2.2: the bubble (p - 1) / v assumes m a multiple of p
        return f"{s.schedule.value} schedule: micro-batches({m}) % pp({s.pp}) = {m % s.pp}; make the micro-batch count a multiple of pp"
    return None
