"""A built-in, speech-like test signal, synthesized here: no recording, no download.

`speech_sample(seconds)` returns deterministic 24 kHz mono float32 audio that has the
traits a speech codec is built for: a voiced source with a falling pitch contour and
stressed-syllable accents, vowel formants that glide between targets (coarticulation),
fricative and plosive onsets, a syllable envelope at ~4 syllables/s and pauses between
phrases. The level is set to -26 dBFS RMS over the active (non-pause) part, the nominal
active speech level of ITU-T P.56, so level figures measured on it read like speech.

Synthesis is additive: every harmonic k of f0(t) gets the amplitude of a cascade of four
two-pole formant resonators (Klatt-style bandwidths) at k * f0(t), times a -6 dB/octave
source-plus-radiation tilt. Vowel formants are the adult-male averages of Hillenbrand et
al. (1995). Noise comes from a seeded generator, so the same arguments give the same
samples on every machine.
"""

from __future__ import annotations

import numpy as np

from .codec import SAMPLE_RATE
ACTIVE_LEVEL_DBFS = -26.0  # ITU-T P.56 nominal active speech level

# F1..F4 (Hz), Hillenbrand et al. 1995, adult male averages (F4 fixed).
VOWELS = {
    "a": (730, 1090, 2440, 3500), "e": (530, 1840, 2480, 3500), "i": (270, 2290, 3010, 3500),
    "o": (570, 840, 2410, 3500), "u": (300, 870, 2240, 3500),
}
BANDWIDTHS = (60.0, 90.0, 120.0, 150.0)
# Fricative noise bands (Hz): s, sh, f. "p"/"t"/"k" are 8 ms broadband bursts.
FRICATIVES = {"s": (4000, 9000), "sh": (2200, 6000), "f": (1000, 8000)}
PLOSIVES = ("p", "t", "k")
SYLLABLES_PER_SECOND = 4.0
MAX_HARMONIC_HZ = 6000.0


def _resonance(f: np.ndarray, formant: np.ndarray, bandwidth: float) -> np.ndarray:
    """|H(f)| of an analogue two-pole resonator, 1 at f = 0."""
    x = f / formant
    return 1.0 / np.sqrt((1.0 - x * x) ** 2 + (f * bandwidth / formant ** 2) ** 2)


def _plan(seconds: float, rng: np.random.Generator):
    """Per-syllable (start, length, vowel, onset, stressed) and pause positions, in seconds."""
    out, t, phrase_left = [], 0.0, int(rng.integers(5, 9))
    while t < seconds:
        length = float(rng.uniform(0.18, 0.32))
        out.append((t, length, str(rng.choice(list(VOWELS))),
                    str(rng.choice(list(FRICATIVES) + list(PLOSIVES) + ["", ""])),
                    bool(rng.random() < 0.35)))
        t += length
        phrase_left -= 1
        if phrase_left == 0:  # a pause between phrases
            t += float(rng.uniform(0.25, 0.4))
            phrase_left = int(rng.integers(5, 9))
    return out


def _band_noise(n: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spec *= np.clip(np.minimum(f - lo + 500, hi + 500 - f) / 1000.0, 0.0, 1.0)
    y = np.fft.irfft(spec, n)
    return y / (np.sqrt(np.mean(y * y)) + 1e-12)


def speech_sample(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """Deterministic speech-like audio: 24 kHz mono float32, `seconds` long."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    plan = _plan(seconds, rng)
    # Targets per syllable, held at the nucleus, linearly glided from the previous one.
    centres = np.array([s + 0.6 * length for s, length, *_ in plan])
    formants = np.array([VOWELS[v] for _, _, v, _, _ in plan], dtype=np.float64)
    f_t = np.stack([np.interp(t, centres, formants[:, i]) for i in range(4)])  # [4, n]
    # Pitch: declination 150 -> 105 Hz over each ~2 s phrase, +18% on stressed syllables.
    accent = np.interp(t, centres, [1.18 if s else 1.0 for *_, s in plan])
    f0 = (150.0 - 22.0 * (t % 2.0)) * accent * (1 + 0.01 * np.sin(2 * np.pi * 5.0 * t))
    # Envelope: a raised-cosine per syllable voiced part; onsets take the first 25-40%.
    voiced = np.zeros(n)
    noise = np.zeros(n)
    for start, length, _, onset, stressed in plan:
        a, b = int(start * SAMPLE_RATE), min(int((start + length) * SAMPLE_RATE), n)
        if a >= n:
            break
        gain = 1.0 if stressed else 0.7
        on = int(0.3 * (b - a)) if onset else int(0.05 * (b - a))
        if onset in FRICATIVES and on > 0:
            lo, hi = FRICATIVES[onset]
            noise[a:a + on] += 0.25 * gain * np.hanning(on) * _band_noise(on, lo, hi, rng)
        elif onset in PLOSIVES:
            burst = min(int(0.008 * SAMPLE_RATE), b - a)
            noise[a + on - burst:a + on] += 0.5 * gain * rng.standard_normal(burst) * np.hanning(burst)
        m = b - a - on
        if m > 0:
            voiced[a + on:b] = gain * np.sin(np.pi * np.arange(m) / m) ** 0.7
    # Additive synthesis of the voiced source through the formant cascade.
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    y = np.zeros(n)
    for k in range(1, int(MAX_HARMONIC_HZ / f0.min()) + 1):
        fk = k * f0
        amp = (fk < MAX_HARMONIC_HZ) * 100.0 / fk  # -6 dB/octave tilt
        for i in range(4):
            amp = amp * _resonance(fk, f_t[i], BANDWIDTHS[i])
        y += amp * np.sin(k * phase)
    y = y / (np.sqrt(np.mean(y[voiced > 0.1] ** 2)) + 1e-12)
    y = y * voiced + 0.004 * _band_noise(n, 300, 6000, rng) * voiced + noise  # + breathiness
    active = (voiced > 0.05) | (noise != 0)
    rms = np.sqrt(np.mean(y[active] ** 2)) if active.any() else 1.0
    y *= 10 ** (ACTIVE_LEVEL_DBFS / 20) / rms
    return np.clip(y, -0.99, 0.99).astype(np.float32)
