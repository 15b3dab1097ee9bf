"""Check results, thresholds (documented in the package docstring) and small helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass


from ..codec import FRAME_SIZE


PASS, FAIL, SKIP = "pass", "FAIL", "skip"
GiB = 2 ** 30

# Thresholds (see the module docstring for where each comes from).
MLX_TOL = 1e-3
MEMORY_MARGIN = 1.15
MEMORY_OVERHEAD = 0.5 * GiB
AUDIO_RATES = (24000, 48000, 44100, 16000)
QUANT_LIMITS = {8: (0.85, 0.02), 4: (0.75, 0.15)}  # bits -> (min top-1, max KL nats)
CODEC_MAX_MEL_DB = 7.5
CODEC_MAX_LEVEL_DB = 6.0
CODEC_MIN_SNR_DB = -22.0
CODEC_MAX_LAG = 2 * FRAME_SIZE
MEL_BANDS = 80
MEL_FLOOR_DB = 40.0
SILENCE_SKIP_FRAMES = 2
SILENCE_LIMITS = {"hibiki": (-40.0, -12.0), "moshi": (-16.0, -0.1)}  # (max RMS, max peak) dBFS
TEXT_MIN_PAD = 0.5
TEXT_MAX_EOS = 1
TEXT_MAX_RUN = 4
TEXT_MAX_SHARE = 0.5
TEXT_SHARE_MIN_TOKENS = 8
SPEED_MIN_RTF = 1.1
WARMUP_STEPS = 3
PROBE_STEPS = 32


@dataclass
class CheckResult:
    name: str
    status: str  # PASS | FAIL | SKIP
    figures: str
    threshold: str = ""
    seconds: float = 0.0


def _result(name: str, ok: bool, figures: str, threshold: str) -> CheckResult:
    return CheckResult(name, PASS if ok else FAIL, figures, threshold)


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _db(x: float) -> float:
    return 20 * math.log10(max(x, 1e-10))
