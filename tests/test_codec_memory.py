"""Bounded Mimi memory: handovers to fresh rustymimi instances keep the output and flatten RSS.

rustymimi 0.4.1 keeps every codec-transformer key and value (64 KB per frame and direction)
until its 4096-frame cache is full; `Mimi` hands each direction over to a fresh instance,
warmed on the frames before (see `codec.Handover`). The PyTorch comparison past the
context is tests/test_mimi_reference.py; the hour-long soak is benchmarks/soak.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from moshi_mac.codec import (CONTEXT_FRAMES, FRAME_SIZE, RUSTYMIMI_MAX_FRAMES, Handover, Mimi,
                             _Stream)
from tests.test_codec import _signal

# Float rounding (the fresh instance's rotary positions restart from 0) can tip a near-tie
# in the residual quantizer, which changes that codebook and every later one of the frame.
MIN_AGREEMENT = 0.999
MIN_SNR_DB = 40.0


class _Counter:
    """A fake rustymimi instance: its output is the number of frames it has been fed."""

    def __init__(self, name: int):
        self.name, self.fed = name, 0


def test_handover_schedule():
    loads: list[_Counter] = []

    def load():
        loads.append(_Counter(len(loads) + 1))
        return loads[-1]

    def step(tok, x):
        tok.fed += 1
        return (tok.name, tok.fed)

    shared = _Counter(0)
    stream = _Stream(step, load, Handover(every=10, warm=3), shared)
    other = _Stream(step, load, Handover(every=10, warm=3), shared)
    stream.on_handover = other.drop_if_unused
    outs = [stream(None) for _ in range(35)]
    # The first instance serves frames 0-9; each next one is loaded 3 frames before it
    # takes over, is fed those 3 frames, then serves 10.
    assert [o[0] for o in outs] == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 5
    assert outs[10] == (1, 4) and outs[20] == (2, 4)
    assert len(loads) == 3 and stream.handovers == 3 and stream.served == 5
    # The other direction, never used, let go of the shared first instance; it loads its
    # own (fresh, like the shared one's untouched state) when first used.
    assert other.tok is None and other(None) == (4, 1) and len(loads) == 4
    plain = _Stream(step, load, None, _Counter(0))
    assert [plain(None) for _ in range(25)][-1] == (0, 25) and len(loads) == 4


@pytest.mark.parametrize("every, warm", [(10, 0), (10, 11), (4000, 200)])
def test_handover_bounds(every, warm):
    with pytest.raises(ValueError, match="warm <= every"):
        Handover(every=every, warm=warm)


def test_default_handover_is_warmed_past_the_context():
    h = Handover()
    assert h.warm >= 2 * CONTEXT_FRAMES and h.every + h.warm <= RUSTYMIMI_MAX_FRAMES


# One handover at frame 260 to an instance started at frame 10 and warmed on 250 frames
# (the product's `warm`), two contexts: frames 260-329 come from the fresh instance.
SHORT = Handover(every=260, warm=Handover().warm)
N_FRAMES = 330


def _snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    err = float(((x - ref) ** 2).sum())
    return float("inf") if err == 0 else 10 * np.log10(float((ref ** 2).sum()) / err)


@pytest.mark.slow
def test_handover_matches_uninterrupted(shared_mimi):
    pcm = _signal(N_FRAMES)
    plain = Mimi(shared_mimi, 16, handover=None)
    handed = Mimi(shared_mimi, 16, handover=SHORT)
    codes, codes_h = plain.encode(pcm), handed.encode(pcm)
    ref, out = plain.decode(codes), handed.decode(codes)
    assert handed.handovers == 2 and plain.handovers == 0
    cut = SHORT.every
    np.testing.assert_array_equal(codes_h[:, :cut], codes[:, :cut])
    agree = float((codes_h[:, cut:] == codes[:, cut:]).mean())
    snr = _snr_db(ref[cut * FRAME_SIZE:], out[cut * FRAME_SIZE:])
    print(f"\nhandover vs uninterrupted, frames {cut}-{N_FRAMES - 1}: codes {100 * agree:.2f} %, "
          f"PCM SNR {snr:.1f} dB, max |diff| {np.abs(out - ref).max():.1e}")
    assert agree >= MIN_AGREEMENT and snr >= MIN_SNR_DB


def _rss_mb() -> float:
    psutil = pytest.importorskip("psutil")
    return psutil.Process().memory_info().rss / 1e6


def _rss_slope_kb_per_frame(mimi: Mimi, frames: int, sample_every: int) -> float:
    """Decode random codes; RSS sampled every `sample_every` frames (after the handover
    that falls on that frame, if any) -> least-squares slope in KB per frame."""
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, frames + 1):
        mimi.decode_step(rng.integers(0, 2048, mimi.num_codebooks))
        if i % sample_every == 0:
            xs.append(i)
            ys.append(_rss_mb())
    return 1000 * float(np.polyfit(xs, ys, 1)[0])


def test_memory_is_flat_with_handover(shared_mimi):
    """The short CI soak: RSS grows by ~64 KB a frame on one instance, not with handovers."""
    frames, every = 120, 20
    grows = _rss_slope_kb_per_frame(Mimi(shared_mimi, 8, handover=None), frames, every)
    flat = _rss_slope_kb_per_frame(Mimi(shared_mimi, 8, handover=Handover(every=every, warm=2)),
                                   frames, every)
    print(f"\nRSS slope: {grows:.1f} KB/frame on one instance, {flat:.1f} KB/frame with handovers")
    assert grows > 40, "rustymimi no longer grows: the handover may be unnecessary"
    assert abs(flat) < 0.2 * grows
