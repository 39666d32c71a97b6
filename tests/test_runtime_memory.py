"""A rank never materialises the whole model (multi-process, Linux, ~12 s).

One 2-rank torchrun of tests/runtime_helpers/memory.py builds a GPT of ~158 MB of float32
parameters under dp=2,zero=3 and under pp=2, and trains it one step (SGD: no optimizer
state). The built-in families are built on the meta device and each rank draws only its
shards (runtime/materialize.py), so through build + parallelize + initialisation a rank's
peak resident memory grows by its shard (half the model) plus at most one block of drawn
values and bookkeeping; building the whole model first, as before, needed the full size.
Measured (2 cores): growth over the shard 10 MB (FSDP2) and 4 MB (pipeline).

The step then holds the shard's parameters and gradients (together the full size with two
ranks) plus FSDP2's gathered blocks: measured 1.53x the full size (zero=3), 1.06x (pp=2),
against 2x for the whole model's parameters and gradients alone.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
INIT_SLACK = 32 * MIB  # one 4 MiB block of drawn values, FSDP2's padded copy of one parameter, module objects
GPT = {"family": "gpt", "layers": 8, "hidden": 640, "heads": 10, "seq_len": 16, "vocab": 64}  # 39.4M parameters, 158 MB
CASE = {
    "recipe": {"model": GPT, "data": {"samples": 64}, "training": {"global_batch": 2, "optimizer": "sgd", "lr": 0.01, "precision": "fp32"}},
    "strategies": ["dp=2,zero=3", "pp=2,schedule=1f1b,microbatch=1"],
}


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    if not _can_reset_peak():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident set")
    work = tmp_path_factory.mktemp("memory")
    case_path, out_path = work / "case.json", work / "out.json"
    case_path.write_text(json.dumps(CASE))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "tests.runtime_helpers.memory", str(case_path), str(out_path)]
    # fixed mmap threshold: freed tensors return to the system, so growth is not hidden by a reused heap
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if not out_path.exists():
        pytest.fail(f"torchrun exited {proc.returncode} without results:\n{proc.stderr[-4000:]}")
    return {r["strategy"]: r for r in json.loads(out_path.read_text())}


@pytest.mark.parametrize("strategy", CASE["strategies"])
def test_rank_builds_only_its_shard(measured, strategy):
    r = measured[strategy]
    assert "error" not in r, r["error"]
    for rank in r["ranks"]:
        full, shard, init = rank["full_bytes"], rank["shard_bytes"], rank["init_bytes"]
        assert shard <= 0.51 * full, (shard, full)  # the strategy halves the model
        assert init < shard + INIT_SLACK, f"init grew {init / MIB:.0f} MiB for a {shard / MIB:.0f} MiB shard"
        assert init < 0.75 * full, f"init grew {init / MIB:.0f} MiB: the {full / MIB:.0f} MiB model was materialised"


@pytest.mark.parametrize("strategy", CASE["strategies"])
def test_rank_trains_one_step_without_the_whole_model(measured, strategy):
    r = measured[strategy]
    assert "error" not in r, r["error"]
    assert 0 < sum(rank["loss"] for rank in r["ranks"]) < 10  # the step's mean loss (about log 64 = 4.2)
    for rank in r["ranks"]:
        assert rank["step_bytes"] < 1.75 * rank["full_bytes"], rank  # the whole model's parameters and gradients: 2x
