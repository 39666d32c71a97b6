"""The planner against brute force: for each case, plan 1..5 of the branch and bound and of an
enumeration of every point of the space (autopar.plan.oracle), both on the same cost model.

Prints per case: the search time and candidates priced by each, whether the five plans
agree (objective values equal to 1e-9), and plan 1. Includes GPT-3 175B on 1,024 A100s
(~600,000 points; a few minutes of brute force on one core).

Run: python benchmarks/plan_oracle.py [CASE-SUBSTRING ...]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the cases live with the oracle test

from autopar.plan.oracle import brute_force  # noqa: E402
from autopar.plan.planner import plan  # noqa: E402
from autopar.plan.result import score  # noqa: E402
from autopar.profile.profiler import profile_recipe  # noqa: E402
from autopar.spec.cluster import parse_cluster  # noqa: E402
from tests.test_planner_oracle import CASES, SLOW, _recipe  # noqa: E402


def main() -> None:
    wanted = sys.argv[1:]
    for name, (model, batch, training, cluster_spec, fix, objective) in {**CASES, **SLOW}.items():
        if wanted and not any(w in name for w in wanted):
            continue
        recipe, cluster = _recipe(model, batch, **training), parse_cluster(cluster_spec)
        profile = profile_recipe(recipe)
        t0 = time.perf_counter()
        found = plan(recipe, cluster, fix=fix, objective=objective, profile=profile)
        t_plan = time.perf_counter() - t0
        t0 = time.perf_counter()
        truth = brute_force(recipe, cluster, fix=fix, objective=objective, profile=profile, keep=5)
        t_brute = time.perf_counter() - t0
        ours = [score(p.estimate, objective) for p in found.plans]
        best = [score(e, objective) for e in truth.best]
        same = len(ours) == len(best) and all(abs(a - b) <= 1e-9 * max(1.0, abs(b)) for a, b in zip(ours, best))
        print(f"{name}: search {found.seconds:.3f} s ({t_plan:.3f} s with explanations), {found.candidates} candidates | "
              f"brute force {t_brute:.1f} s, {truth.candidates} candidates | top 5 {'EQUAL' if same else 'DIFFER'} | "
              f"plan 1 {found.plans[0].strategy.to_text()}", flush=True)
        if not same:
            print(f"  planner: {[p.strategy.to_text() for p in found.plans]}\n  brute:   {[e.strategy.to_text() for e in truth.best]}")


if __name__ == "__main__":
    main()
