#!/usr/bin/env python
"""moshi-mac against the official PyTorch `moshi` and `moshi_mlx`, side by side, in one run.

Sections (--sections, default all):
- bandwidth: the machine's memory read bandwidth (the physical limit of a step);
- lm: LM streaming steps of moshi-mac (fp32, bf16, q8, q4), moshi_mlx (where it supports the
  model and dtype) and PyTorch (fp32, bf16), random weights at the real shapes of
  configs/<model>.toml and at tiny shapes; one process per case (see bench_lm.py), cases of
  a model and dtype run back to back, `--rounds` times, interleaved;
- mimi: Mimi encode and decode ms per frame;
- e2e: file mode through engine.Session, pipelined and sequential (real-time factor).

Results: JSON (-o/--output, by default in the user's cache folder), a table on screen, a
PNG plot (--plot) and, with --markdown, the Markdown tables that benchmarks/README.md quotes.
The PyTorch `moshi` and `moshi_mlx` cases need the optional references (the `reference`
extra, see the README); without them the default run measures moshi-mac alone.

    moshi-mac bench --quick
    moshi-mac bench --models hibiki-1b --shapes real tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from moshi_mac.errors import MoshiMacError
from moshi_mac.paths import cache_root

from .common import (FLOAT_BYTES, QUANT, bench_config, config_names, dump_json, loadavg,
                     machine_info, n_params)

IMPLS = ("moshi-mac", "moshi_mlx", "pytorch")
ALL_DTYPES = ("fp32", "bf16", "q8", "q4")
MARK = "@@RESULT@@"


def default_dtype_name(cfg=None) -> str:
    """moshi-mac's default dtype (`weights.default_dtype`) for a config, by name."""
    import mlx.core as mx

    from moshi_mac.weights import default_dtype

    return {mx.float32: "fp32", mx.bfloat16: "bf16", mx.float16: "fp16"}[default_dtype(cfg)]


# The modules each implementation needs beyond moshi-mac's own dependencies.
NEEDS = {"moshi_mlx": ("moshi_mlx",), "pytorch": ("torch", "moshi")}
REFERENCE_HINT = ("pip install 'moshi-mac[reference]' then moshi==0.2.13 and moshi_mlx==0.3.0 "
                  "with --no-deps (see the README)")


def missing_modules(impl: str) -> list[str]:
    """The modules an implementation needs that are not installed."""
    import importlib.util

    return [m for m in NEEDS.get(impl, ()) if importlib.util.find_spec(m) is None]


def default_out() -> Path:
    return cache_root() / "bench" / "bench.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (on `moshi-mac bench` and on this module's own parser)."""
    p.add_argument("--sections", nargs="+", default=["bandwidth", "lm", "mimi", "e2e"],
                   choices=["bandwidth", "lm", "mimi", "e2e"], help="what to measure")
    p.add_argument("--models", nargs="+", help="configs/ stems for the real shapes "
                   "(default: every config; moshi-7b needs ~16 GB free)")
    p.add_argument("--tiny-models", nargs="+", help="configs/ stems for the tiny shapes "
                   "(default: every config)")
    p.add_argument("--shapes", nargs="+", default=["real", "tiny"], choices=["real", "tiny"],
                   help="real: the configs' shapes, random weights; tiny: d_model 128")
    p.add_argument("--impls", nargs="+", choices=IMPLS,
                   help="implementations (default: moshi-mac and the installed references)")
    p.add_argument("--dtypes", nargs="+", choices=ALL_DTYPES,
                   help="dtypes of the real shapes (default: fp32 and bf16; PyTorch and "
                        "moshi_mlx run the ones they support)")
    p.add_argument("--tiny-dtypes", nargs="+", choices=ALL_DTYPES, default=list(ALL_DTYPES),
                   help="dtypes of the tiny shapes")
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat, real shapes")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, real shapes")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, real shapes")
    p.add_argument("--tiny-steps", type=int, default=100, help="--steps for the tiny shapes")
    p.add_argument("--tiny-warmup", type=int, default=20, help="--warmup for the tiny shapes")
    p.add_argument("--tiny-repeats", type=int, default=5, help="--repeats for the tiny shapes")
    p.add_argument("--rounds", type=int, default=1, help="run every real-shape case this many times")
    p.add_argument("--tiny-rounds", type=int, default=2, help="the same for the tiny shapes")
    p.add_argument("--context", type=int, help="cap the temporal context (KV caches) of the real shapes")
    p.add_argument("--greedy", action="store_true", help="argmax instead of the reference sampling")
    p.add_argument("--e2e", nargs="+", default=["hibiki-1b:tiny", "hibiki-1b:real"],
                   metavar="MODEL:SHAPE", help="end-to-end cases (moshi-mac, default dtype)")
    p.add_argument("--e2e-seconds", type=float, default=10.0, help="input length, tiny shape")
    p.add_argument("--e2e-real-seconds", type=float, default=4.0, help="input length, real shape")
    p.add_argument("--mimi-frames", type=int, default=50, help="timed Mimi frames")
    p.add_argument("--wait-load", type=float, default=None, metavar="LOAD",
                   help="before each case, wait (up to --wait-max s) for the 1-min load average "
                        "to drop to LOAD")
    p.add_argument("--wait-max", type=float, default=900, help="seconds, see --wait-load")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: tiny hibiki-1b only, few steps, short e2e")
    p.add_argument("-o", "--output", type=Path, default=default_out(), help="results JSON")
    p.add_argument("--plot", type=Path, help="PNG path (default: --output with .png)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--markdown", type=Path, help="also write the Markdown tables here")
    p.add_argument("--torch-device", nargs="+", default=["cpu"], choices=["cpu", "cuda", "mps"],
                   help="where the PyTorch cases run (several: one case each; "
                        "non-CPU ones are reported as pytorch-<device>)")
    p.add_argument("--seed", type=int, default=0, help="random weights and inputs")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="run nothing: re-derive the tables, plot and Markdown of a saved result")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m moshi_mac.bench.run",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    return check_args(p.parse_args(argv), p.error)


def check_args(args, error):
    """Validate and complete parsed options; `error(message)` reports a usage error."""
    names = config_names()
    for name in (args.models or []) + (args.tiny_models or []):
        if name not in names:
            error(f"no config configs/{name}.toml (have: {', '.join(names)})")
    if args.impls is None:
        absent = {impl: missing_modules(impl) for impl in IMPLS}
        args.impls = [impl for impl in IMPLS if not absent[impl]]
        gone = sorted({m for ms in absent.values() for m in ms})
        if gone and not args.report:
            print(f"references not installed ({', '.join(gone)}): measuring moshi-mac alone; "
                  f"for the side-by-side run, {REFERENCE_HINT}", flush=True)
    else:
        for impl in args.impls:
            if missing_modules(impl):
                raise MoshiMacError(f"--impls {impl} needs {', '.join(missing_modules(impl))}, "
                                    f"which is not installed: {REFERENCE_HINT}")
    if args.quick:
        args.shapes = ["tiny"]
        args.tiny_models = args.tiny_models or ["hibiki-1b"]
        args.tiny_dtypes = ["fp32"]
        args.tiny_steps, args.tiny_warmup, args.tiny_repeats, args.tiny_rounds = 10, 3, 2, 1
        args.e2e = ["hibiki-1b:tiny"]
        args.e2e_seconds = 0.5
        args.mimi_frames = 5
    if min(args.steps, args.repeats, args.tiny_steps, args.tiny_repeats, args.rounds,
           args.tiny_rounds) < 1 or min(args.warmup, args.tiny_warmup) < 0:
        error("steps, repeats and rounds must be >= 1, warm-ups >= 0")
    args.models = args.models or names
    args.tiny_models = args.tiny_models or names
    return args


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------

def lm_cases(args) -> list[list[dict]]:
    """Groups of cases (one model, shape and dtype; every implementation), in run order."""
    groups = []
    real_dtypes = args.dtypes or ["bf16", "fp32"]
    plan = []
    if "real" in args.shapes:
        plan += [(m, "real", d) for m in args.models for d in real_dtypes]
    if "tiny" in args.shapes:
        plan += [(m, "tiny", d) for m in args.tiny_models for d in args.tiny_dtypes]
    for model, shape, dtype in plan:
        tiny = shape == "tiny"
        base = {"model": model, "shape": shape, "dtype": dtype, "greedy": args.greedy,
                "seed": args.seed, "context": None if tiny else args.context,
                "steps": args.tiny_steps if tiny else args.steps,
                "warmup": args.tiny_warmup if tiny else args.warmup,
                "repeats": args.tiny_repeats if tiny else args.repeats,
                "split_steps": 1 if args.quick else 5 if tiny else 2}
        group = []
        for impl in args.impls:
            devices = args.torch_device if impl == "pytorch" else ["cpu"]
            group += [dict(base, impl=impl, **({"torch_device": d} if d != "cpu" else {}))
                      for d in devices]
        groups.append(group)
    return groups


def estimate_gb(spec: dict) -> float:
    """Weights, KV caches and ~1.5 GB of process and activations."""
    cfg = bench_config(spec["model"], spec["shape"], spec.get("context"))
    dtype = spec["dtype"]
    per = FLOAT_BYTES.get(dtype) or (QUANT[dtype][0] / 8 + 0.1)
    weights = n_params(cfg) * per
    if dtype in QUANT:
        weights += n_params(cfg) * 2  # built from bf16, then quantized
    t = cfg.transformer
    kv = 2 * t.num_layers * t.num_kv_heads * t.context * t.head_dim * (4 if dtype == "fp32" else 2)
    return (weights + kv) / 1e9 + 1.5


def wait_for_load(args) -> None:
    if args.wait_load is None:
        return
    deadline = time.monotonic() + args.wait_max
    while os.getloadavg()[0] > args.wait_load and time.monotonic() < deadline:
        time.sleep(10)


def run_child(script: str, spec: dict, args) -> dict:
    """Run one case in a fresh process; its record, or a failure record."""
    import psutil

    if spec.get("kind") is None:
        need = estimate_gb(spec)
        avail = psutil.virtual_memory().available / 1e9
        if need > avail:
            return dict(label_impl(spec), status=f"skipped: needs ~{need:.1f} GB, {avail:.1f} GB free",
                        loadavg_before=loadavg())
    wait_for_load(args)
    label = " ".join(str(spec.get(k)) for k in ("kind", "impl", "model", "shape", "dtype", "variant")
                     if spec.get(k) is not None)
    print(f"[{time.strftime('%H:%M:%S')}] {label} (load {os.getloadavg()[0]:.1f})...", flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [source_tree(spec), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", f"moshi_mac.bench.{script}", "--case",
                               json.dumps(spec)],
                              capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(label_impl(spec), status=f"failed: timed out after {args.timeout:.0f} s",
                    loadavg_before=loadavg())
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            rec = json.loads(line[len(MARK):])
            rec["wall_s"] = round(time.perf_counter() - t0, 1)
            rec = label_impl(rec)
            print(f"    {summary(rec)}", flush=True)
            return rec
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    if proc.returncode < 0 or proc.returncode == 137:
        tail = f"killed (signal {-proc.returncode if proc.returncode < 0 else 9}; out of memory?)"
    print(f"    failed: {tail}", flush=True)
    return dict(label_impl(spec), status=f"failed: {tail[:200]}", loadavg_before=loadavg())


def source_tree(spec: dict) -> str:
    """The folder holding the `moshi_mac` a case measures: this one's, or another source
    tree (spec "source" or $MOSHI_MAC_SOURCE; e.g. an older commit for before/after numbers,
    which must hold this harness in moshi_mac/bench/, see benchmarks/ablation.py)."""
    import moshi_mac

    default = str(Path(moshi_mac.__file__).resolve().parent.parent)
    return spec.get("source") or os.environ.get("MOSHI_MAC_SOURCE") or default


def label_impl(rec: dict) -> dict:
    """PyTorch off the CPU is its own implementation in the tables: pytorch-<device>."""
    device = rec.get("torch_device", "cpu")
    return rec if device == "cpu" else dict(rec, impl=f"pytorch-{device}")


def nvidia_gpu() -> str:
    """The NVIDIA GPUs nvidia-smi reports, or why there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none (no nvidia-smi on this machine)"
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"none (nvidia-smi failed: {e})"
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return "; ".join(names) if out.returncode == 0 and names else "none (nvidia-smi lists no GPU)"


def summary(rec: dict) -> str:
    if rec.get("status") != "ok":
        return rec.get("status", "?")
    if "ms_per_step" in rec:
        ms = rec["ms_per_step"]
        return (f"{ms['median']:.2f} ms/step ({ms['min']:.2f}-{ms['max']:.2f}), "
                f"{rec['steps_per_s']['median']:.2f} steps/s, peak RSS {rec.get('peak_rss_gb')} GB")
    if "encode_ms" in rec:
        return f"encode {rec['encode_ms']['median']:.1f} ms, decode {rec['decode_ms']['median']:.1f} ms"
    return f"RTF pipelined {rec.get('pipelined_rtf', 0):.2f}, sequential {rec.get('sequential_rtf', 0):.2f}"


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def main(argv=None) -> int:
    return run(parse_args(argv), argv)


def run(args, argv=None) -> int:
    if args.report:
        return rereport(args)
    t0 = time.perf_counter()
    payload = {"machine": machine_info(), "command": " ".join(sys.argv if argv is None else ["moshi-mac bench", *argv]),
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                        if k not in ("func", "command")},
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": loadavg(),
               "moshi_mac_default_dtype": {"real": default_dtype_name(),
                                           "tiny": default_dtype_name(bench_config("hibiki-1b", "tiny"))},
               "nvidia_gpu": nvidia_gpu(), "torch_devices": args.torch_device}
    plot_path = None if args.no_plot else (args.plot or args.output.with_suffix(".png"))

    def save():
        payload["total_s"] = round(time.perf_counter() - t0, 1)
        dump_json(args.output, payload)

    if "bandwidth" in args.sections:
        from . import bandwidth

        wait_for_load(args)
        print(f"memory bandwidth (load {os.getloadavg()[0]:.1f})...", flush=True)
        payload["bandwidth"] = bandwidth.measure(size_mb=64 if args.quick else 512,
                                                 repeats=2 if args.quick else 5)
        print(f"    read {payload['bandwidth']['read_gbs']:.1f} GB/s", flush=True)
        save()
    if "lm" in args.sections:
        records = []
        for group in lm_cases(args):
            rounds = args.tiny_rounds if group[0]["shape"] == "tiny" else args.rounds
            for _ in range(rounds):
                for spec in group:
                    records.append(run_child("bench_lm", spec, args))
                    payload["lm_records"] = records
                    save()
        derive(payload)
        save()
    if "mimi" in args.sections:
        payload["mimi"] = [run_child("bench_codec", {"kind": "mimi", "codebooks": 8,
                                                         "frames": args.mimi_frames}, args)]
        save()
    if "e2e" in args.sections:
        payload["e2e"] = []
        for item in args.e2e:
            model, _, shape = item.partition(":")
            shape = shape or "tiny"
            dtype = default_dtype_name(bench_config(model, shape))
            spec = {"kind": "e2e", "model": model, "shape": shape, "dtype": dtype,
                    "context": args.context if shape == "real" else None,
                    "seconds": args.e2e_real_seconds if shape == "real" else args.e2e_seconds}
            payload["e2e"].append(run_child("bench_codec", spec, args))
            save()
    payload["loadavg_end"] = loadavg()
    save()
    publish(payload, args, plot_path)
    print(f"results: {args.output} ({payload['total_s']:.0f} s)")
    return 0


def derive(payload: dict) -> None:
    """Rows (rounds merged), bandwidth limits and ratios from the raw LM records."""
    from . import report

    payload["lm"] = report.merge_rounds(payload["lm_records"])
    report.add_limits(payload["lm"], (payload.get("bandwidth") or {}).get("read_gbs"))
    payload["comparisons"] = report.comparisons(payload["lm"])


def rereport(args) -> int:
    """--report: the tables, plot and Markdown of a saved result, derived again."""
    try:
        payload = json.loads(args.report.read_text())
    except (OSError, ValueError) as e:
        raise MoshiMacError(f"cannot read {args.report}: {e}; pass a JSON file that "
                            "`moshi-mac bench -o/--output` wrote") from None
    if payload.get("lm_records"):
        derive(payload)
        dump_json(args.report, payload)
    publish(payload, args, None if args.no_plot else (args.plot or args.report.with_suffix(".png")))
    return 0


def publish(payload: dict, args, plot_path: Path | None) -> None:
    from . import report

    report.print_tables(payload)
    if plot_path is not None:
        try:
            if report.plot(payload, plot_path):
                print(f"plot: {plot_path}")
        except ImportError:
            print("no plot: matplotlib is not installed (pip install matplotlib)")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.markdown(payload) + "\n")
        print(f"markdown: {args.markdown}")


if __name__ == "__main__":
    raise SystemExit(main())
