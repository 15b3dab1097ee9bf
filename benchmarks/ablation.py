#!/usr/bin/env python
"""What each optimisation of the streaming step brings: moshi-mac before (a git ref,
default HEAD, extracted with `git archive`), as it is, and as it is with one optimisation
switched off at a time (impls.ABLATIONS), plus moshi_mlx for scale; one process per case,
`--rounds` interleaved rounds, same harness as bench_lm.py.

    python benchmarks/ablation.py --shapes tiny real --rounds 3 --out benchmarks/out/ablation.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moshi_mac.bench import run
from moshi_mac.bench.common import dump_json, loadavg, machine_info
from moshi_mac.bench.impls import ABLATIONS
from moshi_mac.paths import cache_root

ROOT = Path(__file__).resolve().parent.parent  # the git checkout this script is in

VARIANTS = ["before", "now", *[f"now, {a}" for a in ABLATIONS], "moshi_mlx"]


def extract(ref: str, into: Path) -> Path:
    """The source tree of a git ref (read-only: `git archive`, no checkout), with this
    harness (moshi_mac/bench/) copied in, so the same code measures the old package."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    harness = into / "moshi_mac" / "bench"
    shutil.rmtree(harness, ignore_errors=True)
    (into / "moshi_mac" / "bench.py").unlink(missing_ok=True)
    shutil.copytree(Path(run.__file__).parent, harness,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return into


def spec_for(variant: str, base: dict, before_tree: Path) -> dict:
    spec = dict(base, impl="moshi-mac", variant=variant)
    if variant == "before":
        spec["source"] = str(before_tree)
    elif variant == "moshi_mlx":
        spec["impl"] = "moshi_mlx"
    elif variant.startswith("now, "):
        spec["ablate"] = [variant.removeprefix("now, ")]
    return spec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="HEAD", help="the 'before' git ref")
    p.add_argument("--model", default="hibiki-1b")
    p.add_argument("--shapes", nargs="+", default=["tiny", "real"], choices=["tiny", "real"])
    p.add_argument("--tiny-dtype", default="fp32")
    p.add_argument("--real-dtype", default="bf16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--wait-load", type=float, default=None)
    p.add_argument("--wait-max", type=float, default=900)
    p.add_argument("--out", type=Path, default=cache_root() / "bench" / "ablation.json")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    payload = {"machine": machine_info(), "command": " ".join(["python benchmarks/ablation.py",
                                                             *(argv or sys.argv[1:])]),
               "ref": args.ref, "ablations": ABLATIONS, "loadavg_start": loadavg(), "records": []}
    with tempfile.TemporaryDirectory(prefix="moshi-mac-before-") as tmp:
        before = extract(args.ref, Path(tmp))
        for shape in args.shapes:
            tiny = shape == "tiny"
            base = {"model": args.model, "shape": shape,
                    "dtype": args.tiny_dtype if tiny else args.real_dtype,
                    "steps": 100 if tiny else 3, "warmup": 20 if tiny else 2,
                    "repeats": 5 if tiny else 3, "split_steps": 1}
            for _ in range(args.rounds):
                for variant in args.variants:
                    rec = run.run_child("bench_lm", spec_for(variant, base, before), args)
                    payload["records"].append(rec)
                    dump_json(args.out, payload)
    payload["table"] = table(payload["records"])
    payload["total_s"] = round(time.perf_counter() - t0, 1)
    dump_json(args.out, payload)
    print(markdown(payload["table"]))
    return 0


def table(records: list[dict]) -> list[dict]:
    rows = []
    for shape in ("tiny", "real"):
        recs = [r for r in records if r.get("shape") == shape and r.get("status") == "ok"]
        med = {}
        for v in VARIANTS:
            ms = [r["ms_per_step"]["median"] for r in recs if r["variant"] == v]
            if ms:
                med[v] = (statistics.median(ms), min(ms), max(ms), recs[0]["dtype"] if v != "before"
                          else next(r["dtype"] for r in recs if r["variant"] == v))
        for v, (m, lo, hi, dtype) in med.items():
            rows.append({"shape": shape, "variant": v, "dtype": dtype, "ms_median": m,
                         "ms_min": lo, "ms_max": hi, "steps_per_s": 1000 / m,
                         "vs_before": med["before"][0] / m if "before" in med else None,
                         "vs_now": med["now"][0] / m if "now" in med else None})
    return rows


def markdown(rows: list[dict]) -> str:
    from moshi_mac.bench import report

    cells = [[r["shape"], r["variant"], r["dtype"], f"{r['ms_median']:.2f}",
              f"{r['ms_min']:.2f}-{r['ms_max']:.2f}", f"{r['steps_per_s']:.2f}",
              "" if r["vs_before"] is None else f"{r['vs_before']:.2f}x",
              "" if r["vs_now"] is None else f"{r['vs_now']:.2f}x"] for r in rows]
    return report.markdown_table(["shape", "variant", "dtype", "ms/step (median of rounds)",
                                  "rounds min-max", "steps/s", "speed vs before",
                                  "speed vs now"], cells)


if __name__ == "__main__":
    raise SystemExit(main())
