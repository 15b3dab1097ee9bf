"""Audio files: read any wav/mp3/flac/ogg as 24 kHz mono float32, write wavs atomically.

Owns `probe_audio` (a file's length and format from its header, no decoding),
`read_audio` (soundfile decode, channel mix-down, soxr high-quality resampling, NaN/Inf
and out-of-range samples cleaned (guards.py), and an `AudioReport` of what was done),
`write_wav` / `write_stereo_wav` (input on the left channel, output on the right) and
their atomic forms (temp file in the same folder, then `os.replace`, so a reader never
sees half a file).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .codec import SAMPLE_RATE  # noqa: F401  (Mimi's rate; its home is codec.py)
from .errors import UsageError
from .guards import SanitizeReport, sanitize_pcm
from .outputs import atomic_path, write_error

__all__ = ["AudioReport", "atomic_path", "probe_audio", "read_audio", "write_wav",
           "write_stereo_wav", "write_wav_atomic", "write_stereo_wav_atomic"]

_FORMATS = "WAV, FLAC, MP3 or OGG"


@dataclass(frozen=True)
class AudioReport:
    """What `read_audio` found in a file and what it did to it."""

    path: Path
    sample_rate: int  # of the file
    channels: int  # of the file
    duration: float  # seconds
    target_rate: int
    cleaned: SanitizeReport = field(default_factory=lambda: SanitizeReport(SAMPLE_RATE))

    @property
    def resampled(self) -> bool:
        return self.sample_rate != self.target_rate

    @property
    def downmixed(self) -> bool:
        return self.channels > 1

    def summary(self) -> str:
        done = [f"resampled to {self.target_rate} Hz"] if self.resampled else []
        done += [f"mixed {self.channels} channels to mono"] if self.downmixed else []
        return (f"{self.path.name}: {self.sample_rate} Hz, {self.channels} channel(s), "
                f"{self.duration:.2f} s" + (" -> " + ", ".join(done) if done else ""))


def _check_input(path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"input {path} is a folder, not an audio file; pass the files in it")
    if not path.exists():
        raise UsageError(f"audio file {path} does not exist; check the path")


@contextlib.contextmanager
def native_stderr_to(path: str | Path):
    """Send what C audio libraries write to stderr (ALSA's "underrun occurred", mpg123's
    "Illegal Audio-MPEG-Header" notes, ...) to `path` (a log, or os.devnull) meanwhile:
    stderr is for the one line of a fault, and on a terminal those lines scramble the
    screen."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield path
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _unreadable(path: Path, e: Exception) -> UsageError:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UsageError(f"cannot read audio file {path} ({reason}); convert it to {_FORMATS}, "
                      f"e.g. `ffmpeg -i {path} out.wav`")


def probe_audio(path: str | Path) -> float:
    """The duration in seconds of an audio file, from its header (nothing decoded)."""
    import soundfile as sf

    path = Path(path)
    _check_input(path)
    try:
        with native_stderr_to(os.devnull):  # the error below says what is wrong
            info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise _unreadable(path, e) from None
    if info.frames <= 0:
        raise UsageError(f"audio file {path} contains no audio; pass a non-empty recording")
    return info.frames / info.samplerate


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, AudioReport]:
    """Read an audio file as mono float32 at `sample_rate`, NaN/Inf samples set to 0 and
    clipped to [-1, 1]; return (pcm, report)."""
    import soundfile as sf

    path = Path(path)
    _check_input(path)
    try:
        with native_stderr_to(os.devnull):
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise _unreadable(path, e) from None
    if data.shape[0] == 0:
        raise UsageError(f"audio file {path} contains no audio; pass a non-empty recording")
    report = AudioReport(path=path, sample_rate=int(rate), channels=data.shape[1],
                         duration=data.shape[0] / rate, target_rate=sample_rate,
                         cleaned=SanitizeReport(int(rate)))
    return to_mono(data, int(rate), sample_rate, report.cleaned), report


def to_mono(audio: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE,
            report: SanitizeReport | None = None) -> np.ndarray:
    """Samples [n] or [n, channels] at `rate` (float, or integer PCM scaled to [-1, 1])
    -> mono float32 at `sample_rate`: NaN/Inf set to 0 and clipped (guards.py), channels
    averaged, soxr high-quality resampling (clipped again)."""
    import soxr

    audio = np.asarray(audio)
    if audio.ndim not in (1, 2) or audio.dtype.kind not in "fiu":
        raise UsageError(f"audio must be numbers shaped [samples] or [samples, channels], "
                         f"got {audio.dtype} {list(audio.shape)}")
    if audio.dtype.kind in "iu":
        half = 2.0 ** (8 * audio.dtype.itemsize - 1)  # int16: 32768
        audio = (audio.astype(np.float64) - (half if audio.dtype.kind == "u" else 0.0)) / half
    if rate <= 0:
        raise UsageError(f"the sample rate must be a positive number of Hz, got {rate}")
    data = audio.reshape(audio.shape[0], -1) if audio.ndim == 2 else audio[:, None]
    # Cleaned before mixing and resampling, which would spread a NaN over its neighbours.
    data = sanitize_pcm(data, report)
    pcm = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate and pcm.size:
        pcm = np.clip(soxr.resample(pcm, rate, sample_rate, quality="HQ"), -1.0, 1.0)
    return np.ascontiguousarray(pcm, dtype=np.float32)


def _write(path: str | Path, frames: np.ndarray, sample_rate: int, subtype: str) -> Path:
    import soundfile as sf

    path = Path(path)
    if subtype.startswith("PCM"):
        frames = np.clip(frames, -1.0, 1.0)  # libsndfile wraps out-of-range floats
    sf.write(str(path), frames, sample_rate, subtype=subtype, format="WAV")
    return path


def _atomic(path: str | Path, frames: np.ndarray, sample_rate: int, subtype: str) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            _write(tmp, frames, sample_rate, subtype)
    except (OSError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError
        raise write_error(path, e) from None
    return path


def _mono(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm, dtype=np.float32)
    if pcm.ndim != 1:
        raise ValueError(f"write_wav takes mono audio [samples], got shape {pcm.shape}")
    return pcm


def _stereo(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    left = np.asarray(left, dtype=np.float32).reshape(-1)
    right = np.asarray(right, dtype=np.float32).reshape(-1)
    n = max(left.size, right.size)
    frames = np.zeros((n, 2), np.float32)
    frames[: left.size, 0] = left
    frames[: right.size, 1] = right
    return frames


def write_wav(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE,
              subtype: str = "PCM_16") -> Path:
    """Write mono audio to a wav file (16-bit by default, clipped to [-1, 1])."""
    return _write(path, _mono(pcm), sample_rate, subtype)


def write_stereo_wav(path: str | Path, left: np.ndarray, right: np.ndarray,
                     sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    """A stereo wav: `left` (e.g. the input) and `right` (the model's output); the
    shorter one is padded with silence."""
    return _write(path, _stereo(left, right), sample_rate, subtype)


def write_wav_atomic(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE,
                     subtype: str = "PCM_16") -> Path:
    """`write_wav`, atomically."""
    return _atomic(path, _mono(pcm), sample_rate, subtype)


def write_stereo_wav_atomic(path: str | Path, left: np.ndarray, right: np.ndarray,
                            sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    """`write_stereo_wav`, atomically."""
    return _atomic(path, _stereo(left, right), sample_rate, subtype)
