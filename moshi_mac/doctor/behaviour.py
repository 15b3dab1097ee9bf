"""Behaviour checks on a generation run: silence in, text-stream sanity, speed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codec import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from ..tokenizer import EOS_ID
from .base import (CheckResult, FAIL, SILENCE_LIMITS, SILENCE_SKIP_FRAMES, SPEED_MIN_RTF,
    TEXT_MAX_EOS, TEXT_MAX_RUN, TEXT_MAX_SHARE, TEXT_MIN_PAD, TEXT_SHARE_MIN_TOKENS, _db, _result)


# ---------------------------------------------------------------------------------------
# Behaviour and speed: one generation run, through the engine users run
# ---------------------------------------------------------------------------------------

@dataclass
class GenRun:
    """What a generation run produced: every output text token, the decoded audio, and
    the step count with the seconds the session spent waiting for the LM and in all."""

    text: list[int]
    audio: np.ndarray
    steps: int
    lm_s: float
    wall_s: float


def run_generation(model, pcm: np.ndarray, seed: int | None = None, codec=None) -> GenRun:
    """Feed `pcm` through an `engine.Session` of `model` (an `engine.LoadedModel`), as
    `translate` does, sequentially (the conservative speed figure: Mimi and the LM share
    one thread), after the session's warm-up. `codec(path, num_codebooks)` makes the
    Mimi instances (default: the session's, rustymimi); `seed`: default, the model
    config's."""
    from ..engine import FileSource, Session
    from ..generate import GenOptions

    codecs = None
    if codec is not None:
        cfg, path = model.cfg, model.files.mimi
        codecs = (codec(path, cfg.user_codebooks), codec(path, cfg.dep_q) if cfg.dep_q else None)
    session = Session(model, GenOptions(seed=seed), codecs=codecs)
    text: list[int] = []
    session.listeners.append(lambda _pcm, out, _added: text.append(out.text))
    session.warm_up()
    result = session.run(FileSource(pcm, flush=False), pipelined=False)
    return GenRun(text, result.pcm, result.steps, session.times.seconds["lm"], result.wall_s)


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
    threshold = f">= {SPEED_MIN_RTF:g}x real time ({FRAME_RATE:g} steps/s) with Mimi"
    if run.steps == 0 or run.wall_s <= 0:
        return CheckResult("speed", FAIL, "too few steps to time (run longer)", threshold)
    lm_rate = run.steps / max(run.lm_s, 1e-9)
    rate = run.steps / run.wall_s
    rtf = rate / FRAME_RATE
    if rtf >= SPEED_MIN_RTF:
        verdict = f"live: OK ({100 * (rtf - 1):.0f}% headroom)"
    elif rtf >= 1.0:
        verdict = "live: marginal, expect stutter under load; try q8/q4 or close other apps"
    else:
        verdict = "live: too slow; use `translate` on files, or a q8/q4 model"
    figures = (f"LM {lm_rate:.1f} steps/s (time waited for it), with Mimi {rate:.1f} steps/s = "
               f"{rtf:.2f}x real time over {run.steps} steps; {verdict}")
    return _result("speed", rtf >= SPEED_MIN_RTF, figures, threshold)
