"""`autopar estimate RECIPE --strategy "..." [--json]`: time and memory of one strategy."""

from __future__ import annotations

from autopar.cli.common import add_recipe_args, load_inputs, print_json, require_cluster, write_text_atomic
from autopar.cli.tables import nbytes, num, seconds, si, table
from autopar.cost.model import CostModel
from autopar.spec.strategy import Strategy


def register(subparsers) -> None:
    p = subparsers.add_parser("estimate", help="predict step time and memory of a strategy")
    add_recipe_args(p)
    p.add_argument("--strategy", required=True, help='e.g. "dp=16,tp=8,pp=8,microbatch=1,recompute=full"')
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--report", metavar="FILE.html", help="also write a self-contained HTML report (step time and memory plots)")
    p.set_defaults(func=run)


def run(args) -> int:

    recipe, cluster = load_inputs(args)
    cluster = require_cluster(cluster)
    strategy = Strategy.parse(args.strategy)
    model = CostModel.for_recipe(recipe, cluster)
    est = model.estimate(strategy)
    if args.report:
        from autopar.report import estimate_page

        write_text_atomic(args.report, estimate_page(est, model.capacity_bytes(strategy)), "--report")
    if args.json:
        print_json(est.to_dict())
        return 0
    print(render(est, cluster))
    return 0


def render(est, cluster) -> str:
    lines = [f"strategy: {est.strategy.to_text()}  ({est.devices_used} of {cluster.devices} devices"
             + (f", stages {'/'.join(map(str, est.stages))}" if est.stages else "") + ")"]
    lines.append(f"step time: {seconds(est.step_time_s)}   throughput: {num(est.throughput_samples_s, 4)} samples/s"
                 + (f" ({si(est.tokens_per_s)}tokens/s)" if est.tokens_per_s else "")
                 + f"   {num(est.tflops_per_device, 4)} TFLOP/s per device, MFU {est.mfu:.1%}")
    if est.steps_factor != 1.0:
        lines.append(f"statistical efficiency: x{est.steps_factor:.3g} steps to the same loss; time to train {seconds(est.time_to_train_s)}")
    else:
        lines.append(f"time to train ({est.time_to_train_s / est.step_time_s:.0f} steps): {seconds(est.time_to_train_s)}")
    step = est.step_time_s or 1.0
    t_rows = [[k, seconds(v), f"{v / step:.1%}"] for k, v in est.time_breakdown_s.items() if v > 0]
    m_rows = [[k, nbytes(v)] for k, v in est.memory_breakdown_bytes.items() if v > 0]
    lines.append("\n" + table(["time", "seconds", "share"], t_rows))
    lines.append("\n" + table(["memory per device", "bytes"], m_rows))
    verdict = "fits" if est.fits else f"DOES NOT FIT: {est.reason}"
    lines.append(f"\nmemory per device: {nbytes(est.memory_per_device_bytes)} of {nbytes(cluster.device.memory_bytes * est.strategy.threads)}: {verdict}")
    return "\n".join(lines)
