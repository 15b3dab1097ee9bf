#!/usr/bin/env python
"""MLX's quantized matmul by input dtype, on this backend: why moshi-mac runs a quantized
model with float32 activations on the CPU (`weights.default_dtype`).

For each matrix shape (a real Hibiki-1B / Moshi-7B projection and a tiny depformer head) and
each of q8 (group 64) and q4 (group 32): one [1, in] x [out, in]^T product with the input
float32 or bf16 and the weights quantized from float32 or bf16, against the plain float
matmul, median of
`--repeats` evaluated calls. Prints a table, writes JSON.

    python benchmarks/quant_kernels.py --out benchmarks/results/quant_kernels.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from moshi_mac.bench.common import dump_json, loadavg, machine_info
from moshi_mac.paths import cache_root

SHAPES = [(8192, 2048), (2048, 2048), (2048, 64)]  # (out, in)
QUANTS = {"q8": (8, 64), "q4": (4, 32)}


def _median_ms(fn, repeats: int) -> float:
    import mlx.core as mx

    mx.eval(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(fn())
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def measure(repeats: int) -> list[dict]:
    import mlx.core as mx

    rows = []
    for out_dim, in_dim in SHAPES:
        w32 = mx.random.normal((out_dim, in_dim), key=mx.random.key(0)) * in_dim ** -0.5
        # (label, weights quantized from, input): the last is what moshi-mac runs on the
        # CPU, float32 activations with a bf16 checkpoint's scales and biases
        for name, wdtype, xdtype in (("fp32", mx.float32, mx.float32),
                                     ("bf16", mx.bfloat16, mx.bfloat16),
                                     ("fp32, bf16 scales", mx.bfloat16, mx.float32)):
            w = w32.astype(wdtype)
            x = mx.random.normal((1, in_dim), key=mx.random.key(1)).astype(xdtype)
            mx.eval(w, x)
            row = {"out": out_dim, "in": in_dim, "input": name,
                   "matmul_ms": _median_ms(lambda: x @ w.T, repeats)}
            for q, (bits, group) in QUANTS.items():
                packed = mx.quantize(w, group_size=group, bits=bits)
                mx.eval(*packed)
                row[f"{q}_ms"] = _median_ms(lambda: mx.quantized_matmul(
                    x, *packed, transpose=True, group_size=group, bits=bits), repeats)
            rows.append(row)
            print(f"  {out_dim}x{in_dim} {name}: matmul {row['matmul_ms']:.3f} ms, "
                  f"q8 {row['q8_ms']:.3f} ms, q4 {row['q4_ms']:.3f} ms", flush=True)
    return rows


def main(argv=None) -> int:
    from moshi_mac.bench import report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=cache_root() / "bench" / "quant_kernels.json")
    args = p.parse_args(argv)
    payload = {"machine": machine_info(), "loadavg_before": loadavg(),
               "command": " ".join(["python benchmarks/quant_kernels.py", *(argv or sys.argv[1:])])}
    payload["rows"] = measure(args.repeats)
    payload["loadavg_after"] = loadavg()
    dump_json(args.out, payload)
    cells = [[f"{r['out']}x{r['in']}", r["input"], f"{r['matmul_ms']:.3f}", f"{r['q8_ms']:.3f}",
              f"{r['q4_ms']:.3f}"] for r in payload["rows"]]
    print(report.markdown_table(["matrix (out x in)", "input dtype", "float matmul ms",
                                 "q8 matmul ms", "q4 matmul ms"], cells))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
