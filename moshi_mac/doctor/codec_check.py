"""The codec check: a Mimi round trip of the built-in speech sample, SNR and mel distance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..codec import SAMPLE_RATE
from .base import (CODEC_MAX_LAG, CODEC_MAX_LEVEL_DB, CODEC_MAX_MEL_DB, CODEC_MIN_SNR_DB,
    CheckResult, MEL_BANDS, MEL_FLOOR_DB, _db, _result)


# ---------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------

def _mel_filters(n_fft: int, bands: int = MEL_BANDS) -> np.ndarray:
    def mel(f):
        return 2595 * np.log10(1 + f / 700.0)

    edges = 700 * (10 ** (np.linspace(mel(0), mel(SAMPLE_RATE / 2), bands + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


def log_mel(x: np.ndarray, n_fft: int = 1024, hop: int = 240) -> np.ndarray:
    """Log-mel power spectrogram in dB, [frames, MEL_BANDS]."""
    x = np.pad(np.asarray(x, np.float64), (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return 10 * np.log10(power @ _mel_filters(n_fft).T + 1e-12)


def mel_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Mean |dB| difference of the log-mel spectrograms of `x` and `y` (scaled to `x`'s
    RMS, so the level is left to its own figure), over the cells where either is within
    MEL_FLOOR_DB of `x`'s loudest cell; both are clamped at that floor."""
    y = np.asarray(y, np.float64) * (np.sqrt(np.mean(np.square(x, dtype=np.float64)))
                                     / (np.sqrt(np.mean(np.square(y, dtype=np.float64))) + 1e-12))
    mx_, my = log_mel(x), log_mel(y)
    n = min(len(mx_), len(my))
    mx_, my = mx_[:n], my[:n]
    floor = mx_.max() - MEL_FLOOR_DB
    cells = (mx_ > floor) | (my > floor)
    if not cells.any():
        return float("inf")
    return float(np.abs(np.maximum(mx_, floor) - np.maximum(my, floor))[cells].mean())


def align(x: np.ndarray, y: np.ndarray, max_lag: int = CODEC_MAX_LAG):
    """Shift `y` against `x` by the lag (|lag| <= max_lag) of the largest cross-correlation;
    return the overlapping parts and the lag (positive: `y` is late)."""
    n = min(len(x), len(y))
    x, y = np.asarray(x[:n], np.float64), np.asarray(y[:n], np.float64)
    size = 1 << (2 * n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size)), size)
    lags = np.r_[0:max_lag + 1, -max_lag:0]
    lag = int(lags[np.argmax(corr[lags])])
    if lag >= 0:
        return x[:n - lag], y[lag:], lag
    return x[-lag:], y[:n + lag], lag


def si_snr(x: np.ndarray, y: np.ndarray) -> float:
    """Scale-invariant SNR (dB) of `y` as an estimate of `x`."""
    alpha = np.dot(x, y) / (np.dot(y, y) + 1e-20)
    target = alpha * y
    return 10 * math.log10((np.dot(target, target) + 1e-20) / (np.dot(x - target, x - target) + 1e-20))


@dataclass
class CodecFigures:
    snr_db: float
    mel_db: float
    level_db: float
    lag: int


def codec_figures(x: np.ndarray, y: np.ndarray) -> CodecFigures:
    xa, ya, lag = align(x, y)
    level = _db(float(np.sqrt(np.mean(ya ** 2)))) - _db(float(np.sqrt(np.mean(xa ** 2))))
    return CodecFigures(si_snr(xa, ya), mel_distance(xa, ya), level, lag)


def check_codec(codec, pcm: np.ndarray) -> tuple[CheckResult, np.ndarray | None]:
    """Round trip `pcm` through `codec` (encode -> decode); returns the check and the codes."""
    threshold = (f"mel <= {CODEC_MAX_MEL_DB:g} dB, level within +-{CODEC_MAX_LEVEL_DB:g} dB, "
                 f"SNR >= {CODEC_MIN_SNR_DB:g} dB")
    codes = codec.encode(pcm)
    out = codec.decode(codes)
    f = codec_figures(pcm, out)
    figures = (f"SNR {f.snr_db:.1f} dB, mel distance {f.mel_db:.1f} dB, level {f.level_db:+.1f} dB "
               f"({codes.shape[0]} codebooks, {len(pcm) / SAMPLE_RATE:.1f} s, lag {f.lag})")
    ok = (f.mel_db <= CODEC_MAX_MEL_DB and abs(f.level_db) <= CODEC_MAX_LEVEL_DB
          and f.snr_db >= CODEC_MIN_SNR_DB)
    return _result("codec round trip", ok, figures, threshold), codes
