"""Numeric flags, checked once for every command: no NaN, no Inf, nothing out of range.

argparse turns "nan", "inf" and "-1" into numbers happily; a NaN temperature then
silently becomes greedy sampling, a NaN duration an empty session. `check_flags` looks at
every parsed value whose destination is in `RULES` and raises one `UsageError` line
("--temp must be a finite number in [0, 100], got nan").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Rule:
    flag: str
    low: float
    high: float
    low_open: bool = False  # low itself is not allowed

    def problem(self, value) -> str | None:
        if value is None:
            return None
        ok = math.isfinite(value) and (value > self.low if self.low_open else value >= self.low) \
            and value <= self.high
        if ok:
            return None
        low = f"({self.low:g}" if self.low_open else f"[{self.low:g}"
        shown = repr(value) if isinstance(value, float) else str(value)
        return f"{self.flag} must be a finite number in {low}, {self.high:g}], got {shown}"


SEED_MAX = 2**32 - 1

RULES = {r.flag.lstrip("-").replace("-", "_"): r for r in [
    Rule("--temp", 0, 100), Rule("--temp-text", 0, 100),
    Rule("--top-k", 0, 1_000_000), Rule("--top-k-text", 0, 1_000_000),
    Rule("--seed", 0, SEED_MAX),
    Rule("--max-tail", 0, 3600),
    Rule("--jitter-ms", 0, 10_000), Rule("--max-buffer-ms", 0, 60_000),
    Rule("--max-lag-ms", 0, 60_000), Rule("--echo-guard-db", 0, 120),
    Rule("--duration", 0, 366 * 86400, low_open=True),
    Rule("--seconds", 0, 3600, low_open=True),
    Rule("--debug-step-delay-ms", 0, 60_000),
    Rule("--port", 0, 65535), Rule("--idle-timeout", 0, 366 * 86400, low_open=True),
]}
RULES["cfg_coef"] = Rule("--cfg", 0, 100, low_open=True)


def check_flags(args) -> None:
    """Raise a one-line `UsageError` for the first numeric flag out of its range."""
    for dest, rule in RULES.items():
        problem = rule.problem(getattr(args, dest, None))
        if problem:
            raise UsageError(problem)
