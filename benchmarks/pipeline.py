"""Pipelined vs sequential streaming: wall time of the same input through both loops.

The comparison is made where pipelining matters most, with an LM whose step costs about
as much as Mimi's encode + decode on this machine:
  1. measure Mimi encode + decode ms/frame (a random Mimi with the real shapes);
  2. measure the LM step (with depformer) of random models of growing size, built from the
     tiny Moshi config with a wider, deeper temporal transformer, and pick the one closest;
  3. write that model and run a `--seconds` speech input (espeak-ng French, looped to the
     length) through `Session` sequentially and pipelined, alternately, `--repeats` times,
     with the same seed (the outputs are checked to be identical).
Prints a table and writes JSON (default benchmarks/out/pipeline.json).

    python benchmarks/pipeline.py [--seconds 30] [--repeats 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from moshi_mac.paths import cache_root


TEXT = ("Bonjour à tous et merci d'être venus aujourd'hui. Nous allons parler de la traduction "
        "simultanée de la parole, un problème difficile qui demande de comprendre une phrase "
        "avant même qu'elle soit terminée. Le modèle écoute, attend juste assez, puis parle "
        "dans une autre langue, tout en continuant d'écouter la suite du discours.")
CANDIDATES = [(512, 4), (768, 6), (1024, 6), (1024, 8), (1024, 10), (1024, 12), (1280, 12)]


def mimi_ms(mimi_path: Path, codebooks: int, frames: int = 30) -> dict:
    from moshi_mac.codec import FRAME_SIZE, Mimi

    enc, dec = Mimi(mimi_path, codebooks), Mimi(mimi_path, codebooks)
    pcm = (np.random.default_rng(0).standard_normal((frames + 3, FRAME_SIZE)) * 0.1).astype(np.float32)
    codes = [enc.encode_step(f) for f in pcm[:3]]  # warm-up
    t = time.perf_counter()
    codes = [enc.encode_step(f) for f in pcm[3:]]
    encode = (time.perf_counter() - t) / frames
    dec.decode_step(codes[0])
    t = time.perf_counter()
    for c in codes:
        dec.decode_step(c)
    decode = (time.perf_counter() - t) / frames
    return {"encode_ms": 1000 * encode, "decode_ms": 1000 * decode,
            "total_ms": 1000 * (encode + decode)}


def scaled_config(d_model: int, layers: int):
    from moshi_mac.config import load_config
    from moshi_mac.random_model import tiny_config
    from moshi_mac.registry import config_path

    cfg = copy.deepcopy(tiny_config(load_config(config_path("moshi-7b"))))
    t = cfg.transformer
    ratio = t.dim_feedforward / t.d_model
    t.d_model, t.num_heads, t.num_layers = d_model, d_model // 64, layers
    t.dim_feedforward = int(ratio * d_model)
    return cfg.validate("benchmark config")


def lm_step_ms(cfg, steps: int = 15) -> float:
    import mlx.core as mx

    from moshi_mac.generate import GenOptions, LmGen
    from moshi_mac.models.lm import Lm
    from moshi_mac.random_model import random_lm_tensors
    from moshi_mac.weights import default_dtype

    lm = Lm(cfg)
    lm.load_weights([(k, v.astype(default_dtype()) if not k.startswith("condition_provider.") else v)
                     for k, v in random_lm_tensors(cfg).items()])
    mx.eval(lm.parameters())
    gen = LmGen(lm, options=GenOptions(seed=0))
    zeros = mx.zeros((1, cfg.user_codebooks), dtype=mx.int32)
    for _ in range(4):
        out = gen.step(zeros)
        mx.eval(gen.state_arrays())
    t = time.perf_counter()
    for _ in range(steps):
        out = gen.step(zeros)
        mx.eval(out)
    return 1000 * (time.perf_counter() - t) / steps


def speech(seconds: float, folder: Path) -> np.ndarray:
    from moshi_mac.audio_io import read_audio

    wav = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "fr", "-w", str(wav), TEXT], check=True)
    pcm, _ = read_audio(wav)
    n = int(seconds * 24000)
    return np.tile(pcm, -(-n // pcm.size))[:n]


def run_once(model, pcm: np.ndarray, pipelined: bool) -> tuple[dict, np.ndarray]:
    from moshi_mac.engine import FileSource, Session
    from moshi_mac.generate import GenOptions

    session = Session(model, GenOptions(seed=4242), queue_size=4)
    result = session.run(FileSource(pcm, flush=False), pipelined=pipelined)
    return {"pipelined": pipelined, "wall_s": round(result.wall_s, 2), "steps": result.steps,
            "steps_per_s": round(result.steps / result.wall_s, 2),
            "rtf": round(result.wall_s / (pcm.size / 24000), 3), "stage_ms": result.stage_ms}, result.pcm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=cache_root() / "bench" / "pipeline.json")
    args = p.parse_args(argv)

    import mlx.core as mx

    from moshi_mac.api import load
    from moshi_mac.mimi_random import write_random_mimi
    from moshi_mac.random_model import make_random_model

    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "mlx": mx.__version__, "device": str(mx.default_device()),
                          "load_avg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mimi_path = write_random_mimi(tmp / "tokenizer-e351c8d8-checkpoint125.safetensors")
        base = scaled_config(*CANDIDATES[0])
        mimi = mimi_ms(mimi_path, base.user_codebooks)
        print(f"Mimi ({base.user_codebooks} codebooks): encode {mimi['encode_ms']:.1f} + decode "
              f"{mimi['decode_ms']:.1f} = {mimi['total_ms']:.1f} ms/frame")
        sizes = []
        for d, layers in CANDIDATES:
            ms = lm_step_ms(scaled_config(d, layers))
            sizes.append({"d_model": d, "layers": layers, "step_ms": round(ms, 1)})
            print(f"LM d_model {d:5d}, {layers:2d} layers: {ms:6.1f} ms/step")
            if ms > 1.5 * mimi["total_ms"]:
                break
        pick = min(sizes, key=lambda s: abs(s["step_ms"] - mimi["total_ms"]))
        print(f"picked d_model {pick['d_model']}, {pick['layers']} layers "
              f"({pick['step_ms']} ms/step vs Mimi {mimi['total_ms']:.1f} ms/frame)")
        cfg = scaled_config(pick["d_model"], pick["layers"])
        make_random_model(cfg, tmp / "model", mimi=mimi_path)
        model = load(weights=tmp / "model").loaded
        pcm = speech(args.seconds, tmp)
        runs, outputs = [], {}
        for _ in range(args.repeats):
            for pipelined in (False, True):
                row, out = run_once(model, pcm, pipelined)
                runs.append(row)
                outputs.setdefault(pipelined, out)
                print(f"{'pipelined ' if pipelined else 'sequential'}: {row['wall_s']:7.2f} s wall, "
                      f"{row['steps_per_s']:5.2f} steps/s, RTF {row['rtf']:.2f}, "
                      f"stage ms {row['stage_ms']}")
    same = bool(np.array_equal(outputs[False], outputs[True]))
    best = {mode: min(r["wall_s"] for r in runs if r["pipelined"] == mode) for mode in (False, True)}
    report.update({
        "input_seconds": args.seconds, "mimi": {k: round(v, 1) for k, v in mimi.items()},
        "lm_sizes": sizes, "picked": pick, "runs": runs, "identical_outputs": same,
        "sequential_wall_s": best[False], "pipelined_wall_s": best[True],
        "speedup": round(best[False] / best[True], 2),
    })
    report["machine"]["load_avg_end"] = os.getloadavg()
    print(f"{args.seconds:g} s input: sequential {best[False]:.1f} s, pipelined {best[True]:.1f} s "
          f"-> {report['speedup']}x; identical outputs: {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
