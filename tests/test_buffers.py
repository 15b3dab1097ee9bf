"""Live-mode buffers on simulated time: rings, the jitter buffer, the lag policy."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from moshi_mac.buffers import FrameFifo, JitterBuffer, LagPolicy, SampleRing, squeeze

RATE = 24000
FRAME = 1920


class SimClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- SampleRing ------------------------------------------------------------------------

def test_ring_wraps_around_and_keeps_order():
    ring = SampleRing(10)
    ramp = np.arange(100, dtype=np.float32)
    got = []
    pos = 0
    for n in (3, 7, 4, 9, 6, 10, 1):
        assert ring.write(ramp[pos:pos + n]) == n
        pos += n
        got.append(ring.read())
    assert np.array_equal(np.concatenate(got), ramp[:pos])
    assert ring.available() == 0 and ring.dropped == 0


def test_ring_overflow_drops_and_counts():
    clock = SimClock()
    ring = SampleRing(8, clock)
    assert ring.write(np.ones(5, np.float32)) == 5
    clock.t = 101.0
    assert ring.write(np.full(6, 2, np.float32)) == 3
    assert ring.dropped == 3 and ring.available() == 8 and ring.last_write_time == 101.0
    out = np.zeros(10, np.float32)
    assert ring.read_into(out) == 8
    assert out[:8].tolist() == [1] * 5 + [2] * 3
    assert ring.skip(5) == 0


def test_ring_accepts_strided_views():
    ring = SampleRing(16)
    stereo = np.arange(12, dtype=np.float32).reshape(6, 2)
    ring.write(stereo[:, 0])  # what the microphone callback passes
    out = np.zeros((6, 2), np.float32)
    ring.read_into(out[:, 1])
    assert out[:, 1].tolist() == [0, 2, 4, 6, 8, 10]


def test_ring_single_producer_single_consumer_threads():
    ring = SampleRing(1031)
    total = 200_000
    received = []

    def produce():
        rng = np.random.default_rng(0)
        pos = 0
        while pos < total:
            n = int(rng.integers(1, 300))
            block = np.arange(pos, min(pos + n, total), dtype=np.float32)
            while ring.capacity - ring.available() < block.size:
                time.sleep(0)  # wait for room (the test must not drop)
            ring.write(block)
            pos += block.size

    t = threading.Thread(target=produce)
    t.start()
    count = 0
    while count < total:
        chunk = ring.read(97)
        if not chunk.size:
            time.sleep(0)
        received.append(chunk)
        count += chunk.size
    t.join()
    assert np.array_equal(np.concatenate(received), np.arange(total, dtype=np.float32))


# -- JitterBuffer ----------------------------------------------------------------------

def test_jitter_buffer_prebuffers_underruns_and_rebuffers():
    jb = JitterBuffer(target=300, max_fill=1000)
    out = np.ones(128, np.float32)
    jb.write(np.full(200, 0.5, np.float32))
    jb.read_into(out)
    assert not out.any() and not jb.playing  # below target: silence, nothing consumed
    jb.write(np.full(200, 0.5, np.float32))
    jb.read_into(out)
    assert jb.playing and np.all(out == 0.5) and jb.fill() == 272
    for _ in range(2):
        jb.read_into(out)
    jb.read_into(out)  # 16 samples left: underrun, padded with silence
    assert jb.underruns == 1 and not jb.playing
    assert np.all(out[:16] == 0.5) and not out[16:].any()
    assert jb.played == 400
    jb.write(np.full(100, 0.5, np.float32))
    jb.read_into(out)
    assert not out.any()  # re-buffering until target again


def test_jitter_buffer_caps_latency():
    jb = JitterBuffer(target=300, max_fill=1000)
    jb.write(np.arange(1500, dtype=np.float32))
    out = np.zeros(100, np.float32)
    jb.read_into(out)
    assert jb.dropped == 1200  # down to target, the newest audio kept
    assert out[0] == 1200 and jb.fill() == 200


# -- LagPolicy -------------------------------------------------------------------------

def test_lag_policy_thresholds():
    p = LagPolicy(max_lag_s=0.4)
    assert p.target_lag_s == pytest.approx(0.2)
    assert p.frames_to_drop(0.0) == 0 and p.frames_to_drop(0.4) == 0
    assert p.frames_to_drop(0.41) == 3  # (0.41 - 0.2) / 0.08 -> 3 frames
    assert p.frames_to_drop(1.0) == 10
    with pytest.raises(ValueError):
        LagPolicy(mode="drop-everything")


def _simulate(step_s: float, seconds: float = 60.0, mode: str = "skip", max_lag: float = 0.4,
              block_s: float = 0.01):
    """A microphone writing 10 ms blocks in real time (simulated) into a ring; a model
    taking `step_s` per frame pops frames through the FrameFifo. Checks no sample is
    lost unaccounted; returns (fifo, lag at each step, frames processed, frames produced)."""
    clock = SimClock(0.0)
    ring = SampleRing(RATE * 4, clock)
    fifo = FrameFifo(FRAME, RATE, LagPolicy(max_lag_s=max_lag, mode=mode), clock)
    block = int(RATE * block_s)
    produced = 0
    next_block = block_s  # when the next block is complete
    lags, processed = [], 0

    def advance(dt):
        nonlocal produced, next_block
        end = clock.t + dt
        while next_block <= end + 1e-9:
            clock.t = next_block
            ring.write(np.zeros(block, np.float32))
            produced += block
            next_block += block_s
        clock.t = end

    while clock.t < seconds:
        end_time = ring.last_write_time
        data = ring.read()
        if data.size:
            fifo.push(data, end_time)
        frame = fifo.pop()
        if frame is None:
            advance(0.005)
            continue
        assert frame.pcm.shape == (FRAME,)
        lags.append(clock.t - frame.t_capture)
        processed += 1
        advance(step_s)
    # Every sample was processed, given up, or is still queued in the FIFO or the ring.
    assert (processed + fifo.skipped) * FRAME + fifo._buf.size + ring.available() == produced
    return fifo, np.array(lags), processed, produced // FRAME


def test_fast_model_never_skips():
    fifo, lags, processed, produced = _simulate(step_s=0.05)
    assert fifo.skipped == 0
    assert lags.max() < 0.08 + 0.02
    assert processed >= produced - 1


@pytest.mark.parametrize("mode", ["skip", "merge"])
def test_slow_model_latency_stays_bounded(mode):
    fifo, lags, processed, produced = _simulate(step_s=0.2, mode=mode)
    # A model at 5 steps/s cannot keep up with 12.5 frames/s: the policy gives frames up.
    assert fifo.skipped > 0 and fifo.skip_events > 0
    # The lag at each step never passes max lag + one step, and does not grow over time.
    assert lags.max() <= 0.4 + 0.2 + 0.01
    first, last = lags[: len(lags) // 4], lags[-len(lags) // 4:]
    assert last.mean() <= first.mean() + 0.05
    assert fifo.max_lag_s <= 0.4 + 0.2 + 0.1


def test_without_policy_lag_would_grow():
    """The control: with an unbounded max lag the same slow model falls ever further behind."""
    fifo, lags, _, _ = _simulate(step_s=0.2, max_lag=1e9, seconds=20)
    assert fifo.skipped == 0 and lags[-1] > 10


def test_merge_squeezes_frames():
    x = np.sin(np.arange(4 * FRAME) / 20).astype(np.float32)
    y = squeeze(x, FRAME)
    assert y.shape == (FRAME,) and y.dtype == np.float32 and np.abs(y).max() > 0.5
    clock = SimClock(10.0)
    fifo = FrameFifo(FRAME, RATE, LagPolicy(max_lag_s=0.1, mode="merge", max_merge=3), clock)
    fifo.push(np.ones(6 * FRAME, np.float32), end_time=10.0)
    frame = fifo.pop()
    # lag 0.4 s > 0.1: give up ceil((0.4 - 0.05) / 0.08) = 5 frames: 3 skipped, 2 merged in
    assert frame.skipped == 5 and fifo.skipped == 5 and fifo.frames() == 0
    assert frame.offset == 5 * FRAME and frame.t_capture == pytest.approx(10.0)
    assert frame.pcm.shape == (FRAME,)
