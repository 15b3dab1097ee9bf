"""What every benchmark module shares: configs and shapes, fast random weights for MLX and
PyTorch, the bytes a step must read, timing statistics, and the state of the machine.

Random weights: timings do not depend on the values (no NaN, no denormals), so instead of
drawing every parameter (minutes at the Moshi-7B shape), each tensor is a scaled copy of a
slice of one pool of 2^24 normal draws: N(0, 1/fan_in)-like values, built at memory speed.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import statistics
import sys
from pathlib import Path

from moshi_mac.config import LmConfig, load_config
from moshi_mac.registry import config_dir

FRAME_RATE = 12.5  # Mimi frames per second: a step per frame is real time
POOL = 1 << 24
QUANT = {"q8": (8, 64), "q4": (4, 32)}
FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def config_names() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.toml"))


def tiny_bench_config(cfg: LmConfig) -> LmConfig:
    """The tiny shape: d_model 128 (4 heads, 2 layers, MLP hidden 384), depformer 64
    (4 heads, 2 layers, hidden 192), text vocab 1000, and the real codebooks (card 2048),
    delays, conditioner and traits. Every matrix input dim is a multiple of 64, so q8 and
    q4 quantize everything but the conditioner."""
    from moshi_mac.random_model import tiny_config

    cfg = tiny_config(cfg)
    t = cfg.transformer
    t.d_model, t.num_heads, t.dim_feedforward = 128, max(4, t.kv_repeat), 576
    if cfg.depformer is not None:
        d = cfg.depformer.transformer
        d.d_model, d.num_heads, d.dim_feedforward = 64, max(4, d.kv_repeat), 288
    return cfg.validate("tiny bench config")


def bench_config(model: str, shape: str, context: int | None = None) -> LmConfig:
    cfg = load_config(config_dir() / f"{model}.toml")
    if shape == "tiny":
        return tiny_bench_config(cfg)
    if context:
        cfg = copy.deepcopy(cfg)
        cfg.transformer.context = context
    return cfg


# ---------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------

def param_shapes(cfg: LmConfig) -> dict[str, tuple[int, ...]]:
    from moshi_mac.weights import expected_mlx_shapes

    return expected_mlx_shapes(cfg)


def n_params(cfg: LmConfig) -> int:
    total = 0
    for shape in param_shapes(cfg).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def _is_table(name: str) -> bool:
    """Embedding tables: a step reads one row of each, not the table."""
    return name.endswith(".weight") and (name.startswith(("text_emb.", "audio_embs."))
                                        or ".emb.weight" in name or "conditioners." in name)


def step_bytes(cfg: LmConfig, dtype: str, context_slots: int = 0, batch: int = 1) -> dict:
    """Bytes one streaming step must read: every matrix, norm and head once (a quantized
    matrix: packed weights + a float16/bf16 scale and bias per group), one row of each
    embedding table, and the temporal KV caches up to `context_slots` positions."""
    bits, group = QUANT.get(dtype, (None, None))
    fbytes = FLOAT_BYTES.get(dtype, 2)
    weights = rows = 0
    for name, shape in param_shapes(cfg).items():
        if name.startswith("condition_provider."):
            continue
        n = 1
        for s in shape:
            n *= s
        per = fbytes
        if bits and len(shape) == 2 and shape[-1] % group == 0:
            per = bits / 8 + 2 * 2 / group
        if _is_table(name) and len(shape) == 2:
            rows += shape[-1] * per  # one row
        else:
            weights += n * per
    t = cfg.transformer
    kv_dtype_bytes = 4 if dtype == "fp32" else 2
    kv = 2 * t.num_layers * batch * t.num_kv_heads * t.head_dim * context_slots * kv_dtype_bytes
    return {"weights": weights, "embedding_rows": rows, "kv_cache": kv,
            "total": weights + rows + kv}


# ---------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------

def _init_kind(name: str) -> str:
    if name.endswith(("norm1.weight", "norm2.weight", "out_norm.weight", ".scale", ".alpha")):
        return "one"
    if name.endswith(".bias"):
        return "zero"
    return "normal"


def _pool_slice(offset: int, n: int) -> tuple[int, int]:
    """Where a tensor of n <= POOL values starts in the pool, and the next offset (tensors
    start at different places, so no two are equal)."""
    start = offset if offset + n <= POOL else 0
    return start, (start + 7919) % POOL


def mlx_random_tensors(cfg: LmConfig, dtype, seed: int = 0) -> dict:
    """MLX-layout tensors (see the module docstring), evaluated one by one."""
    import mlx.core as mx

    mx.random.seed(seed)
    pool = mx.random.normal((POOL,))
    mx.eval(pool)
    out, offset = {}, 0
    for name, shape in param_shapes(cfg).items():
        n = 1
        for s in shape:
            n *= s
        kind = _init_kind(name)
        if kind == "one":
            v = mx.ones(shape)
        elif kind == "zero":
            v = mx.zeros(shape)
        else:
            start, offset = _pool_slice(offset, n)
            flat = mx.tile(pool, -(-n // POOL)) if n > POOL else pool[start:start + n]
            fan_in = shape[-1] if len(shape) > 1 else shape[0]
            v = flat[:n].reshape(shape) * (fan_in ** -0.5)
        keep_f32 = name.startswith("condition_provider.")
        v = v.astype(mx.float32 if keep_f32 else dtype)
        mx.eval(v)
        out[name] = v
    return out


def torch_fill_random_(model, seed: int = 0) -> None:
    """Fill a PyTorch module's parameters in place the same way (float32 pool)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(POOL, generator=gen)
    offset = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            kind = _init_kind(name)
            if kind == "one":
                p.fill_(1.0)
                continue
            if kind == "zero":
                p.zero_()
                continue
            flat = p.view(-1)
            scale = p.shape[-1] ** -0.5 if p.dim() > 1 else 1.0
            start, offset = _pool_slice(offset, min(flat.numel(), POOL))
            for i in range(0, flat.numel(), POOL):
                chunk = flat[i:i + POOL]
                chunk.copy_(pool[start:start + chunk.numel()] * scale)


# ---------------------------------------------------------------------------------------
# Statistics and machine state
# ---------------------------------------------------------------------------------------

def summarize(per_repeat_ms: list[float], all_ms: list[float]) -> dict:
    med = statistics.median(per_repeat_ms)
    all_sorted = sorted(all_ms)

    def pct(q: float) -> float:
        return all_sorted[min(len(all_sorted) - 1, int(q * len(all_sorted)))]

    return {
        "ms_per_step": {"median": med, "min": min(per_repeat_ms), "max": max(per_repeat_ms),
                        "per_repeat": per_repeat_ms, "step_p10": pct(0.1),
                        "step_p50": pct(0.5), "step_p90": pct(0.9)},
        "steps_per_s": {"median": 1000 / med, "min": 1000 / max(per_repeat_ms),
                        "max": 1000 / min(per_repeat_ms)},
        "x_real_time": 1000 / med / FRAME_RATE,
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_bytes() -> int:
    """This process's peak resident set size. Linux: VmHWM, since ru_maxrss carries the
    parent's peak over fork and exec (every case would report the orchestrator's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def machine_info() -> dict:
    import psutil

    info = {
        "platform": platform.platform(), "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(), "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": platform.python_version(),
    }
    for mod in ("mlx", "torch", "moshi", "moshi_mlx", "numpy", "rustymimi"):
        info[f"{mod}_version"] = package_version(mod)
    try:
        import mlx.core as mx

        info["mlx_device"] = str(mx.default_device())
    except ImportError:  # pragma: no cover
        pass
    return info


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def dump_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)
