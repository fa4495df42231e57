"""The training-cost benchmark counts real FLOPs of the real training step."""

from __future__ import annotations

import torch

from bench.train_cost import Variant, matmul_rate, measure


def test_patch_4_costs_about_a_quarter_of_patch_2_per_step() -> None:
    rates = {"model_gemm_float32": matmul_rate(torch.float32, 64, 64, 64, 0.05)}
    rows = [measure(Variant(patch, 1, "float32", frames=2), 1, rates) for patch in (2, 4)]
    p2, p4 = rows
    assert p2["tokens_per_step"] == 4 * p4["tokens_per_step"] == 2 * 1 * 2 * 64
    # linear layers scale with tokens, attention with their square: between 3x and 16x
    assert 3.0 < p2["gflop_per_step"] / p4["gflop_per_step"] < 16.0
    assert all(r["step_s_median"] > 0 and r["achieved_gflops"] > 0 for r in rows)
