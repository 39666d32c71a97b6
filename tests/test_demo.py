"""`autopar demo`, the README's main command: plan, run and compare, end to end."""

import subprocess
import sys


def test_demo_plans_runs_and_compares():
    proc = subprocess.run([sys.executable, "-m", "autopar.cli.main", "demo", "--steps", "3"],
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "== 1. plan" in out and "why plan 1:" in out and "why not the others:" in out
    assert "== 3. prediction vs measurement ==" in out
    assert "step time" in out and "memory per device" in out and "loss " in out
    against = out.split("== 4. plan 1 against the baselines")[1]
    assert "plan 1" in against and against.count("baseline") >= 2 and "failed" not in against, against
    assert "plan 1 measured fastest" in against or "slower than" in against
