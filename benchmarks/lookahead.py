#!/usr/bin/env python
"""The engine's lookahead, before and after, in one run.

`engine.Session` schedules the LM step of frame n + 1 before it reads frame n's tokens
(`LmStepper.schedule` / `collect`, as mlx-lm's `generate_step`); before, every step was
read as soon as it was scheduled (`LmStepper.step`: schedule then wait). This measures,
on random weights, with the same seed and inputs:

- LM only: steps/s of the engine's step loop (`LmStepper`, the tokens of every step
  read), one step at a time ("before") vs one step ahead ("after"), and moshi_mlx 0.3.0's
  steps/s at the same shape where it runs (the benchmark harness's runner);
- file mode: real-time factor (wall time / audio duration) of `Session.run` on a file,
  Mimi included (a random Mimi with the real shapes), pipelined and sequential,
  `lookahead=False` vs `True`;
- that both give identical tokens, text and audio.

Shapes: "tiny" (the harness's tiny Hibiki-1B: d_model 128, real codebooks), "real" (the
real Hibiki-1B shape, ~4 GB; about one second per step on a 2-core CPU: keep --real-steps
and --real-seconds small). Before/after runs alternate, `--rounds` times; a figure is the
median over rounds.

    python benchmarks/lookahead.py --out benchmarks/results/lookahead.json \
        --markdown benchmarks/results/lookahead.md [--shapes tiny real]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _harness():
    """The benchmark harness's `common` and `impls` (in moshi_mac.bench or benchmarks/)."""
    try:
        from moshi_mac.bench import common, impls  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import common
        import impls
    return common, impls


def write_model(shape: str, out: Path, mimi: Path | None) -> Path:
    """A random Hibiki-1B model folder at `shape` (the Mimi checkpoint shared if given)."""
    from moshi_mac.random_model import make_random_model

    common, _ = _harness()
    cfg = common.bench_config("hibiki-1b", shape)
    if not (out / "config.toml").is_file():
        make_random_model(cfg, out, tiny=False, mimi=mimi, force=True)
    return out


def lm_run(lm, codes: np.ndarray, ahead: bool, seed: int) -> tuple[float, list]:
    """Steps/s of `LmStepper` over `codes` [steps, K], one step at a time or one ahead;
    and the outputs (text id, audio codes)."""
    from moshi_mac.engine import InFrame, LmStepper
    from moshi_mac.generate import GenOptions

    stepper = LmStepper(lm, GenOptions(seed=seed))
    stepper.warm_up()
    frames = [InFrame("input", None, i) for i in range(len(codes))]
    outs, pending = [], None
    t0 = time.perf_counter()
    for c, f in zip(codes, frames):
        if not ahead:
            outs.append(stepper.step(c, f))
            continue
        scheduled = stepper.schedule(c, f)
        if pending is not None:
            outs.append(stepper.collect(pending))
        pending = scheduled
    if pending is not None:
        outs.append(stepper.collect(pending))
    wall = time.perf_counter() - t0
    tokens = [(o.text, o.audio.tolist()) for o in outs if o is not None]
    return stepper.steps / wall, tokens


def moshi_mlx_rate(cfg, dtype: str, codes: np.ndarray, seed: int) -> float | str:
    _, impls = _harness()
    try:
        runner = impls.build("moshi_mlx", cfg, dtype, seed=seed)
    except impls.Unsupported as e:
        return f"unsupported: {e}"
    for c in codes[:4]:
        runner.step(c[None])
    t0 = time.perf_counter()
    for c in codes:
        runner.step(c[None])
    return len(codes) / (time.perf_counter() - t0)


def file_run(model, pcm: np.ndarray, ahead: bool, pipelined: bool, seed: int) -> dict:
    from moshi_mac.engine import FRAME_S, FileSource, Session
    from moshi_mac.generate import GenOptions

    session = Session(model, GenOptions(seed=seed), lookahead=ahead)
    session.warm_up()
    res = session.run(FileSource(pcm, flush=False), pipelined=pipelined)
    return {"rtf": res.wall_s / (res.steps * FRAME_S), "wall_s": res.wall_s, "steps": res.steps,
            "pcm": res.pcm, "text": [(t.id, t.time) for t in session.text.tokens]}


def _median(xs):
    return round(statistics.median(xs), 3)


def measure(shape: str, folder: Path, args) -> dict:
    from moshi_mac.api import load
    from moshi_mac.speech_sample import speech_sample

    model = load(weights=folder).loaded
    cfg = model.cfg
    steps = args.tiny_steps if shape == "tiny" else args.real_steps
    seconds = args.tiny_seconds if shape == "tiny" else args.real_seconds
    rounds = args.rounds if shape == "tiny" else 1
    rng = np.random.default_rng(0)
    codes = rng.integers(0, cfg.card, size=(steps, cfg.user_codebooks)).astype(np.int32)
    rec = {"shape": shape, "steps": steps, "seconds": seconds, "rounds": rounds,
           "dtype": str(model.lm.dtype), "params": sum(v.size for _, v in _flat(model.lm)),
           "lm": {}, "file": {}}
    rates = {False: [], True: []}
    tokens = {}
    for _ in range(rounds):
        for ahead in (False, True):
            r, tokens[ahead] = lm_run(model.lm, codes, ahead, args.seed)
            rates[ahead].append(r)
    rec["lm"] = {"before_steps_per_s": _median(rates[False]), "after_steps_per_s": _median(rates[True]),
                 "per_round": {"before": [round(x, 2) for x in rates[False]],
                               "after": [round(x, 2) for x in rates[True]]},
                 "identical_tokens": tokens[False] == tokens[True]}
    rec["lm"]["gain"] = round(rec["lm"]["after_steps_per_s"] / rec["lm"]["before_steps_per_s"], 3)
    if shape == "tiny":
        common, _ = _harness()
        mlx_rate = moshi_mlx_rate(common.bench_config("hibiki-1b", shape), "fp32", codes, args.seed)
        rec["lm"]["moshi_mlx_steps_per_s"] = mlx_rate if isinstance(mlx_rate, str) else round(mlx_rate, 2)
        if not isinstance(mlx_rate, str):
            rec["lm"]["vs_moshi_mlx_before"] = round(rec["lm"]["before_steps_per_s"] / mlx_rate, 2)
            rec["lm"]["vs_moshi_mlx_after"] = round(rec["lm"]["after_steps_per_s"] / mlx_rate, 2)
    pcm = speech_sample(seconds, seed=0)
    for pipelined in ((True, False) if shape == "tiny" else (True,)):
        mode = "pipelined" if pipelined else "sequential"
        runs = {False: [], True: []}
        for _ in range(rounds):
            for ahead in (False, True):
                runs[ahead].append(file_run(model, pcm, ahead, pipelined, args.seed))
        a, b = runs[False][0], runs[True][0]
        rec["file"][mode] = {
            "before_rtf": _median([r["rtf"] for r in runs[False]]),
            "after_rtf": _median([r["rtf"] for r in runs[True]]),
            "steps": a["steps"],
            "identical_output": bool(np.array_equal(a["pcm"], b["pcm"]) and a["text"] == b["text"]
                                     and a["steps"] == b["steps"])}
    return rec


def _flat(lm):
    from mlx.utils import tree_flatten

    return tree_flatten(lm.parameters())


def markdown(data: dict) -> str:
    lines = [f"Command: `{data['command']}`", "",
             f"Machine: {data['machine']}; load average before {data['loadavg_before']}, "
             f"after {data['loadavg_after']}.", "",
             "| shape | LM steps/s before | after | gain | moshi_mlx steps/s | x moshi_mlx before / after "
             "| identical tokens |",
             "|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        lm = r["lm"]
        vs = (f"{lm['vs_moshi_mlx_before']}x / {lm['vs_moshi_mlx_after']}x"
              if "vs_moshi_mlx_after" in lm else "n/a")
        lines.append(f"| {r['shape']} | {lm['before_steps_per_s']} | {lm['after_steps_per_s']} | "
                     f"{lm['gain']}x | {lm.get('moshi_mlx_steps_per_s', 'n/a')} | {vs} | "
                     f"{lm['identical_tokens']} |")
    lines += ["", "| shape | file mode | RTF before | RTF after | steps | identical output |",
              "|---|---|---|---|---|---|"]
    for r in data["results"]:
        for mode, f in r["file"].items():
            lines.append(f"| {r['shape']} | {mode} | {f['before_rtf']} | {f['after_rtf']} | "
                         f"{f['steps']} | {f['identical_output']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["tiny"], choices=["tiny", "real"])
    p.add_argument("--tiny-steps", type=int, default=200)
    p.add_argument("--tiny-seconds", type=float, default=10.0)
    p.add_argument("--real-steps", type=int, default=16)
    p.add_argument("--real-seconds", type=float, default=1.6)
    p.add_argument("--rounds", type=int, default=3, help="before/after alternations (tiny)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--models-dir", type=Path, help="where the random model folders go "
                                                  "(default: a temporary folder)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "lookahead.json")
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)

    from moshi_mac.mimi_random import write_random_mimi

    t0 = time.time()
    data = {"command": "python benchmarks/lookahead.py " + " ".join(argv or sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"Python {platform.python_version()}, {platform.system()}",
            "loadavg_before": [round(x, 2) for x in os.getloadavg()], "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.models_dir or Path(tmp)
        mimi = base / "tokenizer-e351c8d8-checkpoint125.safetensors"
        if not mimi.is_file():
            write_random_mimi(mimi, seed=0)
        for shape in args.shapes:
            folder = write_model(shape, base / f"hibiki-1b-{shape}", mimi)
            rec = measure(shape, folder, args)
            print(json.dumps(rec), flush=True)
            data["results"].append(rec)
    data["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    data["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
