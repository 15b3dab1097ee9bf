#!/usr/bin/env python
"""One LM case of the benchmark, in its own process: an implementation (moshi-mac,
moshi_mlx, pytorch) at a model's shape (real or tiny) and a dtype.

    python -m moshi_mac.bench.bench_lm --case '{"impl": "moshi-mac", "model": "hibiki-1b",
        "shape": "tiny", "dtype": "fp32", "steps": 100, "warmup": 20, "repeats": 5}'

prints one line `@@RESULT@@ {json}`: ms per step and steps/s (median of the per-repeat
means, spread = min-max of those means, warm-up excluded), the split of a step, the
samplers alone, syncs and graph nodes per step, build time, peak RSS (the process's own,
so each implementation is measured alone) and the load average before and after. The whole
benchmark (`moshi-mac bench`, moshi_mac/bench/run.py) runs one such process per case.
Without --case, this runs `run.py --sections lm` with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from .common import bench_config, loadavg, n_params, peak_rss_bytes, summarize

MARK = "@@RESULT@@"


def run_case(spec: dict) -> dict:
    from . import impls

    rec = dict(spec)
    cfg = bench_config(spec["model"], spec["shape"], spec.get("context"))
    rec["params"] = n_params(cfg)
    rec["context"] = cfg.transformer.context
    rec["loadavg_before"] = loadavg()
    t0 = time.perf_counter()
    try:
        runner = impls.build(spec["impl"], cfg, spec["dtype"], greedy=spec.get("greedy", False),
                             seed=spec.get("seed", 0), split_streams=spec.get("split_streams"),
                             split_options=spec.get("split_options"),
                             ablate=tuple(spec.get("ablate", ())),
                             torch_device=spec.get("torch_device", "cpu"))
    except impls.Unsupported as e:
        rec["status"] = f"unsupported: {e}"
        return rec
    rec["build_s"] = round(time.perf_counter() - t0, 2)
    steps, warmup, repeats = spec["steps"], spec["warmup"], spec["repeats"]
    n_split = spec.get("split_steps", 3)
    total = warmup + repeats * steps + n_split + 1
    rng = np.random.default_rng(spec.get("seed", 0))
    user = rng.integers(0, cfg.card, size=(total, 1, cfg.user_codebooks)).astype(np.int32)
    i = 0
    for _ in range(warmup):
        runner.step(user[i])
        i += 1
    per_repeat, all_ms = [], []
    for _ in range(repeats):
        ms = []
        for _ in range(steps):
            t = time.perf_counter()
            runner.step(user[i])
            ms.append(1000 * (time.perf_counter() - t))
            i += 1
        per_repeat.append(statistics.fmean(ms))
        all_ms += ms
    rec.update(summarize(per_repeat, all_ms))
    splits = []
    for _ in range(n_split):
        splits.append(runner.split(user[i]))
        i += 1
    rec["split"] = {k: statistics.median(s[k] for s in splits) for k in splits[0]} or None
    rec["sampling_ms"] = runner.sampling_ms()
    rec.update(runner.probe(user[i]))
    rec["syncs_note"] = runner.syncs_note
    rec["context_reached"] = i + 1
    rec["peak_rss_gb"] = round(peak_rss_bytes() / 1e9, 3)
    if spec["impl"] != "pytorch":
        import mlx.core as mx

        rec["mlx_peak_gb"] = round(mx.get_peak_memory() / 1e9, 3)
    rec["loadavg_after"] = loadavg()
    rec["status"] = "ok"
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", help="a JSON case (see the module docstring)")
    args, rest = p.parse_known_args(argv)
    if args.case is None:
        from . import run

        return run.main(["--sections", "lm", *rest])
    rec = run_case(json.loads(args.case))
    print(MARK, json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
