"""The large-run techniques' models against published measurements
(src/autopar/validation/data/technique_runs.json; benchmarks/published_runs.py prints them)."""

import pytest

from autopar.validation.techniques import check, load, pipeline_pairs


@pytest.fixture(scope="module")
def checks():
    return [check(r) for r in load()]


def test_zero_bubble_tables_are_predicted_within_their_error(checks):
    """Qi et al. 2024 Tables 4 and 6 (A100, pp = GPUs = 8..32, seq 1024): 1F1B and ZB-1p
    samples per GPU per second, each within 20 %, mean within 10 %."""
    rows = [c for c in checks if c.run_id.startswith("zb2023") and c.predicted is not None]
    assert len(rows) == 33
    errors = [abs(c.error) for c in rows]
    assert max(errors) <= 0.20, max(rows, key=lambda c: abs(c.error))
    assert sum(errors) / len(errors) <= 0.10


def test_zero_bubble_gains_what_the_paper_measured(checks):
    """Over 1F1B, ZB-1p gains at every (model, micro-batches), less with more micro-batches
    (the bubble's share falls), as the paper's numbers do; predicted within 8 points."""
    pairs = pipeline_pairs(checks)
    assert len(pairs) == 12
    for key, measured, predicted in pairs:
        assert measured > 1 and predicted > 1, key
        assert abs(predicted - measured) <= 0.08, (key, measured, predicted)
    for model in ("1.5B", "6.2B", "14.6B", "28.3B"):
        gains = [p for k, _, p in pairs if f"_{model}_" in k]
        assert gains == sorted(gains, reverse=True), (model, gains)


def test_what_cannot_be_expressed_says_why(checks):
    """ZB-V's Table 6 gives stages without blocks (2 pp chunks > layers: the paper's first
    and last stages hold the embedding and head); Megatron's MoE run folds ep=32 over
    tp x dp = 32, which ep dividing dp cannot say."""
    by = {c.run_id: c for c in checks}
    assert all("stages > layers" in c.note for k, c in by.items() if "_zb_v_" in k)
    assert "must divide dp" in by["megatron_moe_qwen3_235b_256xh100"].note


def test_zero_offload_single_v100(checks):
    """ZeRO-Offload, 10B GPT-2 on one V100 at 40 TFLOP/s (Ren et al. 2021): within 25 %."""
    c = next(c for c in checks if c.run_id == "zero_offload_10b_1xv100")
    assert c.predicted is not None and abs(c.error) <= 0.25, c
