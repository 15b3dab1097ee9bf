"""Real-time audio buffers for live mode: lock-free sample rings, the speaker's jitter
buffer, and the bounded-lag policy that keeps latency from growing.

Audio callbacks only ever call `SampleRing.write` (microphone) and
`JitterBuffer.read_into` (speaker): copies between preallocated numpy arrays and integer
counter updates, no locks, no logging, no queues. Each ring has one producer and one
consumer, and each side only advances its own counter after copying, so (under CPython's
GIL) neither ever sees a half-written block.

`FrameFifo` is the consumer side of the microphone path: it cuts 24 kHz samples into
model frames, tracks when each was captured, and asks the `LagPolicy` how many late
frames to skip (or merge into one) before the next model step. Everything that reads
time takes a `clock` so tests can drive it with a simulated one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Clock = Callable[[], float]
LAG_MODES = ("skip", "merge")


class SampleRing:
    """Single-producer single-consumer ring of float32 samples; never blocks.

    A write that does not fit keeps what fits and counts the rest in `dropped`.
    `last_write_time` is the producer's clock at its last write (the capture time of the
    newest sample, for the microphone)."""

    def __init__(self, capacity: int, clock: Clock = time.monotonic):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.clock = clock
        self._buf = np.zeros(capacity, np.float32)
        self.written = 0  # advanced by the producer only
        self.consumed = 0  # advanced by the consumer only
        self.dropped = 0  # producer side: samples lost to a full ring
        self.last_write_time: float | None = None

    def available(self) -> int:
        return self.written - self.consumed

    def write(self, samples: np.ndarray) -> int:
        """Producer: copy `samples` in (any 1-D view); return how many fitted."""
        n = samples.shape[0]
        written = self.written
        free = self.capacity - (written - self.consumed)
        if n > free:
            self.dropped += n - free
            n = free
        pos = written % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos:pos + first] = samples[:first]
        self._buf[:n - first] = samples[first:n]
        self.written = written + n
        self.last_write_time = self.clock()
        return n

    def read_into(self, out: np.ndarray) -> int:
        """Consumer: copy up to len(out) samples into `out`; return how many."""
        consumed = self.consumed
        n = min(out.shape[0], self.written - consumed)
        pos = consumed % self.capacity
        first = min(n, self.capacity - pos)
        out[:first] = self._buf[pos:pos + first]
        out[first:n] = self._buf[:n - first]
        self.consumed = consumed + n
        return n

    def read(self, n: int | None = None) -> np.ndarray:
        """Consumer: up to `n` (default: all available) samples as a new array."""
        avail = self.available()
        out = np.empty(avail if n is None else min(n, avail), np.float32)
        self.read_into(out)
        return out

    def skip(self, n: int) -> int:
        """Consumer: drop up to `n` of the oldest samples; return how many."""
        n = max(0, min(n, self.available()))
        self.consumed += n
        return n


class JitterBuffer:
    """The queue in front of the speaker.

    Playback starts once `target` samples are queued and starts again the same way after
    an underrun (the speaker wanted more than there was: counted in `underruns`). When
    more than `max_fill` samples are queued, the oldest are dropped down to `target`
    (counted in `dropped`), so the output latency it adds never exceeds `max_fill`."""

    def __init__(self, target: int, max_fill: int, clock: Clock = time.monotonic):
        if not 0 <= target <= max_fill:
            raise ValueError(f"need 0 <= target <= max_fill, got {target} and {max_fill}")
        self.target = target
        self.max_fill = max_fill
        self.ring = SampleRing(2 * max_fill + 48000, clock)
        self.playing = False
        self.underruns = 0
        self.dropped = 0
        self.played = 0

    def write(self, samples: np.ndarray) -> int:
        """Producer (the decode thread)."""
        return self.ring.write(samples)

    def fill(self) -> int:
        return self.ring.available()

    def read_into(self, out: np.ndarray) -> None:
        """Consumer (the speaker callback): fill `out` completely, with silence if needed."""
        avail = self.ring.available()
        if avail > self.max_fill:
            self.dropped += self.ring.skip(avail - self.target)
            avail = self.target
        if not self.playing:
            if avail < max(self.target, 1):
                out[:] = 0.0
                return
            self.playing = True
        n = self.ring.read_into(out)
        self.played += n
        if n < out.shape[0]:
            out[n:] = 0.0
            self.underruns += 1
            self.playing = False


@dataclass
class LagPolicy:
    """How far behind real time the model may fall before input frames are given up.

    Before each step the caller measures the lag (how long ago the next frame was
    captured). Past `max_lag_s`, enough frames are skipped (or merged into the next one,
    in mode "merge") to bring the lag back to `target_lag_s` (default: half the maximum).
    """

    max_lag_s: float = 0.4
    target_lag_s: float | None = None
    frame_s: float = 0.08
    mode: str = "skip"
    max_merge: int = 4  # "merge" squeezes at most this many frames into one

    def __post_init__(self):
        if self.mode not in LAG_MODES:
            raise ValueError(f"lag mode must be one of {LAG_MODES}, got {self.mode!r}")
        if self.max_lag_s < 0:
            raise ValueError(f"max lag must be >= 0, got {self.max_lag_s}")
        if self.target_lag_s is None:
            self.target_lag_s = self.max_lag_s / 2

    def frames_to_drop(self, lag_s: float) -> int:
        if lag_s <= self.max_lag_s:
            return 0
        return math.ceil((lag_s - self.target_lag_s) / self.frame_s - 1e-9)


@dataclass
class Frame:
    pcm: np.ndarray
    t_capture: float  # clock time at which the frame's last sample was captured
    offset: int  # index of its first sample in the input stream
    skipped: int = 0  # frames given up just before this one (skipped or merged in)


@dataclass
class FrameFifo:
    """Consumer side of the live input: samples in, fixed-size frames out, late frames
    skipped or merged by `policy` (see `pop`)."""

    frame_size: int
    sample_rate: int
    policy: LagPolicy
    clock: Clock = time.monotonic
    skipped: int = 0  # frames skipped, or merged into another (each counts once)
    skip_events: int = 0
    max_lag_s: float = 0.0  # the largest lag seen before the policy acted
    _buf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _end_time: float = 0.0  # capture time of the newest sample
    _offset: int = 0  # stream index of _buf[0]

    def push(self, samples: np.ndarray, end_time: float) -> None:
        """Append samples; `end_time` is the capture time of the last one."""
        if samples.size:
            self._buf = np.concatenate([self._buf, samples.astype(np.float32, copy=False)])
        self._end_time = end_time

    def frames(self) -> int:
        return self._buf.size // self.frame_size

    def lag(self) -> float:
        """Seconds since the oldest queued frame was complete (0 when none is)."""
        if self._buf.size < self.frame_size:
            return 0.0
        newer = self._buf.size - self.frame_size
        return max(0.0, self.clock() - self._end_time + newer / self.sample_rate)

    def pop(self, extra_lag_s: float = 0.0) -> Frame | None:
        """The next frame, after the policy has dealt with the lag (plus `extra_lag_s`:
        frames already queued downstream); None while no full frame is queued. The newest
        full frame is never dropped."""
        F = self.frame_size
        if self._buf.size < F:
            return None
        lag = self.lag() + extra_lag_s
        self.max_lag_s = max(self.max_lag_s, lag)
        drop = min(self.policy.frames_to_drop(lag), self.frames() - 1)
        if drop > 0:
            self.skipped += drop
            self.skip_events += 1
        merge = min(drop, self.policy.max_merge - 1) if self.policy.mode == "merge" else 0
        start = (drop - merge) * F
        take = (merge + 1) * F
        pcm = self._buf[start:start + take]
        if merge:
            pcm = squeeze(pcm, F)
        frame = Frame(pcm=np.array(pcm, np.float32), offset=self._offset + start + take - F,
                      t_capture=self._end_time - (self._buf.size - start - take) / self.sample_rate,
                      skipped=drop)
        self._buf = self._buf[start + take:]
        self._offset += start + take
        return frame


def squeeze(pcm: np.ndarray, n: int) -> np.ndarray:
    """Time-compress `pcm` to `n` samples (band-limited resampling: faster, higher)."""
    import soxr

    out = soxr.resample(pcm, pcm.size, n, quality="HQ")
    if out.size < n:
        out = np.pad(out, (0, n - out.size))
    return out[:n].astype(np.float32)
