"""One self-contained HTML page for a plan, an estimate or a validation run.

The page holds its text and its plots (matplotlib, drawn to inline SVG): nothing is fetched
when it is opened, and it runs no script. What it shows:
  - plan:     the ranked plans, why plan 1 won and why each family lost, each plan's step
              time by part, each plan's memory per device against the device's capacity,
              plan 1's pipeline timeline (micro-batches per stage, bubbles), and time to
              train against devices with the Pareto front;
  - estimate: the strategy's step time by part and memory against capacity;
  - validate: predicted against measured step times.
"""

from __future__ import annotations

import html
import io
from typing import Optional, Sequence

import matplotlib

matplotlib.use("svg")  # no display; every figure becomes inline SVG
import matplotlib.pyplot as plt  # noqa: E402

from autopar.cli.tables import nbytes, num, seconds  # noqa: E402
from autopar.cost.estimate import Estimate  # noqa: E402
from autopar.spec.enums import Schedule  # noqa: E402

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:nth-child(2),th:nth-child(2){text-align:left;font-family:monospace;max-width:420px}h2{margin-top:1.6em}
.note{color:#555}li{margin:.3em 0}"""
PARTS = ("compute", "recompute", "tp_comm", "ep_comm", "cp_comm", "pp_comm", "bubble", "dp_comm", "offload", "optimizer", "data")
MEMORY = ("params", "grads", "optimizer", "activations", "buffers", "reserve")


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _esc(text: object) -> str:
    return html.escape(str(text))


def _page(title: str, sections: Sequence[str]) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>{''.join(sections)}</body></html>\n")


def _plans_table(estimates: Sequence[Estimate]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("#", "strategy", "devices", "step", "samples/s", "memory/device", "MFU", "time to train"))
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{_esc(e.strategy.to_text()).replace(',', ',<wbr>')}</td><td>{e.devices_used}</td><td>{seconds(e.step_time_s)}</td>"
        f"<td>{num(e.throughput_samples_s, 4)}</td><td>{nbytes(e.memory_per_device_bytes)}</td><td>{e.mfu:.1%}</td>"
        f"<td>{seconds(e.time_to_train_s)}</td></tr>" for i, e in enumerate(estimates))
    return f"<table><tr>{head}</tr>{rows}</table>"


def breakdown_svg(estimates: Sequence[Estimate], labels: Sequence[str]) -> str:
    """Each estimate's step time by part, stacked horizontal bars (s)."""
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(estimates) + 1.2))
    left = [0.0] * len(estimates)
    for part in PARTS:
        widths = [e.time_breakdown_s.get(part, 0.0) for e in estimates]
        if any(widths):
            ax.barh(labels, widths, left=left, label=part)
            left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("step time (s)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), fontsize=8, ncols=6, frameon=False)
    return _svg(fig)


def memory_svg(estimates: Sequence[Estimate], labels: Sequence[str], capacity_bytes: float) -> str:
    """Each estimate's memory per device by kind against the device's capacity (GB)."""
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(estimates) + 1.2))
    left = [0.0] * len(estimates)
    for kind in MEMORY:
        widths = [e.memory_breakdown_bytes.get(kind, 0.0) / 1e9 for e in estimates]
        if any(widths):
            ax.barh(labels, widths, left=left, label=kind)
            left = [a + b for a, b in zip(left, widths)]
    ax.axvline(capacity_bytes / 1e9, color="black", linestyle="--", label=f"capacity {nbytes(capacity_bytes)}")
    ax.invert_yaxis()
    ax.set_xlabel("memory per device (GB)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), fontsize=8, ncols=4, frameon=False)
    return _svg(fig)


def pipeline_timeline(pp: int, m: int, forward_s: Sequence[float], backward_s: Sequence[float], gpipe: bool) -> list[list[tuple[str, int, float, float]]]:
    """Per stage, its (kind F/B, micro-batch, start s, end s) under GPipe or 1F1B: each F waits
    for the previous stage's F of that micro-batch, each B for the next stage's B, and a stage
    runs one at a time in its schedule's order (1F1B: pp - s warm-up forwards, then alternating)."""
    orders = []
    for s in range(pp):
        if gpipe:
            order = [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
        else:
            warm = min(pp - s, m)
            order = [("F", i) for i in range(warm)]
            f, b = warm, 0
            while b < m:
                order.append(("B", b))
                b += 1
                if f < m:
                    order.append(("F", f))
                    f += 1
        orders.append(order)
    done: dict[tuple[str, int, int], float] = {}
    free, pos = [0.0] * pp, [0] * pp
    out: list[list[tuple[str, int, float, float]]] = [[] for _ in range(pp)]
    progress = True
    while progress:
        progress = False
        for s in range(pp):
            while pos[s] < len(orders[s]):
                kind, i = orders[s][pos[s]]
                dep = ("F", i, s - 1) if kind == "F" else (("B", i, s + 1) if s + 1 < pp else ("F", i, s))
                if (kind == "F" and s == 0) or dep in done:
                    start = max(free[s], done.get(dep, 0.0))
                    end = start + (forward_s[s] if kind == "F" else backward_s[s])
                    done[(kind, i, s)] = end
                    out[s].append((kind, i, start, end))
                    free[s] = end
                    pos[s] += 1
                    progress = True
                else:
                    break
    return out


def _timeline(e: Estimate, model) -> str:
    """Plan 1's pipeline, micro-batches per stage (1F1B or GPipe order; interleaved and
    zero-bubble chunks drawn as their rank's whole stage, said in the caption)."""
    s = e.strategy
    if s.pp == 1:
        return "<p class='note'>Plan 1 has no pipeline: every device runs the whole model on its micro-batches.</p>"
    G = model.work.global_batch
    m = s.num_microbatches(G)
    ranks = model.ranks(s, *_table_and_layout(model, s))
    fwd = [r.compute_s - r.backward_s for r in ranks.ranks]
    bwd = [r.backward_s + r.recompute_s for r in ranks.ranks]
    shown = min(m, 4 * s.pp)  # enough rounds to show the warm-up, steady state and drain
    lanes = pipeline_timeline(s.pp, shown, fwd, bwd, s.schedule is Schedule.GPIPE)
    fig, ax = plt.subplots(figsize=(10, 0.45 * s.pp + 1.2))
    for stage, ops in enumerate(lanes):
        for kind, i, a, z in ops:
            ax.barh(stage, z - a, left=a, color="#4c72b0" if kind == "F" else "#dd8452", edgecolor="white", linewidth=0.5)
            if z - a > 0.02 * (ops[-1][3] or 1):
                ax.text((a + z) / 2, stage, str(i), ha="center", va="center", fontsize=6, color="white")
    ax.set_yticks(range(s.pp), [f"stage {r}" for r in range(s.pp)])
    ax.invert_yaxis()
    ax.set_xlabel("time (s): forward (blue) and backward (orange) of each micro-batch; gaps are bubbles")
    order = "GPipe" if s.schedule is Schedule.GPIPE else "1F1B"
    caption = (f"{shown} of {m} micro-batches in {order} order" +
               ("" if s.schedule in (Schedule.GPIPE, Schedule.ONE_F_ONE_B) else
                f"; the plan's {s.schedule.value} schedule (v={s.virtual_stages}) interleaves chunks, which this drawing merges per rank"))
    return _svg(fig) + f"<p class='note'>{_esc(caption)}</p>"


def _table_and_layout(model, s):
    b = s.microbatch_size(model.work.global_batch)
    topo = model.topology(s)
    table = model.table(s, b, topo, model.rate(s, topo.used_per_node))
    return table, s.stages or model.layout(s, table), topo


def pareto_svg(points: Sequence[Estimate]) -> str:
    """Time to train against devices: every estimate, the Pareto front (no other is both
    faster and on as few devices) joined."""
    pts = sorted(((e.devices_used, e.time_to_train_s / 86400, e.strategy.to_text()) for e in points if e.fits), key=lambda p: (p[0], p[1]))
    front, best = [], float("inf")
    for d, t, _ in pts:
        if t < best:
            front.append((d, t))
            best = t
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color="#999", label="plans and each family's best")
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#c44e52", label="Pareto front")
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=24, color="#c44e52")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices")
    ax.set_ylabel("time to train (days)")
    ax.legend(fontsize=8)
    return _svg(fig)


def plan_page(result, model, title: Optional[str] = None) -> str:
    """The plan report: result a PlanResult, model the CostModel it was planned on."""
    plans = [p.estimate for p in result.plans]
    labels = [f"plan {p.rank}" for p in result.plans]
    cap = model.capacity_bytes(plans[0].strategy)
    family = [model.estimate(r.strategy, check=False) for r in result.rejected if r.strategy is not None]
    why_not = "".join(f"<li><b>{_esc(r.family)}</b>: {_esc(r.reason)}</li>" for r in result.rejected)
    cl = result.cluster
    sections = [
        f"<p>{_esc(model.profile.model)}, {model.profile.params:,} parameters, on {cl.nodes} x {cl.devices_per_node} "
        f"{_esc(cl.device.name)} ({cl.devices} devices); {result.candidates} candidates priced in {result.seconds:.2f} s.</p>",
        "<h2>Ranked plans</h2>", _plans_table(plans),
        f"<h2>Why plan 1</h2><p>{_esc(result.plans[0].explanation)}</p>",
        f"<h2>Why not the others</h2><ul>{why_not}</ul>",
        "<h2>Step time by part</h2>", breakdown_svg(plans, labels),
        "<h2>Memory per device</h2>", memory_svg(plans, labels, cap),
        "<h2>Pipeline timeline of plan 1</h2>", _timeline(plans[0], model),
        "<h2>Time to train against devices</h2>", pareto_svg(plans + family),
    ]
    return _page(title or "autopar plan", sections)


def estimate_page(e: Estimate, capacity_bytes: float, title: Optional[str] = None) -> str:
    label = [e.strategy.to_text()[:40]]
    sections = ["<h2>Estimate</h2>", _plans_table([e]),
                f"<p>{'fits' if e.fits else _esc(e.reason or 'does not fit')}</p>",
                "<h2>Step time by part</h2>", breakdown_svg([e], label),
                "<h2>Memory per device</h2>", memory_svg([e], label, capacity_bytes)]
    return _page(title or f"autopar estimate: {e.strategy.to_text()}", sections)


def validate_page(rows, score, title: Optional[str] = None) -> str:
    """Predicted against measured step times of a validation run (cli/validate_cmd rows)."""
    done = [r for r in rows if r.measured_step_time_s]
    fig, ax = plt.subplots(figsize=(6, 6))
    xs, ys = [r.measured_step_time_s for r in done], [r.predicted_step_time_s for r in done]
    ax.scatter(xs, ys, color=["#c44e52" if r.source.startswith("plan") else "#4c72b0" for r in done])
    lim = [min(xs + ys) * 0.8, max(xs + ys) * 1.25] if done else [0.1, 1]
    ax.plot(lim, lim, color="#999", linestyle="--", label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured step (s)")
    ax.set_ylabel("predicted step (s)")
    ax.legend(fontsize=8)
    body = "".join(f"<tr><td>{_esc(r.source)}</td><td>{_esc(r.strategy.to_text())}</td><td>{seconds(r.predicted_step_time_s)}</td>"
                   f"<td>{seconds(r.measured_step_time_s) if r.measured_step_time_s else 'failed'}</td></tr>" for r in rows)
    sections = [f"<p>MAPE {score.mape:.1%}, Spearman {score.spearman:.2f}, regret of plan 1 {score.regret:+.1%}</p>",
                f"<table><tr><th>source</th><th>strategy</th><th>predicted</th><th>measured</th></tr>{body}</table>",
                "<h2>Predicted against measured</h2>", _svg(fig)]
    return _page(title or "autopar validate", sections)
