"""Mimi: random checkpoint layout, codebook-count checks, streaming round-trip via rustymimi."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from moshi_mac.codec import (CARDINALITY, FRAME_RATE, FRAME_SIZE, SAMPLE_RATE, Mimi,
                             check_mimi, mimi_codebook_count)
from moshi_mac.errors import ModelNotFoundError, MoshiMacError, WeightsMismatchError
from moshi_mac.mimi_random import mimi_key_shapes, write_random_mimi

N_FRAMES = 10


@pytest.fixture(scope="module")
def mimi32(tmp_path_factory):
    return write_random_mimi(tmp_path_factory.mktemp("mimi") / "mimi32.safetensors", seed=0)


@pytest.fixture(scope="module")
def mimi8(tmp_path_factory):
    return write_random_mimi(tmp_path_factory.mktemp("mimi") / "mimi8.safetensors", seed=1,
                             num_codebooks=8)


def _signal(n_frames: int = N_FRAMES) -> np.ndarray:
    """A voice-like test signal: a vibrato harmonic tone with a syllable envelope, plus noise."""
    t = np.arange(n_frames * FRAME_SIZE) / SAMPLE_RATE
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.2 * envelope * tone + 0.01 * noise).astype(np.float32)


def test_constants():
    assert (SAMPLE_RATE, FRAME_SIZE, FRAME_RATE) == (24000, 1920, 12.5)


def test_key_layout_counts():
    shapes = mimi_key_shapes()
    assert len(shapes) == 318
    assert sum(k.endswith("embedding_sum") for k in shapes) == 32
    assert sum(k.endswith("embedding_sum") for k in mimi_key_shapes(8)) == 8
    assert shapes["encoder_transformer.transformer.layers.7.self_attn.in_proj_weight"] == (1536, 512)


def test_codebooks_are_random_and_nonzero(mimi8):
    from safetensors import safe_open

    with safe_open(str(mimi8), "np") as f:
        emb = f.get_tensor("quantizer.rvq_rest.vq.layers.6._codebook.embedding_sum")
        usage = f.get_tensor("quantizer.rvq_rest.vq.layers.6._codebook.cluster_usage")
        init = f.get_tensor("quantizer.rvq_first.vq.layers.0._codebook._initialized")
    assert emb.shape == (CARDINALITY, 256) and np.abs(emb).min(axis=1).max() > 0
    assert (usage > 0).all() and init.tolist() == [1.0]


def test_codebook_count(mimi32, mimi8):
    assert mimi_codebook_count(mimi32) == 32
    assert mimi_codebook_count(mimi8) == 8
    assert check_mimi(mimi8, 8) == 8
    assert check_mimi(mimi32, 16) == 32


def test_too_few_codebooks_message(mimi8):
    with pytest.raises(WeightsMismatchError) as e:
        check_mimi(mimi8, 16)
    msg = str(e.value)
    assert "provides 8 codebooks, the config needs 16" in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        check_mimi(tmp_path / "nope.safetensors", 8)


def test_not_safetensors(tmp_path):
    bad = tmp_path / "mimi.safetensors"
    bad.write_bytes(b"\x00\x00not a safetensors file at all")
    with pytest.raises(MoshiMacError, match="is not a safetensors file"):
        mimi_codebook_count(bad)
    bad.write_bytes(b"abc")
    with pytest.raises(MoshiMacError, match="is not a safetensors file"):
        mimi_codebook_count(bad)


def test_truncated(mimi8, tmp_path):
    cut = tmp_path / "cut.safetensors"
    with open(mimi8, "rb") as f:
        cut.write_bytes(f.read(4 * 1024 * 1024))
    with pytest.raises(MoshiMacError, match="is truncated") as e:
        mimi_codebook_count(cut)
    assert "\n" not in str(e.value)


def _write_header_only(path, tensors: dict[str, list[int]]) -> None:
    """A valid safetensors file of zero-filled float32 tensors, written without numpy."""
    import json

    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


def test_lm_weights_passed_as_mimi(tmp_path):
    lm = tmp_path / "model.safetensors"
    _write_header_only(lm, {"text_emb.weight": [8, 4], "out_norm.alpha": [1, 1, 4]})
    with pytest.raises(WeightsMismatchError, match="is LM weights"):
        check_mimi(lm, 8)
    other = tmp_path / "other.safetensors"
    _write_header_only(other, {"foo": [2]})
    with pytest.raises(WeightsMismatchError, match="not a Mimi checkpoint"):
        check_mimi(other, 8)


def test_round_trip(mimi32):
    mimi = Mimi(mimi32, num_codebooks=16)
    pcm = _signal()
    codes = [mimi.encode_step(frame) for frame in pcm.reshape(N_FRAMES, FRAME_SIZE)]
    for c in codes:
        assert c.shape == (16,) and c.dtype == np.int32
        assert c.min() >= 0 and c.max() < CARDINALITY
    assert len({tuple(c) for c in codes}) > 1  # the random codec is not degenerate
    out = [mimi.decode_step(c) for c in codes]
    for frame in out:
        assert frame.shape == (FRAME_SIZE,) and frame.dtype == np.float32
    audio = np.concatenate(out)
    assert np.isfinite(audio).all() and 0 < np.abs(audio).max() < 10
    # Whole-signal helpers are the same streaming steps; reset gives a fresh stream.
    mimi.reset()
    np.testing.assert_array_equal(mimi.encode(pcm), np.stack(codes, axis=1))


def test_instances_are_independent(mimi32):
    pcm = _signal(3).reshape(3, FRAME_SIZE)
    a, b = Mimi(mimi32, 8), Mimi(mimi32, 8)
    interleaved = []
    for frame in pcm:
        interleaved.append(a.encode_step(frame))
        b.encode_step(np.zeros(FRAME_SIZE, np.float32))
    alone = Mimi(mimi32, 8).encode(pcm.reshape(-1))
    np.testing.assert_array_equal(np.stack(interleaved, axis=1), alone)


def test_step_argument_checks(mimi8):
    mimi = Mimi(mimi8, 8)
    with pytest.raises(ValueError, match="1920 samples"):
        mimi.encode_step(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="codes must be in"):
        mimi.decode_step(np.full(8, CARDINALITY))
    with pytest.raises(ValueError, match="takes 8 codes"):
        mimi.decode_step(np.zeros(16, np.int64))


def test_mimi_refuses_too_few_codebooks(mimi8):
    with pytest.raises(WeightsMismatchError, match="provides 8 codebooks"):
        Mimi(mimi8, 16)


@pytest.mark.reference
def test_layout_matches_pytorch_reference(mimi32):
    """Same names and shapes as the official file: PyTorch's state_dict after the attention
    load hook's renaming, a strict load, and the same codes as rustymimi."""
    torch = pytest.importorskip("torch")
    loaders = pytest.importorskip("moshi.models.loaders")

    ref = {k: tuple(v.shape) for k, v in loaders.get_mimi(None).state_dict().items()}
    ours = {k.replace("self_attn.in_proj_weight", "self_attn.in_projs.0.weight")
             .replace("self_attn.out_proj.weight", "self_attn.out_projs.0.weight"): v
            for k, v in mimi_key_shapes().items()}
    assert ours == ref

    model = loaders.get_mimi(mimi32, num_codebooks=16)  # load_state_dict is strict
    pcm = _signal()
    with torch.no_grad():
        ref_codes = model.encode(torch.from_numpy(pcm)[None, None])[0].numpy()
    np.testing.assert_array_equal(Mimi(mimi32, 16).encode(pcm), ref_codes)
