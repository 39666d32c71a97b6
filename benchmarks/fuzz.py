"""Fuzz profile / estimate / plan with mutated recipes (tests/fuzz.py) and print the counts by
outcome (ok, traceback, hang over 10 s, bad-exit, long-error, non-finite-json) with one
example of each failure.

Run: python benchmarks/fuzz.py [CALLS=10000] [SEED=0]
"""

import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the generator lives with the tests

from tests.fuzz import make_case, run_case, warm_up  # noqa: E402


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    counts: Counter = Counter()
    examples: dict[str, str] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        warm_up(Path(tmp))
        for _ in range(calls):
            case = make_case(rng)
            outcome = run_case(case, Path(tmp))
            counts[outcome.kind] += 1
            if outcome.kind != "ok":
                examples.setdefault(outcome.kind, f"{' '.join(case.argv)} on {case.text[:100]!r}: {outcome.detail[:200]}")
    print(f"{calls} calls in {time.perf_counter() - start:.0f} s: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for kind, text in examples.items():
        print(f"  {kind}: {text}")


if __name__ == "__main__":
    main()
