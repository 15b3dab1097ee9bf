"""Memory bandwidth, measured here: the physical limit of a memory-bound LM step.

Reads (sums) a buffer much larger than the caches, with every tool at hand, and keeps the
fastest: NumPy (one core), MLX on every CPU stream at once (one core each), and PyTorch
(all its threads). Also a copy (read + write) with NumPy. The best read rate, in GB/s
(1e9 bytes), is what a step's weight reads are divided by.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .common import loadavg


def _best_rate(fn, nbytes: int, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def measure(size_mb: int = 512, repeats: int = 5) -> dict:
    n = size_mb * (1 << 20) // 4
    nbytes = n * 4
    out: dict = {"buffer_mb": size_mb, "repeats": repeats, "loadavg_before": loadavg()}
    a = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    out["numpy_read_gbs"] = _best_rate(lambda: a.sum(), nbytes, repeats)
    b = np.empty_like(a)
    out["numpy_copy_gbs"] = _best_rate(lambda: np.copyto(b, a), 2 * nbytes, repeats)
    del b
    try:
        import mlx.core as mx

        from moshi_mac.models.layers import cpu_streams

        streams = cpu_streams() if mx.default_device() == mx.cpu else [None]
        parts = [mx.array(p) for p in np.array_split(a, len(streams))]
        mx.eval(parts)

        def mlx_sum():
            mx.eval([mx.sum(p, stream=s) for p, s in zip(parts, streams)])

        out["mlx_read_gbs"] = _best_rate(mlx_sum, nbytes, repeats)
        out["mlx_streams"] = len(streams)
        del parts
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        t = torch.from_numpy(a)
        torch.set_num_threads(os.cpu_count() or 1)
        out["torch_read_gbs"] = _best_rate(lambda: t.sum(), nbytes, repeats)
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    reads = {k: v for k, v in out.items() if k.endswith("_read_gbs")}
    best = max(reads, key=reads.get)
    out["read_gbs"] = reads[best]
    out["read_by"] = best.removesuffix("_read_gbs")
    out["loadavg_after"] = loadavg()
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(measure(), indent=1))
