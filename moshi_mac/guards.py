"""Numeric guards: clean input audio before Mimi, and catch NaN / Inf coming out of the
model while it runs.

- `sanitize_pcm`: non-finite samples become 0 and the rest is clipped to [-1, 1]. One
  NaN sample reaching Mimi's streaming encoder poisons its state: every later frame
  encodes to code 0. `SanitizeReport` counts what was changed and where, for one warning.
- `NONFINITE_TOKEN`: the token id the LM step emits instead of a sampled token when the
  logits it sampled from held a NaN or Inf (see generate.py). Checking it costs nothing:
  the tokens are on the host already.
- `check_step` / `check_pcm`: raise `NonFiniteError` naming the likely cause.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import NonFiniteError

NONFINITE_TOKEN = -3  # not a vocabulary id, and neither ZERO_TOKEN (-1) nor UNGENERATED (-2)
MAX_TIMES = 3  # times listed in a warning

DOCTOR = "run `moshi-mac doctor` on this model"


@dataclass
class SanitizeReport:
    """What `sanitize_pcm` changed, accumulated over calls (live: chunk after chunk)."""

    sample_rate: int
    nonfinite: int = 0
    clipped: int = 0
    times: list[float] = field(default_factory=list)  # seconds of the first changed spots
    _seen: int = 0  # samples seen so far

    def add(self, bad: np.ndarray, nonfinite: int) -> None:
        """`bad`: [samples] or [samples, channels], True where a sample was changed."""
        rows = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
        self.nonfinite += nonfinite
        self.clipped += int(np.count_nonzero(bad)) - nonfinite
        for i in np.flatnonzero(rows):
            t = round((self._seen + int(i)) / self.sample_rate, 2)
            if len(self.times) >= MAX_TIMES:
                break
            if not self.times or t - self.times[-1] >= 0.5:
                self.times.append(t)
        self._seen += rows.size

    @property
    def changed(self) -> bool:
        return bool(self.nonfinite or self.clipped)

    def warning(self, what: str) -> str:
        parts = []
        if self.nonfinite:
            parts.append(f"{self.nonfinite} NaN/Inf sample(s) replaced by silence")
        if self.clipped:
            parts.append(f"{self.clipped} sample(s) outside [-1, 1] clipped")
        at = ", ".join(f"{t:.2f} s" for t in self.times)
        more = ", ..." if self.nonfinite + self.clipped > len(self.times) else ""
        return f"{what}: {' and '.join(parts)} (at {at}{more}); check the recording"


def sanitize_pcm(pcm: np.ndarray, report: SanitizeReport | None = None) -> np.ndarray:
    """`pcm` with non-finite samples set to 0 and the rest clipped to [-1, 1] (a copy only
    when something changes); what changed is added to `report`."""
    pcm = np.asarray(pcm, dtype=np.float32)
    finite = np.isfinite(pcm)
    all_finite = bool(finite.all())
    if all_finite and (pcm.size == 0 or (pcm.min() >= -1.0 and pcm.max() <= 1.0)):
        if report is not None:
            report.add(np.zeros(pcm.shape, bool), 0)
        return pcm
    out = np.where(finite, pcm, np.float32(0))
    bad = ~finite | (np.abs(out) > 1.0)
    if report is not None:
        report.add(bad, int(pcm.size - np.count_nonzero(finite)))
    return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)


def check_step(tokens: np.ndarray, step: int) -> None:
    """Raise if the LM step's tokens carry the non-finite marker."""
    if (tokens == NONFINITE_TOKEN).any():
        raise NonFiniteError(f"the model produced NaN/Inf logits at step {step}: its LM weights "
                             f"are probably corrupt; {DOCTOR}")


def check_pcm(pcm: np.ndarray, step: int) -> None:
    """Raise if Mimi decoded non-finite audio."""
    if not np.isfinite(pcm).all():
        raise NonFiniteError(f"Mimi decoded NaN/Inf audio at output frame {step}: its weights "
                             f"are probably corrupt; {DOCTOR}")
