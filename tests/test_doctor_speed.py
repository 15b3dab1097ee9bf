"""doctor's speed check: the three stages timed apart, the bounding one named, and advice
that follows from it (a q8/q4 model only when the LM is the bound)."""

from __future__ import annotations

import pytest

from moshi_mac.doctor import base
from moshi_mac.doctor.speed import StageTimes, bounding_stage, check_speed


def _times(encode_ms: float, lm_ms: float, decode_ms: float, steps: int = 20) -> StageTimes:
    return StageTimes([encode_ms / 1000] * steps, [lm_ms / 1000] * steps, [decode_ms / 1000] * steps)


def test_fast_run_passes_with_the_three_stages_shown():
    r = check_speed(_times(10, 20, 15))  # 45 ms of 80
    assert r.status == base.PASS and "live: OK" in r.figures
    assert "LM 20.0 ms" in r.figures and "Mimi encode 10.0 ms" in r.figures
    assert "Mimi decode 15.0 ms" in r.figures and "1.78x real time" in r.figures


def test_mimi_bound_run_does_not_advise_a_smaller_model():
    # The case: the LM at ~100 steps/s, Mimi decode the bottleneck.
    r = check_speed(_times(56.5, 10, 179.4))
    assert r.status == base.FAIL and "too slow" in r.figures
    assert "Mimi decode bounds real time (179.4 of 80 ms per frame)" in r.figures
    assert "q8/q4 model will not help" in r.figures and "reads less" not in r.figures
    assert "translate" in r.figures  # even overlapped, decode alone is below real time


def test_lm_bound_run_advises_a_quantized_model():
    r = check_speed(_times(20, 60, 10))  # 90 ms in turn: too slow; LM bound
    assert r.status == base.FAIL and "LM bounds real time" in r.figures
    assert "q8/q4 model reads less" in r.figures
    assert "translate" not in r.figures  # the LM alone fits the 80 ms frame
    marginal = check_speed(_times(20, 45, 10))  # 75 ms: 1.07x
    assert marginal.status == base.FAIL and "marginal" in marginal.figures


def test_bounding_stage_and_warm_up():
    assert bounding_stage({"lm": 1.0, "encode": 3.0, "decode": 2.0}) == "encode"
    t = StageTimes([1.0] * 3 + [0.001] * 5, [1.0] * 3 + [0.002] * 5, [1.0] * 3 + [0.003] * 5)
    assert t.per_frame_ms() == pytest.approx({"lm": 2.0, "encode": 1.0, "decode": 3.0})  # no warm-up
    assert check_speed(StageTimes([0.1] * 3, [0.1] * 3, [0.1] * 3)).status == base.FAIL
