"""What `moshi-mac live` tells the user about its audio and its pace.

- `device_label`: a device's real name and host API. PortAudio's ALSA devices "default",
  "sysdefault" and "pulse" are aliases: the sound server's default sink or source is what
  plays, so its description is looked up (`pactl`, PulseAudio or PipeWire) and shown.
- `level_meter`: the microphone's level, dBFS, as a small bar (is the mic live? too
  quiet? clipping?).
- `Pace`: per-stage times (LM, Mimi encode, Mimi decode) over the last steps, from the
  engine's cumulative `StageTimes`, and, when the session runs below real time, which
  stage is behind.
"""

from __future__ import annotations

import collections
import math
import shutil
import subprocess

import numpy as np

from .codec import FRAME_RATE
from .engine import STAGE_NAMES

FRAME_MS = 1000 / FRAME_RATE
ALIASES = ("default", "sysdefault", "pulse", "pipewire")
METER_FLOOR_DB = -60.0


# ---------------------------------------------------------------------------------------
# Device names
# ---------------------------------------------------------------------------------------

def _pactl(*args: str) -> str:
    exe = shutil.which("pactl")
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def parse_default(info: str, kind: str) -> str | None:
    """The default sink ("output") or source ("input") name in `pactl info` output."""
    key = "Default Source:" if kind == "input" else "Default Sink:"
    for line in info.splitlines():
        if line.strip().startswith(key):
            return line.split(":", 1)[1].strip() or None
    return None


def parse_description(listing: str, name: str) -> str | None:
    """The Description of the sink/source `name` in `pactl list sinks|sources` output."""
    current = None
    for line in listing.splitlines():
        s = line.strip()
        if s.startswith("Name:"):
            current = s.split(":", 1)[1].strip()
        elif s.startswith("Description:") and current == name:
            return s.split(":", 1)[1].strip()
    return None


def sound_server_default(kind: str) -> str | None:
    """The sound server's default device for `kind`, described, or None."""
    name = parse_default(_pactl("info"), kind)
    if name is None:
        return None
    desc = parse_description(_pactl("list", "sources" if kind == "input" else "sinks"), name)
    return f"{desc} ({name})" if desc and desc != name else name


def device_label(sd, info: dict, kind: str) -> str:
    """A device's name as the user knows it, with its host API (see the module docstring)."""
    name = str(info["name"])
    try:
        api = sd.query_hostapis(info["hostapi"])["name"]
    except Exception:  # noqa: BLE001  (the label is informative only)
        api = ""
    if name.lower() in ALIASES:
        real = sound_server_default(kind)
        if real:
            name = f"{real} (via {name})"
    return f"{name}, {api}" if api else name


# ---------------------------------------------------------------------------------------
# Input level
# ---------------------------------------------------------------------------------------

def level_db(pcm: np.ndarray) -> float:
    """RMS level in dBFS (METER_FLOOR_DB for silence)."""
    if pcm.size == 0:
        return METER_FLOOR_DB
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))
    return max(METER_FLOOR_DB, 20 * math.log10(rms) if rms > 0 else METER_FLOOR_DB)


def level_meter(db: float, width: int = 8) -> str:
    """`mic ▮▮▮▯▯▯▯▯ -32 dB`: filled in proportion from METER_FLOOR_DB to 0 dBFS."""
    filled = round(width * (min(0.0, db) - METER_FLOOR_DB) / -METER_FLOOR_DB)
    filled = max(0, min(width, filled))
    return f"mic {'▮' * filled}{'▯' * (width - filled)} {db:3.0f} dB"


# ---------------------------------------------------------------------------------------
# Pace
# ---------------------------------------------------------------------------------------

class Pace:
    """Per-stage ms per frame over the last `window` steps and the below-real-time
    diagnosis: `update` once per step with the engine's cumulative StageTimes; `current`
    is the warning to show now (None while real time is kept), `worst` the last one."""

    def __init__(self, pipelined: bool, window: int = 12):  # ~1 s at real time
        self.pipelined = pipelined
        self.window = window
        self._marks: collections.deque = collections.deque(maxlen=window)
        self.current: str | None = None
        self.worst: str | None = None
        self.behind_steps = 0  # steps taken while below real time

    def stage_ms(self) -> dict[str, float]:
        if len(self._marks) < 2:
            return {}
        (s0, c0), (s1, c1) = self._marks[0], self._marks[-1]
        return {k: 1000 * (s1[k] - s0[k]) / (c1[k] - c0[k]) for k in s1 if c1[k] > c0[k]}

    def update(self, times, steps_per_s: float) -> None:
        self._marks.append((dict(times.seconds), dict(times.calls)))
        self.current = self._diagnose(steps_per_s)
        if self.current is not None:
            self.behind_steps += 1
            self.worst = self.current

    def _diagnose(self, steps_per_s: float) -> str | None:
        ms = self.stage_ms()
        if len(self._marks) < self.window or not ms:
            return None
        need = max(ms.values()) if self.pipelined else sum(ms.values())
        if steps_per_s >= 0.95 * FRAME_RATE and need <= FRAME_MS:
            return None
        stage = max(ms, key=ms.get)
        return (f"below real time ({steps_per_s:.1f} of {FRAME_RATE:g} steps/s): "
                f"{STAGE_NAMES[stage]} is behind ({ms[stage]:.0f} ms per {FRAME_MS:.0f} ms frame)")
