"""Peak RSS of `check` and of loading the LM, against the weight file size.

Each measurement runs in a fresh child process (so peaks do not mix) and reads the
child's own ru_maxrss. Usage:

    python benchmarks/load_memory.py --weights DIR [--dtype bf16|f32] [--out FILE.json]

Make a real-shape random model first with
`moshi-mac make-random-model --config hibiki-1b --out DIR`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import mlx.core as mx
from moshi_mac.modeldir import check_model, from_dir
from moshi_mac.weights import load_lm
what, folder, dtype = sys.argv[1:4]
files = from_dir(folder)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
res = check_model(files)
if what == "load":
    model, _ = load_lm(files.weights, res.config, dtype={"bf16": mx.bfloat16, "f32": mx.float32}[dtype])
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"what": what, "seconds": dt, "peak_rss": peak, "rss_before": base}))
"""


def measure(what: str, folder: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, what, str(folder), dtype],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from moshi_mac.modeldir import from_dir

    size = from_dir(args.weights).weights.stat().st_size
    rows = [measure("check", args.weights, args.dtype), measure("load", args.weights, args.dtype)]
    for r in rows:
        r["weights_bytes"] = size
        r["peak_over_file"] = r["peak_rss"] / size
        print(f"{r['what']:>5}: {r['seconds']:6.1f} s, peak RSS {r['peak_rss'] / 2**30:6.2f} GiB "
              f"= {r['peak_over_file']:.2f}x the {size / 2**30:.2f} GiB weight file "
              f"(process before loading: {r['rss_before'] / 2**30:.2f} GiB)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"dtype": args.dtype, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
