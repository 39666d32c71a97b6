"""Profile a 1T-parameter GPT on the meta device: wall time and peak RSS.

Target (issue: foundation): <= 5 s wall and <= 1 GiB peak RSS on the 2-core CI machine.
Run: python benchmarks/profile_1t.py
"""

import resource
import time

t0 = time.perf_counter()
from autopar.profile.profiler import profile_model  # noqa: E402
from autopar.spec.enums import Precision  # noqa: E402
from autopar.spec.recipe import parse_recipe  # noqa: E402

t_import = time.perf_counter() - t0

GPT_1T = {"family": "gpt", "layers": 128, "hidden": 25600, "heads": 160, "seq_len": 2048, "vocab": 51200}


def main() -> None:
    spec = parse_recipe({"model": GPT_1T, "data": {"samples": 1}, "training": {"global_batch": 1}}).model
    t1 = time.perf_counter()
    prof = profile_model(spec, Precision.BF16)
    t_profile = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"1T GPT: {prof.params / 1e12:.3f} T params, {len(prof.layers)} layers, {len(prof.groups())} traced")
    print(f"profile wall: {t_profile:.2f} s (+ {t_import:.2f} s importing torch and autopar = {t_profile + t_import:.2f} s)")
    print(f"peak RSS: {rss / 2**30:.3f} GiB")
    print(f"targets: wall <= 5 s: {'ok' if t_profile + t_import <= 5 else 'MISSED'}; RSS <= 1 GiB: {'ok' if rss <= 2**30 else 'MISSED'}")


if __name__ == "__main__":
    main()
