"""Peak RSS of `moshi-mac convert`, against the size of the checkpoint it converts.

The conversion runs in a fresh child process that reports its own ru_maxrss, so the
figure is the converter's alone. Usage:

    python benchmarks/convert_memory.py --src DIR [--quantize q8|q4] [--out DIR] [--json FILE]
    python benchmarks/convert_memory.py --make moshi-7b [--workdir /tmp/x] ...

`--make CONFIG` first writes a real-shape random PyTorch checkpoint with
`moshi-mac make-random-model --config CONFIG --layout pytorch` (moshi-7b: 15 GB and a few
minutes; check the free disk first) and deletes it afterwards unless `--keep`. The
converted output is deleted too unless `--out` is given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from moshi_mac.convert import convert
src, out, quant = sys.argv[1], sys.argv[2], sys.argv[3] or None
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
res = convert(src, out, quant, force=True)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": dt, "peak_rss": peak, "rss_before": base,
                  "out_bytes": res.bytes_written, "n_tensors": res.n_tensors}))
"""


def measure(src: Path, out: Path, quantize: str | None) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), quantize or ""],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"convert failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_source(config: str, workdir: Path, mimi: Path | None) -> Path:
    folder = workdir / f"{config}-pytorch"
    cmd = [sys.executable, "-m", "moshi_mac.cli", "make-random-model", "--config", config,
           "--layout", "pytorch", "--output", str(folder), "--force"]
    if mimi:
        cmd += ["--mimi", str(mimi)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"made {folder} in {time.perf_counter() - t0:.0f} s")
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--src", type=Path, help="a PyTorch-layout model folder (or registry name)")
    g.add_argument("--make", metavar="CONFIG", help="make a real-shape random source first")
    p.add_argument("--workdir", type=Path, help="where --make writes (default: a temp folder)")
    p.add_argument("--mimi", type=Path, help="with --make: reuse this Mimi checkpoint")
    p.add_argument("--keep", action="store_true", help="keep the source made by --make")
    p.add_argument("--quantize", choices=["q8", "q4"])
    p.add_argument("--out", type=Path, help="keep the converted folder here")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = p.parse_args(argv)
    from moshi_mac.convert import source_files

    workdir = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.workdir))
    try:
        src = make_source(args.make, workdir, args.mimi) if args.make else args.src
        size = source_files(src).weights.stat().st_size
        out = args.out or workdir / "converted"
        row = measure(src, out, args.quantize)
        row.update(src=str(src), quantize=args.quantize or "bf16", src_bytes=size,
                   peak_over_file=row["peak_rss"] / size)
        print(f"convert {src} ({size / 2**30:.2f} GiB) -> {row['quantize']} "
              f"({row['out_bytes'] / 2**30:.2f} GiB, {row['n_tensors']} tensors): "
              f"{row['seconds']:.0f} s, {size / 2**20 / row['seconds']:.0f} MiB/s, "
              f"peak RSS {row['peak_rss'] / 2**30:.2f} GiB = {row['peak_over_file']:.3f}x the "
              f"source file (process before converting: {row['rss_before'] / 2**30:.2f} GiB)")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(row, indent=2))
    finally:
        if args.make and args.keep:
            print(f"kept {workdir / (args.make + '-pytorch')}")
            shutil.rmtree(workdir / "converted", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
