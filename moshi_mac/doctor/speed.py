"""The speed check: LM, Mimi encode and Mimi decode timed separately, per 80 ms frame.

A frame must go through all three within 80 ms (12.5 frames/s) for live use. The check
passes at >= SPEED_MIN_RTF x real time with the three stages run in turn (the conservative
figure: on few cores the engine's overlap of Mimi with the LM gains little), names the
stage that takes the most time (the one bounding real time), and gives advice that follows
from it: a smaller (q8/q4) LM helps only when the LM is the bound; when Mimi is, the
limit is the CPU codec whatever the model, and the pipelined bound (the slowest stage
alone) says how far overlapping can go.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..codec import FRAME_RATE
from ..engine import STAGE_NAMES as STAGES
from .base import SPEED_MIN_RTF, WARMUP_STEPS, CheckResult, FAIL, _result

FRAME_MS = 1000 / FRAME_RATE


@dataclass
class StageTimes:
    """Seconds per frame of each stage, in step order (warm-up included)."""

    encode: list[float]
    lm: list[float]
    decode: list[float]

    def per_frame_ms(self, warmup: int = WARMUP_STEPS) -> dict[str, float]:
        """Mean ms per frame of each stage after the warm-up ({} when nothing is left)."""
        out = {}
        for stage in STAGES:
            times = getattr(self, stage)[warmup:]
            if not times:
                return {}
            out[stage] = 1000 * statistics.fmean(times)
        return out


def bounding_stage(ms: dict[str, float]) -> str:
    return max(ms, key=ms.get)


def advice(ms: dict[str, float]) -> str:
    """What to do about a below-real-time (or marginal) run, from the bounding stage."""
    stage = bounding_stage(ms)
    pipelined = FRAME_MS / ms[stage]
    if stage == "lm":
        tip = "a q8/q4 model reads less per step; close other apps"
    else:
        tip = (f"a q8/q4 model will not help (Mimi runs on the CPU); overlapped with the LM "
               f"(the default) at best {pipelined:.2f}x real time")
    if pipelined < 1:
        tip += "; use `translate` on files"
    return f"{STAGES[stage]} bounds real time ({ms[stage]:.1f} of {FRAME_MS:.0f} ms per frame): {tip}"


def check_speed(times: StageTimes) -> CheckResult:
    threshold = (f">= {SPEED_MIN_RTF:g}x real time ({FRAME_RATE:g} frames/s), LM + Mimi encode "
                 f"+ decode in turn")
    ms = times.per_frame_ms()
    if not ms:
        return CheckResult("speed", FAIL, "too few steps to time (run longer)", threshold)
    rtf = FRAME_MS / sum(ms.values())
    if rtf >= SPEED_MIN_RTF:
        verdict = f"live: OK ({100 * (rtf - 1):.0f}% headroom)"
    elif rtf >= 1.0:
        verdict = f"live: marginal, expect stutter under load; {advice(ms)}"
    else:
        verdict = f"live: too slow; {advice(ms)}"
    n = len(times.lm) - WARMUP_STEPS
    figures = (f"LM {ms['lm']:.1f} ms + Mimi encode {ms['encode']:.1f} ms + Mimi decode "
               f"{ms['decode']:.1f} ms per frame = {rtf:.2f}x real time over {n} steps; {verdict}")
    return _result("speed", rtf >= SPEED_MIN_RTF, figures, threshold)
