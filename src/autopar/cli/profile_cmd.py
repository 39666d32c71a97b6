"""`autopar profile RECIPE [--json] [--batch global]`: the per-layer profile of the model."""

from __future__ import annotations

from autopar.cli.common import load_inputs, print_json
from autopar.cli.tables import nbytes, si, table
from autopar.profile.profiler import profile_recipe


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="per-layer FLOPs, parameters and activation bytes of the recipe's model")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--per", choices=("sample", "batch"), default="sample", help="figures per sample (default) or per global batch")
    p.set_defaults(func=run)


def run(args) -> int:

    recipe, _ = load_inputs(args)
    profile = profile_recipe(recipe)
    scale = recipe.training.global_batch if args.per == "batch" else 1
    if args.json:
        print_json(_scaled(profile.to_dict(), scale, args.per))
        return 0
    active = f" ({si(profile.active_params)} active per token)" if profile.active_params else ""
    print(f"model {profile.model}: {si(profile.params)} parameters{active}, {len(profile.layers)} layers "
          f"({len(profile.groups())} distinct), figures per {args.per}"
          + (f" of {recipe.training.global_batch}" if scale > 1 else "")
          + f", activations in {profile.dtype_bytes}-byte precision")
    rows = []
    for group in _runs(profile.layers):
        first, n = group[0], len(group)
        s = first.stats
        name = first.name if n == 1 else f"{first.name} .. {group[-1].name} (x{n})"
        tp = ", ".join(f"{k}:{v}" for k, v in s.tp_styles) or "-"
        rows.append([name, s.kind, si(s.params), si(s.forward_flops * scale, "FLOP"), si(s.backward_flops * scale, "FLOP"),
                     nbytes(s.saved_bytes * scale), nbytes(s.output_bytes * scale), _short(tp)])
    print(table(["layer", "kind", "params", "fwd", "bwd", "saved act.", "output", "tensor-parallel split"], rows, "llrrrrrl"))
    t = profile.totals()
    print(f"\ntotal: {si(t['params'])} params, forward {si(t['forward_flops'] * scale, 'FLOP')}, "
          f"backward {si(t['backward_flops'] * scale, 'FLOP')}, activations saved {nbytes(t['saved_activation_bytes'] * scale)}, "
          f"input data {nbytes(t['sample_bytes'] * scale)}")
    for line in structure_lines(profile.facts):
        print(line)
    for note in profile.notes:
        print(f"note: {note}")
    return 0


def structure_lines(facts) -> list[str]:
    """Where the blocks are, how a pipeline cuts them, what tensor parallelism splits."""
    stacks = ", ".join(facts.stacks) or "none (name one with model.blocks: PATH)"
    lines = [f"blocks: {facts.layers} in {stacks}"]
    if facts.pipeline_split == "chain":
        lines.append("pipeline: cut between blocks (the forward is a chain of the top-level modules)")
    elif facts.pipeline_split == "graph":
        skip = f"; a tensor skips {facts.pipeline_skip}+ blocks, so pp <= 2" if facts.pipeline_skip > 1 else ""
        lines.append(f"pipeline: traced and cut at blocks, tensors that cross a cut are sent along (gpipe, 1f1b){skip}")
    else:
        lines.append(f"pipeline: none ({facts.pipeline_problem})")
    plan = ", ".join(f"{pattern}:{style}" for pattern, style in facts.tp_plan) or "none found"
    lines.append(f"tensor-parallel plan: {_short(plan, 400)}")
    return lines


def _runs(layers):
    """Consecutive layers of the same group, collapsed into one row."""
    out: list[list] = []
    for layer in layers:
        if out and out[-1][-1].group == layer.group:
            out[-1].append(layer)
        else:
            out.append([layer])
    return out


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scaled(d: dict, scale: int, per: str) -> dict:
    if scale == 1:
        return d
    keys = ("forward_flops", "backward_flops", "forward_tp_flops", "core_flops", "memory_bound_bytes", "memory_bound_tp_bytes",
            "saved_bytes", "saved_tp_bytes", "saved_core_bytes", "input_bytes", "output_bytes", "tp_fwd_allreduce_bytes",
            "tp_bwd_allreduce_bytes", "saved_activation_bytes", "sample_bytes")
    for layer in d["layers"]:
        for k in keys:
            if k in layer:
                layer[k] *= scale
    for k in keys:
        if k in d["totals"]:
            d["totals"][k] *= scale
    d["per"] = f"global batch of {scale}"
    return d
