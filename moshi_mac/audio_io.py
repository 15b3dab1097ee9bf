"""Audio files: read any wav/mp3/flac/ogg as 24 kHz mono float32, write wavs atomically.

Owns `read_audio` (soundfile decode, channel mix-down, soxr high-quality resampling, and an
`AudioReport` of what was converted), `write_wav_atomic` (temp file in the same folder, then
`os.replace`, so a reader never sees half a file) and `write_stereo_wav_atomic` (input on
the left channel, output on the right, for listening to both at once).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import MoshiMacError

SAMPLE_RATE = 24000  # Mimi's rate
_FORMATS = "WAV, FLAC, MP3 or OGG"


@dataclass(frozen=True)
class AudioReport:
    """What `read_audio` found in a file and what it did to it."""

    path: Path
    sample_rate: int  # of the file
    channels: int  # of the file
    duration: float  # seconds
    target_rate: int

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


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, AudioReport]:
    """Read an audio file as mono float32 at `sample_rate`; return (pcm, report)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise MoshiMacError(f"audio file {path} does not exist; check the path")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MoshiMacError(f"cannot read audio file {path} ({reason}); convert it to {_FORMATS}, "
                            f"e.g. `ffmpeg -i {path} out.wav`") from None
    if data.shape[0] == 0:
        raise MoshiMacError(f"audio file {path} contains no audio; pass a non-empty recording")
    report = AudioReport(path=path, sample_rate=int(rate), channels=data.shape[1],
                         duration=data.shape[0] / rate, target_rate=sample_rate)
    return to_mono(data, int(rate), sample_rate), report


def to_mono(audio: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples [n] or [n, channels] at `rate` (float, or integer PCM scaled to [-1, 1])
    -> mono float32 at `sample_rate`: channels averaged, soxr high-quality resampling."""
    import soxr

    audio = np.asarray(audio)
    if audio.ndim not in (1, 2) or audio.dtype.kind not in "fiu":
        raise MoshiMacError(f"audio must be numbers shaped [samples] or [samples, channels], "
                            f"got {audio.dtype} {list(audio.shape)}")
    if audio.dtype.kind in "iu":
        half = 2.0 ** (8 * audio.dtype.itemsize - 1)  # int16: 32768
        audio = (audio.astype(np.float64) - (half if audio.dtype.kind == "u" else 0.0)) / half
    if rate <= 0:
        raise MoshiMacError(f"the sample rate must be a positive number of Hz, got {rate}")
    pcm = audio.astype(np.float32, copy=False)
    if pcm.ndim == 2:
        pcm = pcm.mean(axis=1) if pcm.shape[1] > 1 else pcm[:, 0]
    if rate != sample_rate and pcm.size:
        pcm = soxr.resample(pcm, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(pcm, dtype=np.float32)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success move it onto `path`, else delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # Created with the process umask applied, as a plain open() would (mkstemp makes 0600).
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write(path: str | Path, frames: np.ndarray, sample_rate: int, subtype: str) -> Path:
    import soundfile as sf

    path = Path(path)
    if subtype.startswith("PCM"):
        frames = np.clip(frames, -1.0, 1.0)  # libsndfile wraps out-of-range floats
    try:
        with atomic_path(path) as tmp:
            sf.write(str(tmp), frames, sample_rate, subtype=subtype, format="WAV")
    except OSError as e:
        raise MoshiMacError(f"cannot write {path} ({e.strerror or e}); "
                            f"choose a writable output path") from None
    return path


def write_wav_atomic(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE,
                     subtype: str = "PCM_16") -> Path:
    """Write mono audio to a wav file atomically (16-bit by default, clipped to [-1, 1])."""
    pcm = np.asarray(pcm, dtype=np.float32)
    if pcm.ndim != 1:
        raise ValueError(f"write_wav_atomic takes mono audio [samples], got shape {pcm.shape}")
    return _write(path, pcm, sample_rate, subtype)


def write_stereo_wav_atomic(path: str | Path, left: np.ndarray, right: np.ndarray,
                            sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    """Write a stereo wav atomically: `left` (e.g. the input) and `right` (the model's
    output); the shorter one is padded with silence."""
    left = np.asarray(left, dtype=np.float32).reshape(-1)
    right = np.asarray(right, dtype=np.float32).reshape(-1)
    n = max(left.size, right.size)
    frames = np.zeros((n, 2), np.float32)
    frames[: left.size, 0] = left
    frames[: right.size, 1] = right
    return _write(path, frames, sample_rate, subtype)
