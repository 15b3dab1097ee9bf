#!/usr/bin/env python
"""Mimi and end-to-end cases of the benchmark, each in its own process.

- "mimi": Mimi (rustymimi, the codec moshi-mac streams with) encode and decode, ms per
  80 ms frame, on a random Mimi checkpoint in the official layout.
- "e2e": file mode through `engine.Session` (Mimi encode -> LM step -> Mimi decode):
  wall time and real-time factor (wall / audio duration) with the Mimi stages on their own
  threads (pipelined) and all on one thread (sequential), alternately, same input and seed.

    python -m moshi_mac.bench.bench_codec --case '{"kind": "e2e", "model": "hibiki-1b",
        "shape": "tiny", "dtype": "fp32", "seconds": 10}'

prints `@@RESULT@@ {json}` like bench_lm.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from moshi_mac.mimi_random import cached_random_mimi

from .common import bench_config, loadavg, peak_rss_bytes

MARK = "@@RESULT@@"


def test_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like input: a few gliding harmonics with a syllable envelope, and noise."""
    from moshi_mac.codec import SAMPLE_RATE

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.1 * voice * env + 0.01 * noise).astype(np.float32)


def mimi_case(spec: dict) -> dict:
    from moshi_mac.codec import FRAME_SIZE, Mimi

    rec = dict(spec, loadavg_before=loadavg())
    path = cached_random_mimi(0)
    n_q, frames = spec.get("codebooks", 8), spec.get("frames", 50)
    pcm = test_signal((frames + 5) * FRAME_SIZE / 24000).reshape(-1, FRAME_SIZE)
    enc, dec = Mimi(path, n_q), Mimi(path, n_q)
    codes = [enc.encode_step(f) for f in pcm[:5]]  # warm-up
    enc_ms, dec_ms = [], []
    for f in pcm[5:]:
        t = time.perf_counter()
        codes.append(enc.encode_step(f))
        enc_ms.append(1000 * (time.perf_counter() - t))
    for c in codes[:5]:
        dec.decode_step(c)
    for c in codes[5:]:
        t = time.perf_counter()
        dec.decode_step(c)
        dec_ms.append(1000 * (time.perf_counter() - t))
    rec.update({
        "encode_ms": {"median": statistics.median(enc_ms), "p10": float(np.percentile(enc_ms, 10)),
                      "p90": float(np.percentile(enc_ms, 90))},
        "decode_ms": {"median": statistics.median(dec_ms), "p10": float(np.percentile(dec_ms, 10)),
                      "p90": float(np.percentile(dec_ms, 90))},
        "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3), "loadavg_after": loadavg(), "status": "ok"})
    return rec


class _Tokens:
    """A stand-in text tokenizer for `TextAssembler` (text is not what is timed)."""

    def is_control(self, i: int) -> bool:
        return False

    def is_unknown(self, i: int) -> bool:
        return False

    def id_to_piece(self, i: int) -> str:
        return f"\u2581w{i}"


def e2e_case(spec: dict) -> dict:
    from types import SimpleNamespace

    rec = dict(spec, loadavg_before=loadavg())
    try:
        from moshi_mac import engine
        from moshi_mac.generate import GenOptions

        session_api = (engine.Session, engine.FileSource, engine.LoadedModel)
    except (ImportError, AttributeError) as e:
        rec["status"] = f"unavailable: engine.Session cannot be used ({e})"
        return rec
    from . import impls

    cfg = bench_config(spec["model"], spec["shape"], spec.get("context"))
    t0 = time.perf_counter()
    runner = impls.build("moshi-mac", cfg, spec["dtype"], seed=0)
    rec["build_s"] = round(time.perf_counter() - t0, 2)
    files = SimpleNamespace(mimi=cached_random_mimi(0), name=f"random {spec['model']} ({spec['shape']})")
    loaded = session_api[2](files, cfg, runner.model, _Tokens())
    pcm = test_signal(spec.get("seconds", 10.0))
    results = {"pipelined": [], "sequential": []}
    try:
        for _ in range(spec.get("repeats", 1)):
            for mode in ("pipelined", "sequential"):
                session = session_api[0](loaded, GenOptions(seed=0), keep_audio=False)
                session.warm_up()
                res = session.run(session_api[1](pcm, flush=False), pipelined=mode == "pipelined")
                audio_s = res.input_frames * engine.FRAME_S
                results[mode].append({"wall_s": res.wall_s, "rtf": res.wall_s / audio_s,
                                      "steps": res.steps, "outputs": res.outputs,
                                      "stage_ms": res.stage_ms, "loadavg": loadavg()})
    except TypeError as e:  # the engine's API changed under us
        rec["status"] = f"unavailable: engine.Session API changed ({e})"
        return rec
    rec["runs"] = results
    for mode, runs in results.items():
        rec[f"{mode}_rtf"] = statistics.median(r["rtf"] for r in runs)
    rec["audio_s"] = len(pcm) / 24000
    rec["peak_rss_gb"] = round(peak_rss_bytes() / 1e9, 3)
    rec["loadavg_after"] = loadavg()
    rec["status"] = "ok"
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", required=True, help="a JSON case (see the module docstring)")
    spec = json.loads(p.parse_args(argv).case)
    rec = {"mimi": mimi_case, "e2e": e2e_case}[spec["kind"]](spec)
    print(MARK, json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
