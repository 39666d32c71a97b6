import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.fixtures importable as "tests.fixtures.user_models"
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _this_machine_calibrated() -> None:
    """`cluster: local` (and no cluster at all) means this machine, measured on first use: in
    tests it reads the CI machine's calibration instead (benchmarks/results/cluster-local.yaml),
    written into a cache of this session's own, so that no test measures the machine for a
    minute at an unforeseen point (the fuzz harness's per-call alarm, say). Its load is still
    sampled for real; tests/test_load.py covers measuring and loads."""
    import tempfile

    import yaml

    from autopar.calibrate import cache

    root = Path(tempfile.mkdtemp(prefix="autopar-cache-"))
    os.environ["AUTOPAR_CACHE_DIR"] = str(root)  # subprocesses (CLI, torchrun ranks) inherit it
    key = cache.machine_key()
    cluster = yaml.safe_load((ROOT / "benchmarks" / "results" / "cluster-local.yaml").read_text())
    cache.cache_path(key).write_text(yaml.safe_dump({"machine": key, "measured": "the CI machine's calibration",
                                                     "cluster": cluster}, sort_keys=False))


_this_machine_calibrated()
