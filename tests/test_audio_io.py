"""Audio files: conversion to 24 kHz mono with a report, one-line errors, atomic wav writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from moshi_mac import audio_io
from moshi_mac.audio_io import (SAMPLE_RATE, read_audio, write_stereo_wav_atomic,
                                write_wav_atomic)
from moshi_mac.errors import MoshiMacError


def _tone(rate: int, seconds: float, channels: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * freq * t)
    cols = [left, 0.5 * left][:channels]  # right = half the left: the mix is 0.75 * left
    return np.stack(cols, axis=1).astype(np.float32)


@pytest.mark.parametrize("ext, subtype", [("flac", "PCM_16"), ("mp3", None), ("ogg", None)])
def test_44k_stereo_to_24k_mono(tmp_path, ext, subtype):
    path = tmp_path / f"in.{ext}"
    sf.write(str(path), _tone(44100, 1.5, 2), 44100, subtype=subtype)
    pcm, report = read_audio(path)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert (report.sample_rate, report.channels, report.target_rate) == (44100, 2, SAMPLE_RATE)
    assert report.resampled and report.downmixed
    # mp3 encoders may add a little padding; wav/flac/ogg durations are exact.
    slack = 0.1 if ext == "mp3" else 0.001
    assert abs(report.duration - 1.5) <= slack
    assert abs(pcm.size - 1.5 * SAMPLE_RATE) <= slack * SAMPLE_RATE
    # The mix-down keeps the tone: 0.75 * 0.5 amplitude at 440 Hz.
    mid = pcm[pcm.size // 4: 3 * pcm.size // 4]
    assert 0.3 < np.abs(mid).max() < 0.45
    spectrum = np.abs(np.fft.rfft(mid))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / mid.size - 440) < 5
    assert "44100 Hz" in report.summary() and "mono" in report.summary()


def test_24k_mono_wav_is_unchanged(tmp_path):
    src = _tone(SAMPLE_RATE, 0.5, 1)[:, 0]
    path = tmp_path / "in.wav"
    sf.write(str(path), src, SAMPLE_RATE, subtype="FLOAT")
    pcm, report = read_audio(path)
    np.testing.assert_array_equal(pcm, src)
    assert not report.resampled and not report.downmixed and "->" not in report.summary()


def test_missing_file(tmp_path):
    with pytest.raises(MoshiMacError, match="does not exist"):
        read_audio(tmp_path / "nope.wav")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio" * 10)
    with pytest.raises(MoshiMacError, match="cannot read audio file") as e:
        read_audio(bad)
    assert "\n" not in str(e.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(MoshiMacError, match="contains no audio"):
        read_audio(path)


def _leftovers(folder) -> list[str]:
    return [p for p in os.listdir(folder) if p.endswith(".tmp")]


def test_write_wav_atomic(tmp_path):
    pcm = np.linspace(-1.5, 1.5, 4800, dtype=np.float32)  # out of range: clipped, not wrapped
    out = write_wav_atomic(tmp_path / "sub" / "out.wav", pcm)
    data, rate = sf.read(str(out), dtype="float32")
    assert rate == SAMPLE_RATE and data.shape == (4800,)
    assert data.min() == -1.0 and data.max() > 0.99 and np.all(np.diff(data) >= 0)
    assert _leftovers(out.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would, not mkstemp's 0600


def test_write_wav_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    write_wav_atomic(target, np.zeros(100, np.float32))
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf, "write", boom)
    from moshi_mac.errors import MoshiMacError

    with pytest.raises(MoshiMacError, match="cannot write .* [(]disk full[)]"):  # one line
        write_wav_atomic(target, np.ones(100, np.float32) * 0.5)
    assert target.read_bytes() == before and _leftovers(tmp_path) == []


def test_write_wav_float(tmp_path):
    pcm = np.array([0.0, 0.25, -1.25], np.float32)
    data, _ = sf.read(str(write_wav_atomic(tmp_path / "f.wav", pcm, subtype="FLOAT")),
                      dtype="float32")
    np.testing.assert_array_equal(data, pcm)


def test_stereo_writer(tmp_path):
    left = np.full(300, 0.5, np.float32)
    right = np.full(200, -0.25, np.float32)
    out = write_stereo_wav_atomic(tmp_path / "both.wav", left, right, sample_rate=16000)
    data, rate = sf.read(str(out), dtype="float32")
    assert rate == 16000 and data.shape == (300, 2)
    assert np.allclose(data[:, 0], 0.5, atol=1e-4)
    assert np.allclose(data[:200, 1], -0.25, atol=1e-4) and not data[200:, 1].any()
    assert _leftovers(tmp_path) == []


def test_mono_writer_rejects_stereo(tmp_path):
    with pytest.raises(ValueError):
        audio_io.write_wav_atomic(tmp_path / "x.wav", np.zeros((10, 2), np.float32))
