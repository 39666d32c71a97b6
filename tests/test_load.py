"""This machine's load: busy cores are seen, `local` is measured under them, plans on a
loaded machine say so and do not pick intra-op threads that the load slows, and runs on
busy cores let their threads sleep at barriers."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autopar.calibrate import cache, load
from autopar.cli.common import require_cluster
from autopar.cli.plan_cmd import busy_cores_note
from autopar.errors import InputError
from autopar.plan.planner import plan
from autopar.runtime.launch import worker_env
from autopar.spec.cluster import LOCAL, parse_cluster
from autopar.spec.recipe import load_recipe
from autopar.spec.strategy import Strategy
from autopar.techniques.threads.cost import thread_flops

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "autopar" / "recipes" / "demo.yaml"
# the 2-core CI machine, calibrated idle (benchmarks/results/cluster-local.yaml)
IDLE = yaml.safe_load((ROOT / "benchmarks" / "results" / "cluster-local.yaml").read_text())


@pytest.fixture
def this_machine(tmp_path, monkeypatch):
    """`local` = the idle CI calibration (no measuring in tests), with no load sampled yet."""
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cache, "_measure", lambda: IDLE)
    load.now.cache_clear()
    load.sampled_busy_cores.cache_clear()
    yield
    load.now.cache_clear()
    load.sampled_busy_cores.cache_clear()


def _loaded(monkeypatch, busy: float, ratios):
    monkeypatch.setattr(load, "busy_cores", lambda window_s=load.WINDOW_S: busy)
    monkeypatch.setattr(load, "load_probe", lambda n, timeout_s=60.0: ratios)


def test_a_busy_process_is_seen_as_a_busy_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = load.busy_cores(0.5)
    finally:
        spinner.kill()
    assert busy is not None and 0.6 <= busy <= 2.0, busy
    assert load.whole_cores(busy) >= 1


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("ratio", [0.05, 0.88, 1.0, 1.6])
def test_a_measured_thread_ratio_reads_back_from_the_cost_model(ratio, threads):
    e = load.efficiency_from_ratio(ratio, threads)
    assert thread_flops(1.0, threads, e) == pytest.approx(min(ratio, threads), rel=1e-9)
    assert thread_flops(1.0, threads - 1, e) > 0  # a positive speed at fewer threads too


def test_the_load_probe_measures_both_ratios_in_a_fresh_process():
    """The real probe (a fresh process, forked stepping processes): it must finish (a process
    stepping more often than the others would wait at the barrier forever) and give speeds."""
    ratios = load.load_probe(2, timeout_s=60)
    assert ratios is not None, "the probe failed or hung"
    assert 0.05 < ratios["threads"] < 3 and 0.05 < ratios["concurrency"] <= 1.5, ratios


def test_local_under_load_carries_the_efficiencies_measured_then(this_machine, monkeypatch):
    _loaded(monkeypatch, 1.04, {"threads": 0.88, "concurrency": 0.45})
    cluster = parse_cluster(LOCAL)
    assert cluster.name == LOCAL and cluster.busy_cores == 1
    assert cluster.device.concurrency_efficiency == pytest.approx(0.45)
    assert thread_flops(1.0, 2, cluster.device.thread_efficiency) == pytest.approx(0.88, rel=1e-3)
    assert "1 of 2 cores busy" in cluster.device.source and "0.45x one alone" in cluster.device.source
    assert "planned on a loaded machine: 1 of 2 cores busy" in busy_cores_note(cluster)


def test_local_idle_is_the_calibration_and_says_nothing(this_machine, monkeypatch):
    _loaded(monkeypatch, 0.2, {"threads": 0.1, "concurrency": 0.1})  # a fifth of a core: the kernel, this shell
    cluster = parse_cluster(LOCAL)
    assert cluster.busy_cores == 0
    assert cluster.device.concurrency_efficiency == IDLE["device"]["concurrency_efficiency"]
    assert busy_cores_note(cluster, load=0.0) == ""


def test_a_loaded_machine_plans_without_the_threads_the_load_slows(this_machine, monkeypatch):
    """Rediscovery: idle, the demo GPT's plan 1 is 2 threads (measured 70 ms against one
    process's 114 ms here); with one core busy, measured 2 threads 137 ms, 2 DDP processes
    140 ms, one process 131 ms (benchmarks/local_load.py), and the probe's ratios then (0.88,
    0.45) make one process plan 1."""
    recipe = load_recipe(DEMO)
    _loaded(monkeypatch, 0.0, None)
    idle = plan(recipe, parse_cluster(LOCAL)).plans[0].strategy
    assert idle.threads == 2 and idle.dp == 1
    load.now.cache_clear()
    load.sampled_busy_cores.cache_clear()
    _loaded(monkeypatch, 1.0, {"threads": 0.88, "concurrency": 0.45})
    busy = plan(recipe, parse_cluster(LOCAL)).plans[0].strategy
    assert busy.devices == 1, busy.to_text()


def test_threads_sleep_at_barriers_only_on_busy_cores(this_machine, monkeypatch):
    _loaded(monkeypatch, 1.0, None)
    assert worker_env(Strategy(threads=2))["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in worker_env(Strategy(dp=2))  # one thread per process: nothing waits
    assert "OMP_WAIT_POLICY" not in worker_env(Strategy(threads=2), here=False)  # a printed command runs elsewhere
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "OMP_WAIT_POLICY" not in worker_env(Strategy(threads=2))  # the user's policy stands
    monkeypatch.delenv("OMP_WAIT_POLICY")
    load.sampled_busy_cores.cache_clear()
    _loaded(monkeypatch, 0.1, None)
    assert "OMP_WAIT_POLICY" not in worker_env(Strategy(threads=2))


def test_no_cluster_means_this_machine(this_machine, monkeypatch):
    _loaded(monkeypatch, 0.0, None)
    cluster = require_cluster(None)
    assert cluster.name == LOCAL and cluster.device.name == IDLE["device"]["name"]
    assert parse_cluster("local").device == cluster.device  # `cluster: local`, a bare preset name
    assert parse_cluster("dgx-a100-80gb").devices == 8


def test_a_worker_never_calibrates(this_machine, monkeypatch):
    """torchrun's ranks would all measure at once, each under the others' load."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(InputError, match="not calibrated yet"):
        parse_cluster(LOCAL)
