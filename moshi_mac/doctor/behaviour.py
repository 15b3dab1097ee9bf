"""Behaviour checks on a generation run: silence in, text-stream sanity, speed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..codec import FRAME_SIZE, SAMPLE_RATE
from . import speed
from .base import (CheckResult, EOS_ID, FAIL, SILENCE_LIMITS, SILENCE_SKIP_FRAMES,
    TEXT_MAX_EOS, TEXT_MAX_RUN, TEXT_MAX_SHARE, TEXT_MIN_PAD, TEXT_SHARE_MIN_TOKENS, _db,
    _result)


# ---------------------------------------------------------------------------------------
# Behaviour and speed: one generation run
# ---------------------------------------------------------------------------------------

@dataclass
class GenRun:
    """What a generation run produced, with per-step timings in seconds."""

    text: list[int]
    audio: np.ndarray
    lm_seconds: list[float] = field(default_factory=list)
    encode_seconds: list[float] = field(default_factory=list)
    decode_seconds: list[float] = field(default_factory=list)


def run_generation(model, encoder, decoder, pcm: np.ndarray, seed: int = 0) -> GenRun:
    """Feed `pcm` frame by frame: encode, one LM step, decode what it emitted."""
    import mlx.core as mx

    from ..generate import GenOptions, LmGen

    gen = LmGen(model, options=GenOptions(seed=seed))
    frames = len(pcm) // FRAME_SIZE
    run = GenRun([], np.zeros(0, np.float32))
    chunks = []
    for i in range(frames):
        t0 = time.perf_counter()
        codes = encoder.encode_step(pcm[i * FRAME_SIZE:(i + 1) * FRAME_SIZE])
        t1 = time.perf_counter()
        tokens = gen.step(mx.array(codes[None, :model.cfg.user_codebooks]))
        if tokens is not None:
            mx.eval(tokens)
        t2 = time.perf_counter()
        if tokens is not None:
            tokens = np.array(tokens)[0]
            run.text.append(int(tokens[0]))
            if len(tokens) > 1:
                chunks.append(decoder.decode_step(tokens[1:]))
        t3 = time.perf_counter()
        run.encode_seconds.append(t1 - t0)
        run.lm_seconds.append(t2 - t1)
        run.decode_seconds.append(t3 - t2)
    run.audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return run


def check_silence(run: GenRun, model_type: str) -> CheckResult:
    max_rms, max_peak = SILENCE_LIMITS.get(model_type, SILENCE_LIMITS["moshi"])
    threshold = f"RMS <= {max_rms:g} dBFS, peak <= {max_peak:g} dBFS ({model_type})"
    audio = run.audio[SILENCE_SKIP_FRAMES * FRAME_SIZE:]
    if audio.size == 0:
        return CheckResult("silence in", FAIL, "no audio was generated (run longer)", threshold)
    rms = _db(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))))
    peak = _db(float(np.abs(audio).max()))
    figures = f"output RMS {rms:.1f} dBFS, peak {peak:.1f} dBFS over {audio.size / SAMPLE_RATE:.1f} s"
    return _result("silence in", rms <= max_rms and peak <= max_peak, figures, threshold)


def text_stats(tokens: list[int], pad_ids: set[int]) -> dict:
    words = [t for t in tokens if t not in pad_ids and t != EOS_ID]
    run = best = 0
    prev = None
    for t in tokens:
        run = run + 1 if (t == prev and t in words) else 1
        if t not in pad_ids and t != EOS_ID:
            best = max(best, run)
        prev = t
    share = max((words.count(w) for w in set(words)), default=0) / max(len(words), 1)
    return {"pad": sum(t in pad_ids for t in tokens) / max(len(tokens), 1),
            "eos": tokens.count(EOS_ID), "words": len(words), "run": best, "share": share}


def check_text(run: GenRun, cfg) -> CheckResult:
    threshold = (f"PAD >= {100 * TEXT_MIN_PAD:g}%, EOS <= {TEXT_MAX_EOS}, repeat run <= "
                 f"{TEXT_MAX_RUN}, top token <= {100 * TEXT_MAX_SHARE:g}% of words")
    if not run.text:
        return CheckResult("text stream", FAIL, "no text token was generated (run longer)", threshold)
    s = text_stats(run.text, {cfg.moshi_mac.text_padding_id, cfg.moshi_mac.end_of_text_padding_id})
    share_ok = s["words"] < TEXT_SHARE_MIN_TOKENS or s["share"] <= TEXT_MAX_SHARE
    ok = (s["pad"] >= TEXT_MIN_PAD and s["eos"] <= TEXT_MAX_EOS and s["run"] <= TEXT_MAX_RUN
          and share_ok)
    figures = (f"{len(run.text)} tokens: PAD {100 * s['pad']:.0f}%, EOS {s['eos']}, "
               f"{s['words']} word pieces, longest repeat {s['run']}, top piece "
               f"{100 * s['share']:.0f}% of words")
    return _result("text stream", ok, figures, threshold)


def check_speed(run: GenRun) -> CheckResult:
    """The speed check (speed.py) on this run's per-stage timings."""
    return speed.check_speed(speed.StageTimes(run.encode_seconds, run.lm_seconds,
                                              run.decode_seconds))
