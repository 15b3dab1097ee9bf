"""Checks of this machine: MLX and its device, memory, PortAudio devices."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import numpy as np

from ..errors import MoshiMacError
from .base import (AUDIO_RATES, CheckResult, FAIL, GiB, MEMORY_MARGIN, MEMORY_OVERHEAD,
    MLX_TOL, PASS, SKIP, _result)


# ---------------------------------------------------------------------------------------
# Platform
# ---------------------------------------------------------------------------------------

def check_mlx() -> CheckResult:
    import mlx.core as mx

    device = mx.default_device()
    info = mx.device_info()
    name = info.get("device_name") or info.get("architecture") or "?"
    metal = mx.metal.is_available()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 64), np.float32), rng.standard_normal((64, 64), np.float32)
    err = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a @ b).max())
    figures = (f"MLX {mx.__version__}, {device.type.name.lower()} device ({name}), "
               f"Metal {'available' if metal else 'not available'}, matmul error {err:.1e}")
    ok = err <= MLX_TOL
    threshold = f"matmul error <= {MLX_TOL:g}"
    if platform.system() == "Darwin":
        ok = ok and metal and device == mx.gpu
        threshold += "; Metal GPU on macOS"
    return _result("MLX", ok, figures, threshold)


def available_memory() -> tuple[int, str]:
    """Bytes of memory available now, and where the figure comes from."""
    try:
        import psutil
        return int(psutil.virtual_memory().available), "available"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "total (no psutil)"


def memory_needed(files, cfg) -> int:
    """Bytes to run the model: see the module docstring (memory)."""
    import mlx.core as mx

    from ..weights import FLOAT_DTYPES, default_dtype, read_header

    itemsize = 4 if default_dtype() == mx.float32 else 2
    total = 0
    for info in read_header(files.weights).values():
        n = math.prod(info.shape)
        total += n * itemsize if info.dtype in FLOAT_DTYPES else n * 4 if info.dtype == "U32" else n
    t = cfg.transformer
    batch = 2 if cfg.moshi_mac.generation.cfg_coef != 1.0 else 1
    total += 2 * t.num_layers * t.context * t.num_kv_heads * t.head_dim * itemsize * batch
    total += Path(files.mimi).stat().st_size
    return int(total * MEMORY_MARGIN + MEMORY_OVERHEAD)


def check_memory(files, cfg, available: tuple[int, str] | None = None) -> CheckResult:
    import mlx.core as mx

    needed = memory_needed(files, cfg)
    avail, what = available or available_memory()
    info = mx.device_info()
    limit = info.get("max_recommended_working_set_size")
    figures = f"needs {needed / GiB:.1f} GiB, {avail / GiB:.1f} GiB {what}"
    ok = needed <= avail
    if limit:
        figures += f", Metal working set {limit / GiB:.1f} GiB"
        ok = ok and needed <= limit
    return _result("memory", ok, figures, "needed <= available")


def _device_rates(sd, kind: str) -> str:
    dev = sd.query_devices(kind=kind)
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    ok = []
    for rate in AUDIO_RATES:
        try:
            check(device=dev["index"], samplerate=rate, channels=1)
            ok.append(rate)
        except Exception:  # PortAudioError, ValueError
            pass
    if not ok:
        raise MoshiMacError(f"default {kind} device {dev['name']!r} accepts none of "
                            f"{', '.join(str(r) for r in AUDIO_RATES)} Hz")
    return f"{kind} {dev['name']!r} ({', '.join(f'{r / 1000:g}k' for r in ok)})"


def check_audio(enabled: bool = True) -> CheckResult:
    name, threshold = "audio (PortAudio)", "default in and out devices, a usable rate"
    if not enabled:
        return CheckResult(name, SKIP, "skipped: --no-audio", threshold)
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        return CheckResult(name, FAIL, f"PortAudio not found ({e}); install it "
                           f"(macOS: brew install portaudio) or pass --no-audio", threshold)
    try:
        figures = ", ".join(_device_rates(sd, kind) for kind in ("input", "output"))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return CheckResult(name, FAIL, f"{first}; connect a device, or on a headless "
                           f"machine pass --no-audio", threshold)
    version = str(sd.get_portaudio_version()[1]).split(",")[0]
    return CheckResult(name, PASS, f"{version}; {figures}", threshold)
