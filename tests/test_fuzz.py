"""Every input gets a clean answer: 2,000 fixed-seed fuzzed calls of profile / estimate / plan
(tests/fuzz.py) end with exit 0 or one short error line, within 10 s each, no traceback,
strict JSON. `python benchmarks/fuzz.py N SEED` runs more and prints the counts."""

import random
from collections import Counter

from tests.fuzz import make_case, run_case, warm_up


def test_two_thousand_fuzzed_calls_get_clean_answers(tmp_path):
    rng = random.Random(20261202)
    warm_up(tmp_path)
    counts, bad = Counter(), []
    for _ in range(2000):
        case = make_case(rng)
        outcome = run_case(case, tmp_path)
        counts[outcome.kind] += 1
        if outcome.kind != "ok" and len(bad) < 5:
            bad.append((outcome.kind, case.argv, case.text[:120], outcome.detail))
    assert counts["ok"] == 2000, (dict(counts), bad)
