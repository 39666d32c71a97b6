"""Fit the cost model's FITTED efficiency constants on the public validation file.

Coordinate descent over a small grid per constant, minimising the mean of the
iteration-time MAPE and the per-layer MAPE (shared/validation/published_runs.json).
Prints the best constants; they are then written by hand into cost/efficiency.py
(with this script named as their origin). Never special-cases a run.

Run: python benchmarks/fit_efficiency.py [NAME ...]   (a few minutes; NAMEs limit the fit)
"""

import sys
from dataclasses import replace

from autopar.cost.efficiency import DEFAULT
from autopar.validation.published import check_run, load_runs, per_layer_rows

GRID = {
    "gemm_max": [0.70, 0.74, 0.78, 0.82, 0.86],
    "gemm_half_dim": [32.0, 64.0, 96.0, 128.0, 192.0],
    "accelerator_fusion": [0.25, 0.4, 0.55, 0.7],
    "collective_intra": [0.6, 0.7, 0.8, 0.9],
    "collective_inter": [0.6, 0.7, 0.8, 0.9],
    "p2p": [0.6, 0.75, 0.9],
    "comm_overlap": [0.6, 0.7, 0.8, 0.9, 1.0],
}


def objective(eff, runs) -> tuple[float, float, float]:
    checks = [c for c in (check_run(r, eff) for r in runs) if c is not None]
    it = sum(abs(c.error) for c in checks) / len(checks)
    worst = max(abs(c.error) for c in checks)
    rows = per_layer_rows(runs, eff)
    layer = sum(abs(p / m - 1) for _, _, m, p in rows) / len(rows)
    return (it + layer) / 2 + max(0.0, worst - 0.15), it, layer


def main() -> None:
    runs = load_runs()
    eff = DEFAULT
    best, it, layer = objective(eff, runs)
    print(f"start: objective {best:.4f} (iteration MAPE {it:.1%}, per-layer MAPE {layer:.1%})")
    names = sys.argv[1:] or list(GRID)  # fit only the constants named on the command line
    for round_ in range(2):
        for name, values in ((n, GRID[n]) for n in names):
            for v in values:
                trial = replace(eff, **{name: v})
                score, it, layer = objective(trial, runs)
                if score < best - 1e-6:
                    best, eff = score, trial
                    print(f"  round {round_}: {name} = {v}: objective {score:.4f} (iteration {it:.1%}, per-layer {layer:.1%})")
    print("fitted:", {k: getattr(eff, k) for k in GRID})


if __name__ == "__main__":
    main()
