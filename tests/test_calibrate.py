"""autopar calibrate: the fit recovers known link parameters; the command writes a cluster
file the planner reads, whole or not at all."""

from pathlib import Path

import pytest
import yaml

from autopar.calibrate import cache
from autopar.calibrate.fit import fit_alpha_beta, gather_slowdown, link_from_all_reduce
from autopar.cli.main import main
from autopar.cost import collectives as coll
from autopar.cost.efficiency import DEFAULT
from autopar.spec.cluster import parse_cluster


def test_alpha_beta_fit_recovers_the_link_and_the_cost_model_reproduces_it():
    latency, bandwidth, ranks = 150e-6, 1.5e9, 2
    sizes = [4096, 65536, 1 << 20, 8 << 20, 32 << 20]
    volume = 2 * (ranks - 1) / ranks
    times = [2 * (ranks - 1) * latency + volume * n / bandwidth for n in sizes]
    fit = fit_alpha_beta(sizes, times)
    link_bw, link_lat = link_from_all_reduce(fit, ranks, DEFAULT)
    cluster = parse_cluster({"device": "cpu", "devices_per_node": 2,
                             "intra_node": {"bandwidth_GBps": link_bw / 1e9, "latency_us": link_lat * 1e6}})
    group = coll.place(2, 1, 2, 2)
    for n, t in zip(sizes, times):
        assert coll.all_reduce_s(n, group, cluster, DEFAULT) == pytest.approx(t, rel=1e-6)
    slow = fit_alpha_beta(sizes, [latency + 3.5 * (n / 2) / bandwidth for n in sizes])  # all-gather 3.5x slower per byte
    assert gather_slowdown(fit, slow, ranks) == pytest.approx(3.5, rel=1e-3)


def test_a_noisy_fit_keeps_a_physical_bandwidth():
    """Measured on this machine (calibrate --quick): all-reduce of 4 KB, 256 KB, 2 MB in 4.6, 2.5,
    2.4 ms. Least squares gave a negative slope, then a 1.1 PB/s link the cost model believed."""
    sizes, times = [4096, 262144, 2 << 20], [0.004592, 0.002496, 0.00238]
    fit = fit_alpha_beta(sizes, times)
    assert fit.bandwidth_Bps == pytest.approx((2 << 20) / 0.00238)  # the largest message as all transfer
    assert 0 <= fit.latency_s <= min(times)


def test_calibrate_writes_a_cluster_the_planner_uses(tmp_path, capsys):
    out = tmp_path / "cluster.yaml"
    assert main(["calibrate", "--quick", "--out", str(out)]) == 0
    cluster = parse_cluster(yaml.safe_load(out.read_text()))
    assert cluster.device.shared_memory and cluster.devices >= 1
    assert 1e9 < cluster.device.peak_flops["fp32"] < 1e13  # a CPU core: 1 GFLOP/s .. 10 TFLOP/s
    assert 1e8 < cluster.intra_node.bandwidth_Bps < 1e12
    capsys.readouterr()
    missing = tmp_path / "no" / "such" / "dir" / "c.yaml"
    assert main(["calibrate", "--quick", "--out", str(missing)]) == 2
    assert "--out" in capsys.readouterr().err and not missing.parent.exists()


def test_local_means_this_machine_measured_once_and_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path))
    measured = yaml.safe_load((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cluster-local.yaml").read_text())
    calls = []

    def fake_measure():
        calls.append(1)
        return measured

    monkeypatch.setattr(cache, "_measure", fake_measure)
    first = parse_cluster({"preset": "local"})
    again = parse_cluster({"preset": "local", "nodes": 2})
    assert len(calls) == 1  # measured on first use, then read back
    assert first.device.name == "cpu-calibrated" and again.nodes == 2 and first.device.peak_flops == again.device.peak_flops
    record = yaml.safe_load(next(tmp_path.glob("local-*.yaml")).read_text())
    assert record["machine"] == cache.machine_key() and "load_average_before" in record
    other = {**cache.machine_key(), "cpu": "another CPU model"}
    monkeypatch.setattr(cache, "machine_key", lambda: other)
    parse_cluster({"preset": "local"})
    assert len(calls) == 2 and len(list(tmp_path.glob("local-*.yaml"))) == 2  # another machine: measured again
