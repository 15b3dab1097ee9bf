"""Live mode through real PortAudio streams (Linux: the private PulseAudio null sink that
scripts/test starts; macOS: a loopback device such as BlackHole) with tiny random models:
frames flow both ways, the session is recorded, and latency stays bounded when the model
is made artificially slow.

Without an audio device (the `device` fixture, conftest.py) these tests fail under
MOSHI_MAC_REQUIRE_AUDIO=1 or CI=true and are skipped otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from moshi_mac.cli import main as cli_main

def _run_live(model, device, tmp_path, *extra) -> dict:
    dev = [] if device == "default" else ["--input-device", device, "--output-device", device]
    rc = cli_main(["live", "-w", str(model), "--record", str(tmp_path), *dev, *extra])
    assert rc == 0
    (folder,) = tmp_path.glob("session-*")
    return {"folder": folder, **json.loads((folder / "transcript.json").read_text())}


def test_live_session_flows_and_records(make_model, device, tmp_path, capsys):
    doc = _run_live(make_model("hibiki-1b"), device, tmp_path, "--duration", "5")
    s, folder = doc["session"], doc["folder"]
    out = capsys.readouterr().out
    assert "Use headphones" in out and "steps/s" in out and "latency" in out
    assert "mic " in out and " dB" in out  # the input level meter
    for name in (s["input_device"], s["output_device"]):  # real names, not ALSA's aliases
        assert name.split(",")[0] not in ("default", "pulse", "sysdefault"), name
    # Frames flowed both ways through the real streams.
    assert s["mic_samples"] > s["input_rate"] and s["played_samples"] > 0
    assert s["frames_in"] >= 10 and s["frames_out"] >= 8
    assert s["steps"] + 2 >= s["frames_in"] and s["steps"] >= s["frames_out"]
    assert s["latency_ms"]["max"] is not None and s["latency_ms"]["max"] < 3000
    # The recording: microphone and model output at 24 kHz on the same timeline.
    mic, rate = sf.read(str(folder / "input.wav"))
    out_pcm, rate_out = sf.read(str(folder / "output.wav"))
    assert rate == rate_out == 24000 and mic.ndim == out_pcm.ndim == 1
    assert 2.0 < mic.size / rate <= s["duration_s"] + 0.5
    assert out_pcm.size >= s["frames_out"] * 1920 and np.abs(out_pcm).max() > 0
    assert (folder / "transcript.srt").exists()
    assert doc["model_type"] == "hibiki" and isinstance(doc["words"], list)


def test_live_latency_bounded_when_model_is_slow(make_model, device, tmp_path, capsys):
    """A model at ~3 steps/s against 12.5 frames/s of microphone: the lag policy gives
    frames up and counts them; latency stays flat instead of growing by ~0.25 s a step."""
    doc = _run_live(make_model("moshi-7b"), device, tmp_path, "--duration", "7",
                    "--debug-step-delay-ms", "300", "--max-lag-ms", "300")
    s = doc["session"]
    assert s["skipped_frames"] > 10 and s["skip_events"] > 0
    assert "LM is behind" in (s["below_real_time"] or ""), s["below_real_time"]  # the warning
    assert s["below_real_time_steps"] > 0
    series = np.array([ms for _, ms in s["latency_series"]])
    assert series.size >= 6
    # bound: max lag + queued frame + slow step + decode + speaker buffer + devices
    assert series.max() < 2500, series
    half = series.size // 2
    assert np.median(series[half:]) < np.median(series[:half]) + 400, series
    capsys.readouterr()


def test_devices_listing_and_device_errors(device, make_model, capsys):
    assert cli_main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "audio devices" in out and "Hz" in out and "--input-device" in out
    model = str(make_model("moshi-7b"))
    for argv, message, rc in [
        (["--input-device", "no-such-microphone"], "no input device matches 'no-such-microphone'", 1),
        (["--output-device", "9999"], "--output-device 9999 is not an output device", 1),
        (["--max-buffer-ms", "100"], "--max-buffer-ms must be at least", 2),  # usage: 2
    ]:
        assert cli_main(["live", "-w", model, *argv]) == rc
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_echo_guard_and_recorder_timeline(tmp_path):
    """No device needed: the Speaker marks the model audible, the MicSource turns the
    microphone down for frames captured meanwhile; recordings keep the input timeline."""
    import threading

    from moshi_mac.buffers import JitterBuffer, LagPolicy, SampleRing
    from moshi_mac.engine import InFrame, StepOut
    from moshi_mac.live import LiveStats, MicSource, Speaker, WavRecorder

    now = [50.0]
    clock = lambda: now[0]  # noqa: E731
    stats = LiveStats(clock)
    ring = SampleRing(24000, clock)
    mic = MicSource(ring, 48000, LagPolicy(max_lag_s=10), stats, lambda: 0.0,
                    echo_gain=0.1, clock=clock)
    rec = WavRecorder(tmp_path / "out.wav")
    speaker = Speaker(JitterBuffer(0, 48000, clock), 48000, stats, mic, 0.05, rec, clock)
    loud = np.full(1920, 0.5, np.float32)
    frame = InFrame("input", loud, offset=3840, t_capture=49.9)
    speaker(loud, StepOut(0, 3, None, frame), "")
    assert mic.loud_until > 50.0 and stats.frames_out == 1
    assert stats.latency_ms == pytest.approx(1000 * (0.1 + 0.05))
    ring.write(np.full(2 * 3840, 0.5, np.float32))  # two frames at 48 kHz
    stop = threading.Event()
    got = mic(stop)
    assert got.pcm.shape == (1920,) and stats.echo_guarded == 1
    assert np.abs(got.pcm[1000:]).max() < 0.06  # 0.5 turned down by 20 dB
    now[0] = 60.0  # long after the model went quiet
    ring.write(np.full(3840, 0.5, np.float32))
    got = mic(stop)
    assert got.pcm.max() > 0.4 and stats.echo_guarded == 1
    rec.write_at(1920, loud)  # overlaps what was written: the overlap is cut
    rec.close()
    pcm, rate = sf.read(str(tmp_path / "out.wav"))
    assert rate == 24000 and pcm.size == 3840 + 1920
    assert not pcm[:3840].any() and np.allclose(pcm[3840:], 0.5, atol=1e-4)
