"""Behaviour checks on a generation run: silence in, text-stream sanity, speed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..codec import FRAME_SIZE, SAMPLE_RATE
from ..tokenizer import EOS_ID
from . import speed
from .base import (CheckResult, FAIL, SILENCE_LIMITS, SILENCE_SKIP_FRAMES, TEXT_MAX_EOS,
    TEXT_MAX_RUN, TEXT_MAX_SHARE, TEXT_MIN_PAD, TEXT_SHARE_MIN_TOKENS, _db, _result)


# ---------------------------------------------------------------------------------------
# Behaviour and speed: one generation run, through the engine users run
# ---------------------------------------------------------------------------------------

@dataclass
class GenRun:
    """What a generation run produced, with per-step timings in seconds."""

    text: list[int]
    audio: np.ndarray
    lm_seconds: list[float] = field(default_factory=list)
    encode_seconds: list[float] = field(default_factory=list)
    decode_seconds: list[float] = field(default_factory=list)


def run_generation(model, pcm: np.ndarray, seed: int | None = None, codec=None) -> GenRun:
    """Feed `pcm` through an `engine.Session` of `model` (an `engine.LoadedModel`), as
    `translate` does, with Mimi and the LM in turn on one thread (the conservative speed
    figure), after the session's warm-up; each stage's seconds per step come from the
    session's own timers. `codec(path, num_codebooks)` makes the Mimi instances (default:
    the session's, rustymimi); `seed`: default, the model config's."""
    from ..engine import FileSource, Session
    from ..generate import GenOptions

    codecs = None
    if codec is not None:
        cfg, path = model.cfg, model.files.mimi
        codecs = (codec(path, cfg.user_codebooks), codec(path, cfg.dep_q) if cfg.dep_q else None)
    session = Session(model, GenOptions(seed=seed), codecs=codecs)
    run = GenRun([], np.zeros(0, np.float32))
    session.listeners.append(lambda _pcm, out, _added: run.text.append(out.text))
    seen = dict(session.times.seconds)

    def on_step(s) -> None:  # each stage's seconds since the previous step
        now = s.times.seconds
        for stage, times in (("lm", run.lm_seconds), ("encode", run.encode_seconds),
                             ("decode", run.decode_seconds)):
            times.append(now[stage] - seen[stage])
        seen.update(now)

    session.warm_up()
    run.audio = session.run(FileSource(pcm, flush=False), pipelined=False, on_step=on_step).pcm
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
