"""What live mode tells the user: real device names behind ALSA's aliases, the input
level meter, and which stage is behind when it runs below real time."""

from __future__ import annotations

import numpy as np
import pytest

from moshi_mac import live_status as L
from moshi_mac.engine import StageTimes

PACTL_INFO = """Server Name: pulseaudio
Default Sink: alsa_output.usb-Focusrite_Scarlett-00.analog-stereo
Default Source: alsa_input.usb-Focusrite_Scarlett-00.analog-stereo
"""
PACTL_SINKS = """Sink #0
	State: SUSPENDED
	Name: moshi_null
	Description: Null Output
Sink #1
	Name: alsa_output.usb-Focusrite_Scarlett-00.analog-stereo
	Description: Scarlett 2i2 USB Analog Stereo
"""


class FakeSd:
    def query_hostapis(self, i):
        return {"name": ["ALSA", "Core Audio"][i]}


def test_device_label_resolves_aliases(monkeypatch):
    calls = []

    def pactl(*args):
        calls.append(args)
        return {("info",): PACTL_INFO, ("list", "sinks"): PACTL_SINKS}.get(args, "")

    monkeypatch.setattr(L, "_pactl", pactl)
    label = L.device_label(FakeSd(), {"name": "default", "hostapi": 0}, "output")
    assert label == ("Scarlett 2i2 USB Analog Stereo (alsa_output.usb-Focusrite_Scarlett-00."
                     "analog-stereo) (via default), ALSA")
    # a source without a listed description: its name
    assert L.device_label(FakeSd(), {"name": "pulse", "hostapi": 0}, "input").startswith(
        "alsa_input.usb-Focusrite_Scarlett-00.analog-stereo (via pulse)")
    # a real device name is kept as is, and no sound server is asked
    calls.clear()
    assert L.device_label(FakeSd(), {"name": "MacBook Pro Microphone", "hostapi": 1},
                          "input") == "MacBook Pro Microphone, Core Audio"
    assert calls == []
    # no sound server: the alias stays
    monkeypatch.setattr(L, "_pactl", lambda *a: "")
    assert L.device_label(FakeSd(), {"name": "default", "hostapi": 0}, "input") == "default, ALSA"


def test_level_meter():
    assert L.level_db(np.zeros(1920, np.float32)) == L.METER_FLOOR_DB
    tone = 0.1 * np.sin(np.linspace(0, 200, 1920)).astype(np.float32)
    assert abs(L.level_db(tone) - (20 * np.log10(0.1 / np.sqrt(2)))) < 0.2
    assert L.level_meter(-60) == "mic ▯▯▯▯▯▯▯▯ -60 dB"
    assert L.level_meter(0) == "mic ▮▮▮▮▮▮▮▮   0 dB"
    assert L.level_meter(-30).count("▮") == 4


def _drive(pace, stage_ms: dict, steps_per_s: float, steps: int = 30):
    t = StageTimes()
    for _ in range(steps):
        for stage, ms in stage_ms.items():
            t.add(stage, ms / 1000)
        pace.update(t, steps_per_s)


def test_pace_names_the_stage_behind():
    keeping_up = L.Pace(pipelined=True)
    _drive(keeping_up, {"encode": 30, "lm": 50, "decode": 40}, 12.5)
    assert keeping_up.current is None and keeping_up.behind_steps == 0
    assert keeping_up.stage_ms() == pytest.approx({"encode": 30, "lm": 50, "decode": 40})

    # The same stages in turn need 120 ms per 80 ms frame: behind, the LM the largest.
    sequential = L.Pace(pipelined=False)
    _drive(sequential, {"encode": 30, "lm": 50, "decode": 40}, 8.3)
    assert sequential.current == ("below real time (8.3 of 12.5 steps/s): LM is behind "
                                  "(50 ms per 80 ms frame)")
    assert sequential.behind_steps == 30 - sequential.window + 1

    decode_bound = L.Pace(pipelined=True)
    _drive(decode_bound, {"encode": 20, "lm": 10, "decode": 110}, 9.0)
    assert "Mimi decode is behind (110 ms" in decode_bound.current

    short = L.Pace(pipelined=True)  # not a full window yet: no verdict
    _drive(short, {"encode": 20, "lm": 10, "decode": 110}, 9.0, steps=5)
    assert short.current is None
