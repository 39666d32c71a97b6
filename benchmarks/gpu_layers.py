"""On one GPU: measured vs predicted forward + backward time of GPT layers in bf16.

For 4 layer sizes, times one transformer block (autopar's built-in GPT block, the
profile's own module) on the GPU with CUDA events, and compares with the cost model's
per-layer prediction on the device preset (default h200) and on a device re-measured
here (matmul peak and copy bandwidth with the efficiency constants divided out).
Writes benchmarks/results/gpu_layers.json. Needs a CUDA GPU; exits 0 with a message
otherwise. Meant to run as one prepared script on a lent GPU machine:

    python benchmarks/gpu_layers.py --device h200
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from autopar.cost.efficiency import DEFAULT
from autopar.cost.model import CostModel
from autopar.models import build_model
from autopar.spec.cluster import parse_cluster
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy

SIZES = [  # (hidden, heads, seq_len, micro-batch)
    (1024, 16, 2048, 4),
    (2048, 16, 2048, 2),
    (4096, 32, 2048, 1),
    (8192, 64, 2048, 1),
]


def cuda_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measured_device(preset: str) -> dict:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    flops = 2 * n**3 / (cuda_ms(lambda: a @ a) / 1e3)
    x = torch.empty(1 << 28, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    bw = 2 * x.numel() * 4 / (cuda_ms(lambda: y.copy_(x)) / 1e3)
    props = torch.cuda.get_device_properties(0)
    return {"name": f"{preset}-measured", "memory_GB": props.total_memory / 1e9,
            "peak_tflops": {"bf16": flops / DEFAULT.gemm_max / 1e12, "fp32": flops / DEFAULT.gemm_max / 1e12 / 14},
            "memory_bandwidth_GBps": bw / DEFAULT.memory_bandwidth / 1e9,
            "source": f"gpu_layers.py: bf16 matmul {flops / 1e12:.0f} TFLOP/s at 8192^3, copy {bw / 1e9:.0f} GB/s"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="h200", help="device preset to compare with")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure")
        return 0
    measured = measured_device(args.device)
    rows = []
    for hidden, heads, seq, b in SIZES:
        model = {"family": "gpt", "layers": 2, "hidden": hidden, "heads": heads, "seq_len": seq, "vocab": 32000}
        recipe = parse_recipe({"model": model, "data": {"samples": 1000}, "training": {"global_batch": b, "precision": "bf16"}})
        block = build_model(recipe.model, device="cuda", dtype=torch.bfloat16).module.layers[0]
        x = torch.randn(b, seq, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        measured_ms = cuda_ms(lambda: block(x).sum().backward())
        row = {"hidden": hidden, "heads": heads, "seq_len": seq, "microbatch": b, "measured_ms": measured_ms}
        for label, device in (("preset", args.device), ("measured_device", measured)):
            cluster = parse_cluster({"device": device, "devices_per_node": 1, "intra_node": {"bandwidth_GBps": 450}})
            cm = CostModel.for_recipe(recipe, cluster)
            s = Strategy(microbatch=b)
            topo = cm.topology(s)
            c = cm.table(s, b, topo, cm.rate(s, topo.used_per_node)).costs[1]
            row[f"predicted_ms_{label}"] = 1e3 * (c.forward_s + c.backward_s)
        rows.append(row)
        print(f"h={hidden:5} b={b}: measured {measured_ms:7.2f} ms, predicted {row['predicted_ms_preset']:7.2f} ms (preset), "
              f"{row['predicted_ms_measured_device']:7.2f} ms (re-measured device)")
    out = Path(__file__).resolve().parent / "results" / "gpu_layers.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "device_measured": measured, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
