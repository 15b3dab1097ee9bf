#!/usr/bin/env python
"""LM streaming speed: ms per `LmGen.step` (one 80 ms frame) and steps/s.

Builds random-weight LMs from configs/<model>.toml at their REAL shapes (no download:
`random_lm_tensors` + `Lm(cfg).load_weights`) and at tiny shapes, runs greedy `LmGen` steps
on random user codes and reports the median and spread over repeats (warm-up excluded),
as JSON and a table. Real time is 12.5 steps/s.

    python benchmarks/bench_lm.py --models hibiki-1b moshi-7b --steps 20 --warmup 3 \
        --out benchmarks/out/lm.json

Default dtypes of the real shapes: hibiki-1b fp32 and bf16 (fp32 is the fastest on the
MLX CPU backend), every other model bf16 only (fp32 Moshi-7B needs ~31 GB). A model that
would not fit in the available memory (psutil) is skipped and reported as such. The tiny
shapes (d_model 128, depformer 64, hidden widths multiples of 64, so every matrix is
quantized) run in fp32, q8 (group 64) and q4 (group 32). Timings cover the first
warm-up + repeats x steps frames of a session, i.e. a short context.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import psutil
from mlx.utils import tree_flatten

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moshi_mac.config import LmConfig, load_config  # noqa: E402
from moshi_mac.generate import GenOptions, LmGen  # noqa: E402
from moshi_mac.models import Lm  # noqa: E402
from moshi_mac.random_model import random_lm_tensors, tiny_config  # noqa: E402
from moshi_mac.weights import expected_mlx_shapes, quantize_model  # noqa: E402

FRAME_RATE = 12.5  # Mimi frames per second: real time
DTYPES = {"fp32": mx.float32, "bf16": mx.bfloat16, "fp16": mx.float16}
QUANT = {"q8": (8, 64), "q4": (4, 32)}
DEFAULT_REAL_DTYPES = {"hibiki-1b": ["fp32", "bf16"]}
BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "q8": 1.0 + 4 / 64, "q4": 0.5 + 4 / 32}


def tiny_bench_config(cfg: LmConfig) -> LmConfig:
    """`tiny_config` with d_model 128 / depformer 64 and MLP hidden widths 384 / 192."""
    cfg = tiny_config(cfg)
    t = cfg.transformer
    t.d_model, t.num_heads, t.dim_feedforward = 128, max(4, t.kv_repeat), 576
    if cfg.depformer is not None:
        d = cfg.depformer.transformer
        d.d_model, d.num_heads, d.dim_feedforward = 64, max(4, d.kv_repeat), 288
    return cfg.validate("tiny bench config")


def n_params(cfg: LmConfig) -> int:
    return int(sum(np.prod(s) for s in expected_mlx_shapes(cfg).values()))


def kv_cache_bytes(cfg: LmConfig, dtype: str, batch: int) -> float:
    """The temporal transformer's ring KV caches (allocated whole on the first step)."""
    t = cfg.transformer
    kv_bytes = 2 if dtype in ("bf16", "fp16") else 4
    return 2 * t.num_layers * batch * t.num_kv_heads * t.context * t.head_dim * kv_bytes


def estimate_bytes(cfg: LmConfig, dtype: str, batch: int) -> float:
    """Weights (plus the float copy a quantized build starts from) and KV caches."""
    weights = n_params(cfg) * BYTES[dtype]
    if dtype in QUANT:
        weights += n_params(cfg) * 4
    return weights + kv_cache_bytes(cfg, dtype, batch) + 1.5e9  # + process, buffers, activations


def build(cfg: LmConfig, dtype: str, seed: int) -> Lm:
    """A random-weight model; tensors are evaluated one at a time to bound the peak."""
    float_dtype = mx.float32 if dtype in QUANT else DTYPES[dtype]
    tensors = random_lm_tensors(cfg, seed=seed, dtype=float_dtype)
    for v in tensors.values():
        mx.eval(v)
    model = Lm(cfg)
    model.load_weights(list(tensors.items()), strict=True)
    del tensors
    if dtype in QUANT:
        bits, group = QUANT[dtype]
        quant = quantize_model(model, bits, group)
        if not quant.modules:
            raise RuntimeError(f"nothing was quantized for {dtype}")
        for _, p in tree_flatten(model.parameters()):
            mx.eval(p)
    mx.eval(model.parameters())
    return model


def bench_one(model: Lm, *, steps: int, warmup: int, repeats: int, batch: int,
              cfg_coef: float | None, seed: int) -> dict:
    cfg = model.cfg
    gen = LmGen(model, batch_size=batch, options=GenOptions(greedy=True, cfg_coef=cfg_coef))
    rng = np.random.default_rng(seed)
    total = warmup + repeats * steps
    user = rng.integers(0, cfg.card, size=(total, batch, cfg.user_codebooks)).astype(np.int32)

    def step(i: int) -> float:
        codes = mx.array(user[i])
        t0 = time.perf_counter()
        out = gen.step(codes)
        mx.eval(*([out] if out is not None else []), *gen.state_arrays())
        return time.perf_counter() - t0

    for i in range(warmup):
        step(i)
    per_repeat, all_ms = [], []
    for r in range(repeats):
        ms = [1000 * step(warmup + r * steps + i) for i in range(steps)]
        all_ms += ms
        per_repeat.append(statistics.fmean(ms))
    med = statistics.median(per_repeat)
    return {
        "ms_per_step": {
            "median": med, "min": min(per_repeat), "max": max(per_repeat),
            "per_repeat": per_repeat,
            "step_p10": float(np.percentile(all_ms, 10)), "step_p50": float(np.percentile(all_ms, 50)),
            "step_p90": float(np.percentile(all_ms, 90)),
        },
        "steps_per_s": {"median": 1000 / med, "min": 1000 / max(per_repeat),
                        "max": 1000 / min(per_repeat)},
        "real_time_factor": 1000 / med / FRAME_RATE,
        "cfg_coef": gen.cfg_coef,
        "context_reached": total,
    }


def machine_info() -> dict:
    vm = psutil.virtual_memory()
    return {
        "platform": platform.platform(), "machine": platform.machine(),
        "processor": platform.processor(), "cpu_count": os.cpu_count(),
        "memory_gb": round(vm.total / 1e9, 1), "python": platform.python_version(),
        "mlx": mx.__version__, "mlx_device": str(mx.default_device()),
    }


def run_case(name: str, shape: str, dtype: str, args) -> dict:
    cfg = load_config(ROOT / "configs" / f"{name}.toml")
    if shape == "tiny":
        cfg = tiny_bench_config(cfg)
    elif args.context:
        cfg.transformer.context = args.context
    steps = args.tiny_steps if shape == "tiny" else args.steps
    rec = {"model": name, "shape": shape, "dtype": dtype, "batch": args.batch,
           "params": n_params(cfg), "steps": steps, "warmup": args.warmup,
           "repeats": args.repeats, "context": cfg.transformer.context}
    need = estimate_bytes(cfg, dtype, args.batch)
    avail = psutil.virtual_memory().available
    rec["estimated_gb"] = round(need / 1e9, 2)
    if need > avail:
        rec["status"] = f"skipped: needs ~{need / 1e9:.1f} GB, {avail / 1e9:.1f} GB available"
        print(f"[{name} {shape} {dtype}] {rec['status']}", flush=True)
        return rec
    print(f"[{name} {shape} {dtype}] building ({rec['params'] / 1e9:.2f} B params, "
          f"~{need / 1e9:.1f} GB)...", flush=True)
    t0 = time.perf_counter()
    model = build(cfg, dtype, args.seed)
    rec["build_s"] = round(time.perf_counter() - t0, 1)
    rec["rss_gb"] = round(psutil.Process().memory_info().rss / 1e9, 2)
    kv_need = kv_cache_bytes(cfg, dtype, args.batch) + 1e9
    deadline = time.monotonic() + args.wait_memory
    while (avail := psutil.virtual_memory().available) < kv_need and time.monotonic() < deadline:
        time.sleep(5)  # another process may be holding memory for a while
    if avail < kv_need:
        rec["status"] = (f"skipped after the build: {avail / 1e9:.1f} GB left, the KV caches "
                         f"need {kv_need / 1e9 - 1:.1f} GB + 1 GB (try --context)")
        print(f"[{name} {shape} {dtype}] {rec['status']}", flush=True)
        return rec
    cfg_coef = args.cfg_coef if (args.cfg_coef is None or cfg.conditioners) else None
    print(f"[{name} {shape} {dtype}] built in {rec['build_s']} s (rss {rec['rss_gb']} GB); "
          f"timing {args.warmup} + {args.repeats} x {steps} steps...", flush=True)
    rec["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    rec.update(bench_one(model, steps=steps, warmup=args.warmup, repeats=args.repeats,
                         batch=args.batch, cfg_coef=cfg_coef, seed=args.seed))
    rec["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    rec["status"] = "ok"
    ms = rec["ms_per_step"]
    print(f"[{name} {shape} {dtype}] {ms['median']:.1f} ms/step (repeats {ms['min']:.1f}-"
          f"{ms['max']:.1f}), {rec['steps_per_s']['median']:.2f} steps/s", flush=True)
    del model
    gc.collect()
    mx.clear_cache()
    return rec


def print_table(results: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(json.dumps(results, indent=1))
        return
    table = Table(title="LM streaming step (greedy, batch %d)" % results[0]["batch"])
    for col in ("model", "shape", "dtype", "params", "ms/step (median)", "repeat spread",
                "steps/s", "x real time"):
        table.add_column(col, justify="right" if col not in ("model", "shape", "dtype") else "left")
    for r in results:
        if r["status"] != "ok":
            table.add_row(r["model"], r["shape"], r["dtype"], f"{r['params'] / 1e9:.2f} B",
                          r["status"], "", "", "")
            continue
        ms = r["ms_per_step"]
        p = r["params"]
        table.add_row(r["model"], r["shape"], r["dtype"],
                      f"{p / 1e9:.2f} B" if p >= 1e8 else f"{p / 1e6:.1f} M",
                      f"{ms['median']:.1f}", f"{ms['min']:.1f}-{ms['max']:.1f}",
                      f"{r['steps_per_s']['median']:.2f}", f"{r['real_time_factor']:.2f}")
    Console(width=None if sys.stdout.isatty() else 130).print(table)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["hibiki-1b"],
                   help="config stems under configs/ (hibiki-1b, hibiki-2b, hibiki-zero-3b, moshi-7b)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES) + sorted(QUANT),
                   help="dtypes of the real shapes (default: fp32 + bf16 for hibiki-1b, bf16 otherwise)")
    p.add_argument("--tiny-dtypes", nargs="*", default=["fp32", "q8", "q4"],
                   choices=sorted(DTYPES) + sorted(QUANT), help="dtypes of the tiny shapes")
    p.add_argument("--no-real", action="store_true", help="tiny shapes only")
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--tiny-steps", type=int, default=50,
                   help="timed steps per repeat for the tiny shapes (they are ~100x faster)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=None,
                   help="cap the temporal context of the real shapes (smaller KV caches; "
                        "timings of the first steps do not depend on it)")
    p.add_argument("--wait-memory", type=float, default=300,
                   help="seconds to wait after a build for memory to run the KV caches")
    p.add_argument("--cfg-coef", type=float, default=None,
                   help="CFG coefficient for models with a conditioner (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "lm.json")
    args = p.parse_args(argv)
    if min(args.steps, args.tiny_steps, args.repeats, args.batch) < 1 or args.warmup < 0:
        p.error("--steps, --tiny-steps, --repeats and --batch must be >= 1, --warmup >= 0")
    for name in args.models:
        if not (ROOT / "configs" / f"{name}.toml").is_file():
            p.error(f"no config configs/{name}.toml")

    cases = []
    for name in args.models:
        for dtype in args.tiny_dtypes:
            cases.append((name, "tiny", dtype))
    if not args.no_real:
        for name in args.models:
            for dtype in args.dtypes or DEFAULT_REAL_DTYPES.get(name, ["bf16"]):
                cases.append((name, "real", dtype))

    t0 = time.perf_counter()
    results = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for case in cases:
        results.append(run_case(*case, args))
        payload = {"machine": machine_info(), "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
                   "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "results": results, "total_s": round(time.perf_counter() - t0, 1)}
        args.out.write_text(json.dumps(payload, indent=1))  # partial results survive a kill
    print_table(results)
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
