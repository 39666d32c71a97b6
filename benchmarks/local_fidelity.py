"""Predicted vs measured on this machine: 3 models x >= 6 strategies on 2 processes.

For each example recipe (MLP, small GPT, CNN) the planner's top plans and the
baselines (single process, DDP, FSDP, TP, PP, ...) run under torchrun for a few steps;
the script prints predicted and measured step time and memory per strategy, and per
model the MAPE, the Spearman rank correlation and the regret of the planner's choice.
Targets (issue: close the loop): MAPE <= 20 %, Spearman >= 0.8, regret <= 10 %.

Run: python benchmarks/local_fidelity.py [--cluster cluster.yaml] [--steps 8]
     (without --cluster it calibrates first: `autopar calibrate`, ~1 minute)
Writes benchmarks/results/local_fidelity.json.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from autopar.plan.planner import plan
from autopar.profile.profiler import profile_recipe
from autopar.spec.cluster import parse_cluster
from autopar.spec.enums import Recompute
from autopar.spec.recipe import load_recipe, load_yaml
from autopar.spec.strategy import Strategy
from autopar.validation.local import baselines, score, validate

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["examples/mlp-small.yaml", "examples/gpt-small.yaml", "examples/cnn-small.yaml"]
EXTRA = [Strategy(dp=2, zero=1), Strategy(threads=2), Strategy(dp=2, recompute=Recompute.FULL)]


def strategies_for(recipe, cluster, top: int):
    profile = profile_recipe(recipe)
    result = plan(recipe, cluster, top_k=top, profile=profile)
    chosen = [(p.strategy, f"plan {p.rank}") for p in result.plans]
    seen = {s.evolve(stages=None) for s, _ in chosen}
    for s in baselines(cluster.devices, recipe.training.global_batch, profile.pipeline_blocks) + EXTRA:
        if s not in seen:
            chosen.append((s, "baseline"))
            seen.add(s)
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cluster", help="calibrated cluster YAML (default: calibrate now)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--top", type=int, default=3)
    args = ap.parse_args()
    cluster_path = args.cluster
    if cluster_path is None:
        import yaml

        from autopar.calibrate.cluster import measure_cluster

        cluster_path = str(ROOT / "benchmarks" / "results" / "cluster-local.yaml")
        Path(cluster_path).parent.mkdir(exist_ok=True)
        Path(cluster_path).write_text(yaml.safe_dump(measure_cluster(), sort_keys=False))
        print(f"calibrated: {cluster_path}")
    cluster = parse_cluster(load_yaml(cluster_path, "--cluster"))
    report, all_rows = {}, []
    for path in RECIPES:
        recipe = load_recipe(ROOT / path)
        t0 = time.perf_counter()
        rows = validate(recipe, str(ROOT / path), cluster, strategies_for(recipe, cluster, args.top), args.steps, cluster_path)
        sc = score(rows)
        all_rows += rows
        print(f"\n{path}  ({time.perf_counter() - t0:.0f} s)")
        for r in rows:
            meas = f"{r.measured_step_time_s * 1e3:8.1f} ms" if r.measured_step_time_s else f"  failed: {r.error}"
            err = f"{r.predicted_step_time_s / r.measured_step_time_s - 1:+7.1%}" if r.measured_step_time_s else ""
            mem = (f"{r.predicted_memory_bytes / 1e6:7.0f} MB vs {r.measured_memory_bytes / 1e6:5.0f} MB"
                   if r.measured_memory_bytes else "")
            print(f"  {r.source:9} {r.strategy.to_text()[:60]:60} pred {r.predicted_step_time_s * 1e3:8.1f} ms  meas {meas} {err}  {mem}")
        print(f"  MAPE {sc.mape:.1%}  Spearman {sc.spearman:.2f}  regret {sc.regret:+.1%}")
        report[path] = {"rows": [r.to_dict() for r in rows], **sc.to_dict()}
    overall = score(all_rows)
    print(f"\nall: MAPE {overall.mape:.1%}; per model Spearman {[round(v['spearman'], 2) for v in report.values()]}, "
          f"regret {[round(v['regret'], 3) for v in report.values()]}")
    print(f"targets: MAPE <= 20 %: {'ok' if overall.mape <= 0.2 else 'MISSED'}; "
          f"Spearman >= 0.8: {'ok' if min(v['spearman'] for v in report.values()) >= 0.8 else 'MISSED'}; "
          f"regret <= 10 %: {'ok' if max(v['regret'] for v in report.values()) <= 0.10 else 'MISSED'}")
    out = ROOT / "benchmarks" / "results" / "local_fidelity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cluster": cluster_path, "steps": args.steps, "models": report,
                               "mape": overall.mape, "median_error": statistics.median(
                                   r.predicted_step_time_s / r.measured_step_time_s - 1 for r in all_rows if r.measured_step_time_s)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
