#!/usr/bin/env python
"""Codec soak: resident memory and ms per frame over long streams (an hour = 45,000 frames).

Cases, each run in its own process so that its RSS is its own:
  encode    `Mimi.encode_step` on a never-repeating voice-like signal;
  decode    `Mimi.decode_step` on random codes;
  pipeline  file mode through `engine.Session` (Mimi encode -> tiny random Hibiki LM ->
            Mimi decode, pipelined as `translate` runs it).
Each runs with the product's `codec.Handover` (or --every/--warm) or, with --no-handover,
on one rustymimi instance per direction (rustymimi 0.4.1 as it is: it grows, and fails at frame 4096).
Mimi is a random checkpoint in the official layout (real shapes, 32 codebooks on disk).

A sample every --sample frames: frame, wall seconds, RSS, mean ms/frame since the last
sample, handovers so far. A run ends at --frames, after --budget-s seconds, or at an error,
and its JSON says which. `--report` draws every results/soak-*.json into soak.png (RSS and
ms/frame against audio time) and writes soak.md.

    python benchmarks/soak.py --case encode --frames 45000 --budget-s 3600
    python benchmarks/soak.py --case decode --no-handover --frames 4200
    python benchmarks/soak.py --report

Importable: `run_case(case, frames, ...)` returns the record the command line writes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moshi_mac.codec import Handover  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CASES = ("encode", "decode", "pipeline")
CODEBOOKS = 16
LM_CONFIG = "hibiki-1b"


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


class VoiceLike:
    """Frames of a voice-like signal that never repeats: a harmonic voice whose pitch
    random-walks, a syllable envelope at a drifting rate, and a little noise."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.phase = self.env_phase = 0.0
        self.f0 = 150.0

    def __call__(self) -> np.ndarray:
        from moshi_mac.codec import FRAME_SIZE, SAMPLE_RATE

        self.f0 = float(np.clip(self.f0 + self.rng.normal(0, 5), 90, 260))
        step = 2 * np.pi * self.f0 / SAMPLE_RATE
        phase = self.phase + step * np.arange(1, FRAME_SIZE + 1)
        env_step = 2 * np.pi * self.rng.uniform(3, 5) / SAMPLE_RATE
        env = 0.5 * (1 - np.cos(self.env_phase + env_step * np.arange(1, FRAME_SIZE + 1)))
        self.phase, self.env_phase = phase[-1] % (2 * np.pi), (self.env_phase + env_step * FRAME_SIZE) % (2 * np.pi)
        voice = sum(np.sin(k * phase) / k for k in range(1, 6))
        return (0.15 * env * voice + 0.01 * self.rng.standard_normal(FRAME_SIZE)).astype(np.float32)


class Sampler:
    """Records (frame, seconds, RSS MB, ms/frame over the window, handovers); with
    `checkpoint`, calls it with the samples after each one (a killed run keeps them)."""

    def __init__(self, every: int, checkpoint: Callable[[list[dict]], None] | None = None):
        self.every = every
        self.checkpoint = checkpoint
        self.samples: list[dict] = []
        self.start()

    def start(self) -> None:
        """Time from now (after the setup)."""
        self.t0 = self.t_last = time.perf_counter()
        self.f_last = 0

    def __call__(self, frame: int, handovers: int) -> None:
        if frame % self.every:
            return
        now = time.perf_counter()
        self.samples.append({"frame": frame, "seconds": round(now - self.t0, 2),
                             "rss_mb": round(rss_mb(), 1),
                             "ms_per_frame": round(1000 * (now - self.t_last) / (frame - self.f_last), 2),
                             "handovers": handovers})
        self.t_last, self.f_last = now, frame
        if self.checkpoint is not None:
            self.checkpoint(self.samples)


def _codec_loop(case: str, mimi, frames: int, sampler: Sampler, deadline: float) -> str:
    from moshi_mac.codec import CARDINALITY

    signal, rng = VoiceLike(), np.random.default_rng(1)
    sampler.start()
    for i in range(1, frames + 1):
        if case == "encode":
            mimi.encode_step(signal())
        else:
            mimi.decode_step(rng.integers(0, CARDINALITY, mimi.num_codebooks))
        sampler(i, mimi.handovers)
        if time.perf_counter() > deadline:
            return "budget"
    return "frames"


def _pipeline(mimi_path: Path, handover, frames: int, sampler: Sampler, deadline: float,
              workdir: Path) -> str:
    from moshi_mac import engine
    from moshi_mac.api import load
    from moshi_mac.codec import Mimi
    from moshi_mac.config import load_config
    from moshi_mac.random_model import make_random_model

    out = workdir / "model"
    make_random_model(load_config(ROOT / "configs" / f"{LM_CONFIG}.toml"), out, tiny=True,
                      mimi=mimi_path)
    model = load(weights=out).loaded
    codecs = (Mimi(mimi_path, model.cfg.user_codebooks, handover=handover),
              Mimi(mimi_path, model.cfg.dep_q, handover=handover))
    session = engine.Session(model, keep_audio=False, codecs=codecs)
    signal, stop, fed = VoiceLike(), threading.Event(), [0]
    ended = ["frames"]

    def source(_stop=None):
        if fed[0] >= frames:
            return None
        fed[0] += 1
        return engine.InFrame("input", signal(), (fed[0] - 1) * 1920)

    def on_step(s):
        sampler(s.input_frames, s.encoder.handovers + s.decoder.handovers)
        if time.perf_counter() > deadline:
            ended[0] = "budget"
            stop.set()

    sampler.start()
    session.run(source, pipelined=True, stop=stop, on_step=on_step)
    return ended[0]


def run_case(case: str, frames: int, *, handover: Handover | None = Handover(), sample_every: int = 250,
             budget_s: float | None = None, mimi_path: Path | None = None,
             checkpoint: Path | None = None) -> dict:
    """One soak run in this process (see the module docstring); returns its record and,
    with `checkpoint`, keeps the samples so far in that JSON file while it runs."""
    from moshi_mac.codec import FRAME_SIZE, SAMPLE_RATE, Mimi
    from moshi_mac.mimi_random import write_random_mimi

    policy = handover
    sampler = Sampler(sample_every)
    with tempfile.TemporaryDirectory() as tmp:
        if mimi_path is None:
            mimi_path = write_random_mimi(Path(tmp) / "tokenizer-e351c8d8-checkpoint125.safetensors")
        rec = {"case": case, "handover": None if policy is None else vars(policy),
               "frames_asked": frames, "budget_s": budget_s, "codebooks": CODEBOOKS,
               "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
               "loadavg_before": os.getloadavg(), "rss_mb_start": round(rss_mb(), 1)}
        if checkpoint is not None:
            sampler.checkpoint = lambda s: _write(checkpoint, dict(rec, ended="running", samples=s))
        deadline = time.perf_counter() + (budget_s or float("inf"))
        try:
            if case == "pipeline":
                rec["lm"] = f"{LM_CONFIG} tiny random"
                rec["ended"] = _pipeline(mimi_path, policy, frames, sampler, deadline, Path(tmp))
            else:
                mimi = Mimi(mimi_path, CODEBOOKS, handover=policy)
                rec["ended"] = _codec_loop(case, mimi, frames, sampler, deadline)
        except Exception as e:  # noqa: BLE001  (recorded: rustymimi's own limit is a result)
            rec["ended"] = "error"
            rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
    s = sampler.samples
    rec.update(samples=s, loadavg_after=os.getloadavg(),
               frames_done=s[-1]["frame"] if s else 0,
               audio_s=(s[-1]["frame"] if s else 0) * FRAME_SIZE / SAMPLE_RATE)
    rec.update(summary(s, 2 if case == "pipeline" else 1))
    return rec


def _write(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)


def summary(samples: list[dict], directions: int = 1) -> dict:
    """RSS just after each handover of every direction (one instance: every sample) and its
    least-squares slope in MB per 1000 frames; RSS peak; median ms/frame."""
    if len(samples) < 3:
        return {}
    after = [p for prev, p in zip(samples, samples[1:])
             if p["handovers"] > prev["handovers"] and p["handovers"] % directions == 0]
    base = after if len(after) >= 2 else samples
    slope = np.polyfit([p["frame"] for p in base], [p["rss_mb"] for p in base], 1)[0]
    return {"rss_mb_after_handovers": [p["rss_mb"] for p in after],
            "rss_slope_mb_per_1000_frames": round(1000 * float(slope), 2),
            "rss_mb_max": max(p["rss_mb"] for p in samples),
            "ms_per_frame_median": round(float(np.median([p["ms_per_frame"] for p in samples])), 1)}


def result_path(case: str, handover: bool) -> Path:
    return RESULTS / f"soak-{case}{'' if handover else '-nohandover'}.json"


def report(paths: list[Path], png: Path, md: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(p.read_text()) for p in paths]
    for r in recs:  # a run killed before its end kept its samples so far
        s = r["samples"]
        if r["ended"] == "running":
            r.update(ended="stopped", frames_done=s[-1]["frame"] if s else 0)
            r["audio_s"] = r["frames_done"] * 0.08
        r.update(summary(s, 2 if r["case"] == "pipeline" else 1))
    fig, (ax_rss, ax_ms) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    rows = ["| case | handover | frames (audio) | ended | RSS peak MB | RSS after each handover MB "
            "| RSS slope MB/1000 frames | ms/frame median |", "|---|---|---|---|---|---|---|---|"]
    for r in recs:
        label = f"{r['case']} ({'handover' if r['handover'] else 'one instance'})"
        minutes = [p["frame"] * 0.08 / 60 for p in r["samples"]]
        ax_rss.plot(minutes, [p["rss_mb"] for p in r["samples"]], label=label)
        ax_ms.plot(minutes, [p["ms_per_frame"] for p in r["samples"]], label=label)
        h = r["handover"]
        rows.append(f"| {r['case']} | {'every %d, warm %d' % (h['every'], h['warm']) if h else 'none'} "
                    f"| {r['frames_done']} ({r['audio_s'] / 60:.1f} min) | {r['ended']}"
                    f"{': ' + r['error'] if r.get('error') else ''} | {r.get('rss_mb_max', '-')} "
                    f"| {', '.join(map(str, r.get('rss_mb_after_handovers', []))) or '-'} "
                    f"| {r.get('rss_slope_mb_per_1000_frames', '-')} | {r.get('ms_per_frame_median', '-')} |")
    ax_rss.set_ylabel("RSS (MB)")
    ax_ms.set_ylabel("ms per 80 ms frame")
    ax_ms.set_xlabel("audio time (minutes)")
    ax_rss.legend(fontsize=8)
    ax_rss.set_title("Mimi soak: resident memory and speed against audio time")
    for ax in (ax_rss, ax_ms):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    md.write_text("# Codec soak\n\n`python benchmarks/soak.py` (see its docstring); plot: "
                  f"[{png.name}]({png.name}). The slope is over the samples just after each "
                  "handover (one instance: over every sample).\n\n" + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=CASES)
    p.add_argument("--frames", type=int, default=45000)
    p.add_argument("--budget-s", type=float, help="stop after this many seconds")
    p.add_argument("--sample", type=int, default=250, help="frames between samples")
    p.add_argument("--no-handover", action="store_true")
    p.add_argument("--every", type=int, default=Handover().every, help="handover period, frames")
    p.add_argument("--warm", type=int, default=Handover().warm, help="handover warm-up, frames")
    p.add_argument("--mimi", type=Path, help="an existing Mimi checkpoint (default: write a random one)")
    p.add_argument("--out", type=Path, help="JSON path (default results/soak-CASE[-nohandover].json)")
    p.add_argument("--report", action="store_true", help="plot and tabulate results/soak-*.json")
    args = p.parse_args(argv)
    if args.report:
        report(sorted(RESULTS.glob("soak-*.json")), RESULTS / "soak.png", RESULTS / "soak.md")
        return 0
    if args.case is None:
        p.error("give --case or --report")
    out = args.out or result_path(args.case, not args.no_handover)
    policy = None if args.no_handover else Handover(args.every, args.warm)
    rec = run_case(args.case, args.frames, handover=policy, sample_every=args.sample,
                   budget_s=args.budget_s, mimi_path=args.mimi, checkpoint=out)
    _write(out, rec)
    print(json.dumps({k: v for k, v in rec.items() if k != "samples"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
